"""Many prompts at once: generate_batch runs them through a Scheduler, one forward over all of them a step.

    model = gpt2cy.load("124M", n_slots=4)
    texts = generate_batch(model, ["Hello", "Once upon a time", [464, 3290]], max_new_tokens=20, seed=1)
    rs = complete_batch(model, prompts, seed=[1, 2, 3])          # -> [Response, ...]
    rs = complete_batch(model, ["Hi", {"prompt": "Bye", "temperature": 0, "stop": ["."]}])
    for i, chunk in generate_batch(model, prompts, stream=True): # BatchChunk(index, GenerationChunk)
        print(i, chunk.text)

Each prompt's output is bit-identical to generate(model, prompt, <same settings>, seed=<its seed>) on a
one-slot model: the engine's batched logits equal each sequence's alone, and sampling, stop strings,
UTF-8 streaming and finish reasons are decided per prompt as the single path decides them. More prompts
than the model's slots wait their turn (a model with n_slots=1 runs them one after another).

Settings: every keyword of generate applies to every prompt; `seed` may also be a list (one per prompt);
and a prompt may be a dict {"prompt": text or ids, <any per-prompt keyword>: value} whose keys override
the shared ones for that prompt. Per-prompt keywords: max_new_tokens (max_tokens), temperature, top_k,
top_p, min_p, repetition_penalty (repeat_penalty), repeat_last_n, presence_penalty, frequency_penalty,
logit_bias, min_keep, samplers, stop, seed, truncate, context_shift, ignore_eos, allowed_special. seed None:
a fresh seed per prompt, reported in its Response.
"""
from __future__ import annotations

import collections
import queue
from typing import Deque, Iterable, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from ..ids import is_int
from ..notices import notice
from .loop import GenerationChunk, prepare_prompt
from .response import Response
from .sampling import DEFAULT_ORDER, Sampler, SamplingParams
from .scheduler import DEFAULT_TOKEN_BUDGET, Handle, Request, Scheduler
from .stopping import StopMatcher

__all__ = ["BatchChunk", "BatchStream", "PER_PROMPT", "complete_batch", "generate_batch", "is_prompt_list"]

# the keywords a prompt's dict may set (aliases as generate: max_tokens, repeat_penalty)
PER_PROMPT = ("max_new_tokens", "max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
              "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "logit_bias",
              "min_keep", "samplers", "stop", "seed", "truncate", "context_shift", "ignore_eos",
              "allowed_special")
# keyword -> SamplingParams field (generate's `samplers` is the params' `order`)
_SAMPLING = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
             "repetition_penalty": "repetition_penalty", "repeat_last_n": "repeat_last_n",
             "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
             "logit_bias": "logit_bias", "min_keep": "min_keep", "samplers": "order"}


class BatchChunk(NamedTuple):
    """One streamed chunk of prompt `index`: `for i, chunk in generate_batch(..., stream=True)`."""
    index: int
    chunk: GenerationChunk

    @property
    def text(self) -> str:
        return self.chunk.text

    @property
    def token(self) -> Optional[int]:
        return self.chunk.token

    @property
    def finish_reason(self) -> Optional[str]:
        return self.chunk.finish_reason

    @property
    def response(self) -> Optional[Response]:
        return self.chunk.response


class BatchStream:
    """The chunks of a batch as they come (BatchChunk, any prompt's next), and each prompt's Response.

    seeds and prompt_tokens are known before the first chunk; responses[i] is None until prompt i has
    finished. cancel(i) stops one prompt (its slot is freed at the next step); interrupt() stops them all
    and returns every Response (finish_reason "interrupted" for those that had not finished).
    """

    def __init__(self, scheduler: Scheduler, handles: List[Handle], news: "queue.SimpleQueue"):
        self._scheduler = scheduler
        self.handles = handles
        self._news = news
        self._ended = [False] * len(handles)
        self._ready: Deque[BatchChunk] = collections.deque()

    def __iter__(self) -> "BatchStream":
        return self

    @property
    def seeds(self) -> List[Optional[int]]:
        return [h.seed for h in self.handles]

    @property
    def prompt_tokens(self) -> List[int]:
        return [h.prompt_tokens for h in self.handles]

    @property
    def responses(self) -> List[Optional[Response]]:
        return [h.response for h in self.handles]

    def cancel(self, index: int) -> None:
        self.handles[index].cancel()

    def close(self) -> None:
        """Stop every prompt that has not finished (as interrupt())."""
        self.interrupt()

    def interrupt(self) -> List[Response]:
        """Stop every prompt now; their Responses (for the unfinished ones finish_reason "interrupted" and
        the text of every chunk made so far; chunks made but not yet read can still be read)."""
        for h in self.handles:
            if not h.done:
                h.cancel()
        if not self._scheduler.running:
            self._scheduler.reap()
        for h in self.handles:                     # an engine thread reaps them at its next step
            h.wait()
        return self.responses

    def _drain(self) -> None:
        for i, h in enumerate(self.handles):
            while not self._ended[i]:
                item = h._pop()
                if item is None:
                    break
                if isinstance(item, GenerationChunk):
                    self._ready.append(BatchChunk(i, item))
                    continue
                self._ended[i] = True
                if isinstance(item, BaseException):
                    raise item

    def __next__(self) -> BatchChunk:
        # a plain loop, not a generator: after an exception (Ctrl-C in a step) the stream can go on
        sched = self._scheduler
        while True:
            if self._ready:
                return self._ready.popleft()
            self._drain()
            if self._ready:
                continue
            if all(self._ended):
                raise StopIteration
            if sched.running:
                try:
                    self._news.get(timeout=0.5)
                except queue.Empty:
                    pass
            else:
                sched.step_or_wait()


def is_prompt_list(prompts) -> bool:
    """True when `prompts` is a list of prompts (str, ids or dicts), not one prompt given as ids."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        return False
    return all(isinstance(p, (str, dict, list, tuple, range, np.ndarray)) for p in prompts)


def _requests(model, prompts, shared: dict, seed, on_notice) -> List[Request]:
    """One checked Request per prompt (everything is validated before anything runs)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
        raise TypeError("generate_batch takes a list of prompts (str, token ids, or dicts with a 'prompt')")
    if prompts and all(is_int(p) for p in prompts):
        raise TypeError("generate_batch takes a list of prompts; to pass one prompt as ids, wrap it: [ids]")
    if isinstance(seed, (list, tuple)):
        if len(seed) != len(prompts):
            raise ValueError(f"seed is a list of {len(seed)} for {len(prompts)} prompts")
        seeds = list(seed)
    else:
        seeds = [seed] * len(prompts)
    out = []
    for i, p in enumerate(prompts):
        kw = dict(shared, seed=seeds[i])
        if isinstance(p, dict):
            p = dict(p)
            if "prompt" not in p:
                raise ValueError(f"prompt {i}: a dict prompt needs a 'prompt' key")
            text = p.pop("prompt")
            unknown = sorted(set(p) - set(PER_PROMPT))
            if unknown:
                raise ValueError(f"prompt {i}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                                 f"a prompt may set {', '.join(PER_PROMPT)}")
            if "max_tokens" in p:
                p["max_new_tokens"] = p.pop("max_tokens")
            if "repeat_penalty" in p:
                p["repetition_penalty"] = p.pop("repeat_penalty")
            kw.update(p)
        else:
            text = p
        try:
            out.append(_request(model, text, kw, i, on_notice))
        except (ValueError, TypeError) as e:
            raise type(e)(f"prompt {i}: {e}") from None
    return out


def _request(model, prompt, kw: dict, index: int, on_notice) -> Request:
    """What generate() does before its loop, for one prompt."""
    n = kw["max_new_tokens"]
    if n is not None and not is_int(n):
        raise ValueError(f"max_new_tokens must be an integer or None, got {n!r}")
    params = SamplingParams(**{field: kw[k] for k, field in _SAMPLING.items()})
    params.check_vocab(model.config.n_vocab)
    sampler = Sampler(params, kw["seed"])
    stop = kw["stop"]
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    StopMatcher(stops)
    ids = prepare_prompt(model, prompt, max_new_tokens=n, truncate=kw["truncate"],
                         allowed_special=kw["allowed_special"], on_notice=on_notice)
    return Request(ids, sampler, max_new_tokens=n, stop=stops, ignore_eos=kw["ignore_eos"],
                   context_shift=kw["context_shift"], tag=index, on_notice=on_notice)


def generate_batch(model, prompts: Sequence[Union[str, Sequence[int], dict]], max_new_tokens: Optional[int] = 128,
                   temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.0,
                   repetition_penalty: float = 1.0, repeat_last_n: int = 64,
                   stop: Union[str, Iterable[str], None] = None,
                   seed: Union[int, None, Sequence[Optional[int]]] = None, stream: bool = False,
                   truncate: bool = False, context_shift: bool = False, ignore_eos: bool = False,
                   allowed_special=frozenset(), on_notice=notice, *, return_response: bool = False,
                   max_tokens: Optional[int] = None, repeat_penalty: Optional[float] = None,
                   presence_penalty: float = 0.0, frequency_penalty: float = 0.0, logit_bias=None,
                   min_keep: int = 1, samplers=DEFAULT_ORDER,
                   token_budget: int = DEFAULT_TOKEN_BUDGET, scheduler: Optional[Scheduler] = None):
    """Continue several prompts at once, all of them in each pass over the weights (continuous batching).

    prompts: a list of str, token ids, or dicts {"prompt": ..., <setting>: value} (see the module
    docstring); the keywords are generate()'s and apply to every prompt, seed also as a list. Returns the
    list of texts in prompt order; with return_response=True the list of Response; with stream=True a
    BatchStream of BatchChunk(index, chunk), in the order the chunks are made.
    token_budget: rows one step runs at most (chunked prefill). scheduler: run on this Scheduler (one
    whose engine thread is running, say); by default the model's shared one (Scheduler.for_model), so
    batches from several threads run in the same steps.
    Everything is checked before anything runs; an error names the prompt's index.
    """
    if max_tokens is not None:
        max_new_tokens = max_tokens
    if repeat_penalty is not None:
        repetition_penalty = repeat_penalty
    shared = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                  repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n,
                  presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logit_bias=logit_bias,
                  min_keep=min_keep, samplers=samplers, stop=stop,
                  truncate=truncate, context_shift=context_shift, ignore_eos=ignore_eos,
                  allowed_special=allowed_special)
    requests = _requests(model, prompts, shared, seed, on_notice)
    if scheduler is None:
        scheduler = Scheduler.for_model(model, token_budget=token_budget)
    elif scheduler.model is not model:
        raise ValueError("the scheduler runs another model")
    news: "queue.SimpleQueue" = queue.SimpleQueue()
    listener = news.put if scheduler.running else None
    handles = [scheduler.submit(r, listener) for r in requests]
    chunks = BatchStream(scheduler, handles, news)
    if stream:
        return chunks
    try:
        for _ in chunks:
            pass
    except BaseException:
        chunks.interrupt()
        raise
    responses = chunks.responses
    return responses if return_response else [r.text for r in responses]


def complete_batch(model, prompts, **kwargs) -> List[Response]:
    """generate_batch(...) returning the list of Response (same arguments; not stream)."""
    if kwargs.pop("stream", False):
        raise ValueError("complete_batch() returns Responses; use generate_batch(..., stream=True) to stream")
    kwargs.pop("return_response", None)
    return generate_batch(model, prompts, return_response=True, **kwargs)
