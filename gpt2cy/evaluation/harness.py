"""The lm-evaluation-harness model "gpt2cy": loglikelihood, loglikelihood_rolling and generate_until over
gpt2cy's scorer and batched generation.

It answers as lm_eval's own `hf` model answers for GPT2LMHeadModel on the same weights: the same
tokenization ("<|endoftext|>" in a text is the special token; an empty context is conditioned on it), the
same left truncation to max_length, the same rolling windows for perplexity, greedy generation stopping at
any `until` string or <|endoftext|>, the text cut at the first stop string.

model_args: pretrained (a name such as 124M or a model directory; default 124M), dtype (f32, bf16, q8_0),
threads, max_length (the context; default the model's), batch_size (sequences per pass over the weights,
default 4: each gets a KV-cache slot), max_gen_toks (default 256), offline.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..generation.batch import complete_batch
from ..generation.scoring import Window, score_windows
from ..loading import load

DEFAULT_BATCH = 4

# lm_eval fills its registry lazily only while it is empty: load its own models' names first, so that "hf"
# and the others stay reachable after "gpt2cy" is registered
import lm_eval.models  # noqa: E402,F401


def _int_or_none(v, name: str) -> Optional[int]:
    if v is None or v == "":
        return None
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"gpt2cy: {name} must be an integer, got {v!r}") from None
    if n < 1:
        raise ValueError(f"gpt2cy: {name} must be positive, got {v!r}")
    return n


def rolling_windows(n_tokens: int, max_length: int) -> List[Window]:
    """lm_eval's rolling windows (get_rolling_token_windows + make_disjoint_window, context_len 1) over
    ids = [prefix] + tokens: the first window predicts tokens[:max_length] from the prefix on; each next
    one predicts the next max_length tokens (fewer at the end) with a full window of context before."""
    out: List[Window] = []
    if n_tokens == 0:
        return out
    first_len = min(max_length, n_tokens)
    out.append(Window(0, first_len, 1, first_len + 1))
    done = first_len
    while done < n_tokens:
        w = min(n_tokens - done, max_length)
        end = done + w                          # in token indices; +1 in ids (the prefix comes first)
        out.append(Window(end - max_length, end, end - w + 1, end + 1))
        done = end
    return out


@register_model("gpt2cy")
class GPT2CyLM(TemplateLM):
    """lm_eval's LM interface over a gpt2cy Model (see the module docstring for model_args)."""

    def __init__(self, pretrained: str = "124M", dtype: str = "f32", threads=None, max_length=None,
                 batch_size=None, max_batch_size=None, max_gen_toks=256, offline=None, device=None,
                 model=None, **kwargs) -> None:
        super().__init__()
        if device not in (None, "", "cpu"):
            raise ValueError(f"gpt2cy runs on the CPU; device={device!r} is not available")
        # lm_eval passes batch_size as given on its command line ("auto", "auto:4", "8")
        bs = None if batch_size in (None, "", "auto") or str(batch_size).startswith("auto") else batch_size
        n_slots = _int_or_none(bs, "batch_size") or DEFAULT_BATCH
        if model is None:
            n_ctx = _int_or_none(max_length, "max_length")
            model = load(str(pretrained), threads=_int_or_none(threads, "threads"), n_ctx=n_ctx,
                         n_slots=n_slots, dtype=str(dtype), offline=offline,
                         max_rows=max(1024, n_ctx or 1024))
        self.model = model
        self.tokenizer_ = model.tokenizer
        self._max_gen_toks = _int_or_none(max_gen_toks, "max_gen_toks") or 256
        self.pretrained = str(pretrained)

    # -------------------------------------------------------------------------------- facts
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer_.eot_token)

    @property
    def max_length(self) -> int:
        return int(self.model.n_ctx)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **kwargs) -> List[int]:
        ids = self.tokenizer_.encode(string, allowed_special="all")
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids) -> str:
        return self.tokenizer_.decode([i for i in ids if i != self.eot_token_id])

    def get_model_info(self) -> dict:
        return {"model": "gpt2cy", "pretrained": self.pretrained, "dtype": self.model.dtype,
                "max_length": self.max_length}

    # -------------------------------------------------------------------------------- scoring
    def _score(self, jobs: Sequence[Tuple[np.ndarray, Window]]) -> List[Tuple[float, bool]]:
        """(sum of log-probabilities, every target greedy) per (ids, window); longest first, so that similar
        lengths share a pass, answered in the order given."""
        order = sorted(range(len(jobs)), key=lambda i: -(jobs[i][1].end - jobs[i][1].start))
        out: List[Tuple[float, bool]] = [None] * len(jobs)
        for i, ws in zip(order, score_windows(self.model, (jobs[i] for i in order))):
            out[i] = (math.fsum(ws.logprobs.tolist()), bool(ws.greedy.all()))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        L = self.max_length
        jobs = []
        for _, context_enc, continuation_enc in requests:
            if not context_enc or not continuation_enc:
                raise ValueError("gpt2cy: a loglikelihood request needs a context and a continuation token")
            if len(continuation_enc) > L:
                raise ValueError(f"gpt2cy: a continuation of {len(continuation_enc)} tokens does not fit in "
                                 f"max_length {L}")
            ids = np.asarray((list(context_enc) + list(continuation_enc))[-(L + 1):], dtype=np.int64)
            n = len(ids)                       # the last id is a target only: the input is ids[:-1]
            jobs.append((ids, Window(0, n - 1, n - len(continuation_enc), n)))
        results = self._score(jobs)
        for (request_str, _, _), answer in zip(requests, results):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        jobs, owner = [], []
        for k, req in enumerate(requests):
            (string,) = req.args
            ids = np.asarray([self.prefix_token_id] + self.tok_encode(string), dtype=np.int64)
            for w in rolling_windows(len(ids) - 1, self.max_length):
                jobs.append((ids, w))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owner, self._score(jobs)):
            totals[k] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -------------------------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
        eos = self.tokenizer_.decode([self.eot_token_id])
        prompts, stops = [], []
        for req in requests:
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_gen = int(kw.pop("max_gen_toks"))
            room = self.max_length - max_gen
            if room <= 0:
                raise ValueError(f"gpt2cy: max_gen_toks {max_gen} leaves no room for a context in max_length "
                                 f"{self.max_length}")
            ids = self.tok_encode(context, left_truncate_len=room) or [self.prefix_token_id]
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
            p = {"prompt": ids, "max_new_tokens": max_gen, "stop": [s for s in until if s and s != eos],
                 "temperature": temperature}
            if temperature > 0:
                p.update({k: kw[k] for k in ("top_k", "top_p") if kw.get(k) is not None})
                if kw.get("seed") is not None:
                    p["seed"] = int(kw["seed"])
            prompts.append(p)
            stops.append(until)
        responses = complete_batch(self.model, prompts, on_notice=None)
        out = []
        for req, r, until in zip(requests, responses, stops):
            text = postprocess_generated_text(self.tok_decode(r.token_ids), until, None)
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out
