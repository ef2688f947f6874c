"""Text generation: the token loop over a Model, streamed as GenerationChunk objects.

    generate(model, "Hello", max_new_tokens=20)                  # -> str
    for chunk in generate(model, "Hello", stream=True): ...      # -> GenerationChunk per token

The loop goes back to Python between tokens, so Ctrl-C (KeyboardInterrupt) is seen after at most one
decode step. GPT-2's positions are absolute, so the KV cache cannot be shifted: a prompt longer than the
context is an error unless truncation is asked for, and reaching n_ctx ends the text with
finish_reason "length" and a notice (or, with context_shift, re-prefills the last half and goes on).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ContextLengthError
from .sampling import Sampler, SamplingParams
from .stopping import StopMatcher

FINISH_REASONS = ("stop", "length", "eos")


@dataclass(frozen=True)
class GenerationChunk:
    """One sampled token and the text it released.

    text: new text safe to show (may be "" while a UTF-8 character or a possible stop string is held back).
    token: the sampled token id (None only when nothing was generated, e.g. max_new_tokens=0).
    finish_reason: None until the last chunk, then "stop" (a stop string), "length" (max_new_tokens or
        the context is full) or "eos" (<|endoftext|>).
    prompt_tps / generation_tps: prompt tokens prefilled per second; tokens generated per second so far.
    prompt_tokens: length of the prompt; cached_tokens: how many of them were already in the KV cache;
    completion_tokens: tokens generated so far (this one included).
    """
    text: str
    token: Optional[int]
    finish_reason: Optional[str] = None
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


def stderr_notice(message: str) -> None:
    """The default notice sink: one line on stderr."""
    print(f"gpt2cy: {message}", file=sys.stderr, flush=True)


def context_size(model) -> int:
    """The context a model runs with: model.n_ctx (a smaller one may have been asked for at load),
    else its config's n_ctx."""
    n = getattr(model, "n_ctx", None)
    return int(n) if n is not None else int(model.config.n_ctx)


class KVCache:
    """Which tokens the model's KV cache holds, so a new prompt prefills only what follows the longest
    prefix it shares with them (the model is truncated to that prefix first; GPT-2's positions are
    absolute, so the cached positions before it stay exact).

    A follow-up turn extends the cache; /regen, /undo, dropped turns or a reply that re-encodes
    differently diverge somewhere inside it and reuse everything before that point.

    Anything that might leave the model in an unknown state (an exception mid-call, another user of the
    model) makes the next prefill start from a reset: the record is trusted only when it agrees with
    model.n_past.
    """

    def __init__(self, model):
        self.model = model
        self.ids: Optional[List[int]] = []
        self._last_logits: Optional[np.ndarray] = None
        # the logits after the last prefilled prompt, and its length: a /regen asks for them again
        self._prompt_logits: Optional[Tuple[int, np.ndarray]] = None

    @property
    def n_past(self) -> int:
        return len(self.ids) if self.ids is not None else self.model.n_past

    def _trusted(self) -> bool:
        return self.ids is not None and self.model.n_past == len(self.ids)

    def reset(self) -> None:
        self.ids = None
        self.model.reset()
        self.ids, self._last_logits, self._prompt_logits = [], None, None

    def prefill(self, ids: Sequence[int]):
        """Make the cache hold exactly `ids`; return (last position's logits [V], tokens reused)."""
        ids = list(ids)
        old = self.ids if self._trusted() else None
        common = _common_prefix(old, ids) if old else 0
        if common == len(ids):
            if common == len(old) and self._last_logits is not None:
                return self._last_logits, common
            if self._prompt_logits is not None and self._prompt_logits[0] == common:
                self._truncate(common)                # a /regen: the prompt's logits are still at hand
                self._last_logits = self._prompt_logits[1]
                return self._last_logits, common
            common -= 1                               # re-run the last token to get its logits
        if common > 0 and (common == len(old) or hasattr(self.model, "truncate")):
            self._truncate(common)
            logits = self._run(ids[common:], ids)
        else:
            common = 0
            self.reset()
            logits = self._run(ids, ids)
        self._prompt_logits = (len(ids), logits)
        return logits, common

    def step(self, token: int) -> np.ndarray:
        """Append one token; return the logits [V] for the next position."""
        ids, self.ids, self._last_logits = self.ids, None, None
        logits = self.model.step(token)
        if ids is not None:                           # else the record stays unknown: next prefill resets
            ids.append(token)
            self.ids = ids
        self._last_logits = logits
        return logits

    def _truncate(self, n: int) -> None:
        if n < len(self.ids):
            ids, self.ids, self._last_logits = self.ids, None, None
            self.model.truncate(n)
            self.ids = ids[:n]

    def _run(self, new, all_ids):
        self.ids, self._last_logits = None, None      # unknown until the call returns
        logits = self.model.prefill(new)
        self.ids, self._last_logits = all_ids, logits
        return logits


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n                                     # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def check_prompt(ids: Sequence[int], n_ctx: int, n_vocab: int, truncate: bool = False,
                 room: int = 1, on_notice: Optional[Callable[[str], None]] = None) -> List[int]:
    """Validate prompt ids against the vocabulary and the context; cut the oldest ones if `truncate`."""
    out = []
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < n_vocab:
            raise ValueError(f"token ids must be integers in [0, {n_vocab}), got {t!r}")
        out.append(int(t))
    if len(out) > n_ctx:
        if not truncate:
            raise ContextLengthError(
                f"the prompt is {len(out)} tokens but the model's context holds {n_ctx}; "
                f"shorten it or ask for truncation")
        keep = max(1, n_ctx - max(1, min(room, n_ctx // 2)))
        if on_notice:
            on_notice(f"prompt of {len(out)} tokens is longer than the context ({n_ctx}); "
                      f"kept the last {keep}")
        out = out[-keep:]
    return out


def stream_generate(model, prompt_ids: Sequence[int], sampler: Sampler, *,
                    max_new_tokens: Optional[int] = 128, stop: Iterable[str] = (),
                    ignore_eos: bool = False, cache: Optional[KVCache] = None,
                    context_shift: bool = False,
                    on_notice: Optional[Callable[[str], None]] = stderr_notice) -> Iterator[GenerationChunk]:
    """The token loop: yields one GenerationChunk per sampled token; the last one has a finish_reason.

    prompt_ids must already fit the context (see check_prompt). `cache` lets a caller (Chat) keep the
    KV cache between calls so a prompt that extends the cached tokens prefills only the new ones.
    max_new_tokens None or negative: until a stop, eos or the end of the context.
    """
    tok = model.tokenizer
    n_ctx = context_size(model)
    eos = tok.eot_token
    ids = list(prompt_ids)
    if not ids:
        raise ValueError("the prompt must hold at least one token")
    if len(ids) > n_ctx:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens but the model's context holds {n_ctx}")
    limit = None if max_new_tokens is None or max_new_tokens < 0 else int(max_new_tokens)
    cache = cache if cache is not None else KVCache(model)
    n_prompt = len(ids)
    if limit == 0:
        yield GenerationChunk("", None, "length", prompt_tokens=n_prompt)
        return
    t0 = time.perf_counter()
    logits, n_cached = cache.prefill(ids)
    t1 = time.perf_counter()
    prompt_tps = (n_prompt - n_cached) / (t1 - t0) if n_prompt > n_cached and t1 > t0 else 0.0
    decoder = tok.stream_decoder()
    matcher = StopMatcher(stop)
    n_gen = 0
    while True:
        token = sampler(logits, ids)
        ids.append(token)
        n_gen += 1
        finish = None
        if token == eos and not ignore_eos:
            text, finish = "", "eos"
        else:
            text, stopped = matcher.feed(decoder.feed(token))
            if stopped:
                finish = "stop"
        if finish is None and limit is not None and n_gen >= limit:
            finish = "length"
        if finish is None and cache.n_past >= n_ctx and not context_shift:
            finish = "length"
            if on_notice:
                on_notice(f"context full ({n_ctx} tokens): stopped")
        if finish in ("length", "eos"):
            tail, stopped = matcher.feed(decoder.flush())
            text += tail if stopped else tail + matcher.flush()
            finish = "stop" if matcher.stopped else finish
        now = time.perf_counter()
        yield GenerationChunk(text, token, finish, prompt_tps, n_gen / (now - t1) if now > t1 else 0.0,
                              n_prompt, n_gen, n_cached)
        if finish:
            return
        if cache.n_past >= n_ctx:
            # context_shift: positions are absolute, so re-prefill the newest half (Carlini's recipe)
            keep = ids[-max(1, n_ctx // 2):]
            if on_notice:
                on_notice(f"context full ({n_ctx} tokens): continuing from the last {len(keep)}")
            cache.reset()
            logits, _ = cache.prefill(keep)
        else:
            logits = cache.step(token)


def generate(model, prompt_or_ids: Union[str, Sequence[int]], max_new_tokens: Optional[int] = 128,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.0,
             repetition_penalty: float = 1.0, repeat_last_n: int = 64, stop: Union[str, Iterable[str], None] = None,
             seed: Optional[int] = None, stream: bool = False, truncate: bool = False,
             context_shift: bool = False, ignore_eos: bool = False, allowed_special=frozenset(),
             on_notice: Optional[Callable[[str], None]] = stderr_notice, *,
             max_tokens: Optional[int] = None, repeat_penalty: Optional[float] = None):
    """Continue a prompt (text or token ids) with GPT-2.

    Returns the generated text (stop strings left out), or with stream=True an iterator of
    GenerationChunk, one per token. temperature=0 is greedy argmax; a seed makes the output identical
    on one machine and thread count. `max_tokens` and `repeat_penalty` are aliases (llama-cpp-python).
    A prompt longer than the context raises ContextLengthError unless truncate=True (keep the newest
    tokens, leaving room to generate); reaching the end of the context ends with "length" and a notice,
    or with context_shift=True continues from the newest half. An empty prompt starts from <|endoftext|>.
    """
    if max_tokens is not None:
        max_new_tokens = max_tokens
    if repeat_penalty is not None:
        repetition_penalty = repeat_penalty
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool)
                                       or not isinstance(max_new_tokens, (int, np.integer))):
        raise ValueError(f"max_new_tokens must be an integer or None, got {max_new_tokens!r}")
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n)
    sampler = Sampler(params, seed)
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    StopMatcher(stops)                                  # validate now, not at the first token
    tok = model.tokenizer
    cfg = model.config
    if isinstance(prompt_or_ids, str):
        ids = tok.encode(prompt_or_ids, allowed_special=allowed_special)
    elif isinstance(prompt_or_ids, (bytes, bytearray)):
        raise TypeError("the prompt must be str or a sequence of token ids, not bytes")
    else:
        ids = list(np.asarray(prompt_or_ids).reshape(-1).tolist()) if isinstance(prompt_or_ids, np.ndarray) \
            else list(prompt_or_ids)
    if not ids:
        ids = [tok.eot_token]
    n_ctx = context_size(model)
    room = n_ctx // 2 if max_new_tokens is None or max_new_tokens < 0 else max_new_tokens
    ids = check_prompt(ids, n_ctx, cfg.n_vocab, truncate=truncate, room=room, on_notice=on_notice)
    chunks = stream_generate(model, ids, sampler, max_new_tokens=max_new_tokens, stop=stops,
                             ignore_eos=ignore_eos, context_shift=context_shift, on_notice=on_notice)
    if stream:
        return chunks
    return "".join(c.text for c in chunks)
