"""Text generation: the token loop over a Model, streamed as GenerationChunk objects, ending in a Response.

    generate(model, "Hello", max_new_tokens=20)                  # -> str
    complete(model, "Hello", max_new_tokens=20)                  # -> Response (text, usage, timings, seed, ...)
    for chunk in generate(model, "Hello", stream=True): ...      # -> GenerationChunk per token; the last one
                                                                 #    has a finish_reason and .response

The loop goes back to Python between tokens, and prefill runs in pieces of about 0.2 s (KVCache._run), so
Ctrl-C (KeyboardInterrupt) is seen after at most one decode step or one prefill piece; `Stream.interrupt()`
then gives the Response of what was released (finish_reason "interrupted"). Logits that are not finite
(weights holding NaN or inf) are a CheckpointError before any token is sampled from them. GPT-2's positions are absolute, so the KV cache cannot be shifted: a prompt longer than the
context is an error unless truncation is asked for, and reaching n_ctx ends the text with finish_reason
"length" and a notice (or, with context_shift, re-prefills the last half and goes on).

Notices (prompt truncated, context full) go to `on_notice`, by default gpt2cy.notices.notice: the "gpt2cy"
logger, or the handler a program installed. The library never prints them itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import CheckpointError, ContextLengthError
from ..ids import check_ids
from ..notices import notice
from .response import FINISH_REASONS, Response, Timings, Usage, model_name
from .sampling import DEFAULT_ORDER, Sampler, SamplingParams, mask_tokens
from .stopping import StopMatcher

NoticeFn = Optional[Callable[[str], None]]

__all__ = ["FINISH_REASONS", "GenerationChunk", "KVCache", "Stream", "check_finite", "check_prompt", "complete",
           "context_size", "generate", "prepare_prompt", "stream_generate"]


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
    response: on the last chunk only, the Response of the whole generation (else None).
    """
    text: str
    token: Optional[int]
    finish_reason: Optional[str] = None
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    response: Optional[Response] = field(default=None, repr=False, compare=False)


def context_size(model) -> int:
    """The context a model runs with: model.n_ctx (a smaller one may have been asked for at load),
    else its config's n_ctx."""
    n = getattr(model, "n_ctx", None)
    return int(n) if n is not None else int(model.config.n_ctx)


class KVCache:
    """Which tokens the model's KV cache (one slot of it) holds, so a new prompt prefills only what follows
    the longest prefix it shares with them (the model is truncated to that prefix first; GPT-2's positions
    are absolute, so the cached positions before it stay exact).

    A follow-up turn extends the cache; /regen, /undo, dropped turns or a reply that re-encodes
    differently diverge somewhere inside it and reuse everything before that point.

    The record is trusted only while nothing else changed the model's cache: the model's
    `cache_version(slot)` (a number that changes on every mutation of the slot) must still be the one seen
    after this record's last call, and model.n_past must match. Anything else (another generation on the
    same model, an exception mid-call) makes the next call rebuild the cache by prefilling, never continue
    from someone else's tokens.
    """

    def __init__(self, model, slot: int = 0):
        self.model = model
        self.slot = slot
        self._kw = {} if slot == 0 else {"slot": slot}
        self.ids: Optional[List[int]] = []
        self._last_logits: Optional[np.ndarray] = None
        # the logits after the last prefilled prompt, and its length: a /regen asks for them again
        self._prompt_logits: Optional[Tuple[int, np.ndarray]] = None
        self._version = self._model_version()

    @property
    def n_past(self) -> int:
        return len(self.ids) if self.ids is not None else self._model_past()

    def _model_past(self) -> int:
        past = getattr(self.model, "past", None)       # past(slot) on a model with slots, else n_past
        return past(self.slot) if past is not None else self.model.n_past

    def _model_version(self):
        version = getattr(self.model, "cache_version", None)
        return None if version is None else version(self.slot)

    def _trusted(self) -> bool:
        return (self.ids is not None and self._model_version() == self._version
                and self._model_past() == len(self.ids))

    def _seen(self) -> None:
        """Record the model's cache version after a call of ours."""
        self._version = self._model_version()

    def reset(self) -> None:
        self.ids = None
        self.model.reset(**self._kw)
        self.ids, self._last_logits, self._prompt_logits = [], None, None
        self._seen()

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
        logits = self.model.step(token, **self._kw)
        if ids is not None:                           # else the record stays unknown: next prefill resets
            ids.append(token)
            self.ids = ids
        self._last_logits = logits
        self._seen()
        return logits

    def extend(self, ids: Sequence[int]) -> np.ndarray:
        """Make the cache hold `ids`, one token more than it held after our last call: a decode step when
        the cache is as we left it, else (another generation used the model in between) a rebuild through
        prefill. Returns the logits [V] for the next position."""
        if self._trusted() and len(self.ids) + 1 == len(ids) and self.ids == ids[:-1]:
            return self.step(ids[-1])
        return self.prefill(ids)[0]

    def _truncate(self, n: int) -> None:
        if n < len(self.ids):
            ids, self.ids, self._last_logits = self.ids, None, None
            self.model.truncate(n, **self._kw)
            self.ids = ids[:n]
            self._seen()

    def _run(self, new, all_ids):
        """Prefill `new` (the tail of `all_ids`) in pieces of about PREFILL_SLICE_S each, so that Ctrl-C
        (KeyboardInterrupt, raised when a piece returns to Python) is seen within about one piece. After
        each piece the record holds the prefix the cache holds, so an interrupted prefill is resumed, not
        redone. Rows are independent of how the input is cut (matmul and attention rows), so the result is
        bit-identical to one call."""
        base = len(all_ids) - len(new)
        self.ids, self._last_logits = None, None      # unknown until a piece returns
        size, done, logits = PREFILL_CHUNK, 0, None
        while done < len(new):
            piece = new[done:done + size]
            t0 = time.perf_counter()
            try:
                logits = self.model.prefill(piece, **self._kw)
            except BaseException:
                # Ctrl-C lands when the engine returns, which may be before prefill() does: a cache that
                # grew by exactly the piece holds it (a split call that stopped part way does not match)
                if self._model_past() == base + done + len(piece):
                    self.ids, self._last_logits = list(all_ids[:base + done + len(piece)]), None
                    self._seen()
                raise
            dt = time.perf_counter() - t0
            done += len(piece)
            self.ids, self._last_logits = list(all_ids[:base + done]), logits
            self._seen()
            size = _next_piece(len(piece), dt)
        self.ids = all_ids
        return logits


# Prefill runs in pieces (see KVCache._run): the first of PREFILL_CHUNK tokens, then sized from the speed
# measured so that each takes about PREFILL_SLICE_S, within [PREFILL_CHUNK_MIN, PREFILL_CHUNK_MAX]. The
# minimum keeps a pass over the weights worth its memory traffic (1558M reads 6 GB per pass, so a piece
# there takes about 0.5 s, and that is how long Ctrl-C may wait); on a quiet machine 124M runs 64 tokens in
# about 35 ms, so its pieces grow to the maximum.
PREFILL_CHUNK = 64
PREFILL_CHUNK_MIN = 64
PREFILL_CHUNK_MAX = 512
PREFILL_SLICE_S = 0.2


def _next_piece(n: int, seconds: float) -> int:
    """Tokens for the next prefill piece, from the last one's size and duration (a multiple of 16)."""
    want = PREFILL_CHUNK_MAX if seconds <= 0 else int(n * PREFILL_SLICE_S / seconds)
    return max(PREFILL_CHUNK_MIN, min(PREFILL_CHUNK_MAX, want) // 16 * 16)


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


# -- the prompt ----------------------------------------------------------------------------------------
def check_prompt(ids, n_ctx: int, n_vocab: int, truncate: bool = False, room: int = 1,
                 on_notice: NoticeFn = notice) -> List[int]:
    """Validate prompt ids (gpt2cy.ids.check_ids: InvalidTokenError for a bad one) against the vocabulary
    and the context; cut the oldest ones if `truncate`, keeping room for `room` new tokens (at most half
    the context), with a notice."""
    if not isinstance(ids, (list, tuple, range, np.ndarray)):
        ids = list(ids)
    out = check_ids(ids, n_vocab, allow_empty=True).tolist()
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


def prepare_prompt(model, prompt_or_ids: Union[str, Sequence[int]], *, max_new_tokens: Optional[int] = 128,
                   truncate: bool = False, allowed_special=frozenset(),
                   on_notice: NoticeFn = notice) -> List[int]:
    """The prompt as token ids that fit the model's context (what generate and the command line run).

    Text is encoded ("<|endoftext|>" stays text unless allowed_special names it); ids (a sequence or a 1-D
    integer array) are validated; an empty prompt becomes [<|endoftext|>]. A prompt longer than the context
    raises ContextLengthError, or with truncate keeps the newest tokens, leaving room for max_new_tokens
    (None or negative: half the context).
    """
    tok = model.tokenizer
    if isinstance(prompt_or_ids, str):
        ids = tok.encode(prompt_or_ids, allowed_special=allowed_special)
    elif isinstance(prompt_or_ids, (bytes, bytearray)):
        raise TypeError("the prompt must be str or a sequence of token ids, not bytes")
    else:
        ids = prompt_or_ids if isinstance(prompt_or_ids, np.ndarray) else list(prompt_or_ids)
    if len(ids) == 0:
        ids = [tok.eot_token]
    n_ctx = context_size(model)
    room = n_ctx // 2 if max_new_tokens is None or max_new_tokens < 0 else max_new_tokens
    return check_prompt(ids, n_ctx, model.config.n_vocab, truncate=truncate, room=room, on_notice=on_notice)


# -- the token loop ------------------------------------------------------------------------------------
class _Run:
    """What a generation has released so far, kept outside the loop's frame so that a Response can be
    made however the loop ends (finished, closed, or an exception such as KeyboardInterrupt)."""

    def __init__(self, model, n_prompt: int, seed: Optional[int]):
        self.model = model_name(model)
        self.seed = seed
        self.n_prompt = n_prompt
        self.n_cached = 0
        self.tokens: List[int] = []
        self.parts: List[str] = []
        self.t0 = self.t1 = self.t_last = None
        self.response: Optional[Response] = None

    def build(self, finish_reason: str) -> Response:
        now = time.perf_counter()
        t0 = self.t0 if self.t0 is not None else now
        t1 = self.t1 if self.t1 is not None else now
        t_last = self.t_last if self.t_last is not None else t1
        n_new = self.n_prompt - self.n_cached if self.t1 is not None else 0
        prompt_s, gen_s = t1 - t0, t_last - t1
        timings = Timings(prompt_ms=prompt_s * 1e3, prompt_tps=n_new / prompt_s if n_new and prompt_s > 0 else 0.0,
                          gen_ms=gen_s * 1e3,
                          gen_tps=len(self.tokens) / gen_s if self.tokens and gen_s > 0 else 0.0)
        return Response(text="".join(self.parts), token_ids=tuple(self.tokens), finish_reason=finish_reason,
                        usage=Usage(self.n_prompt, len(self.tokens), self.n_cached), timings=timings,
                        seed=self.seed, model=self.model)


class Stream:
    """The chunks of one generation (an iterator of GenerationChunk), and its Response.

    seed and prompt_tokens are known before the first chunk. `response` is None until the last chunk has
    been produced (it is that chunk's .response). `interrupt()` stops the generation where it is (Ctrl-C)
    and returns the Response of what was released, finish_reason "interrupted".
    """

    def __init__(self, chunks: Iterator[GenerationChunk], run: _Run):
        self._chunks = chunks
        self._run = run

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> GenerationChunk:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    @property
    def seed(self) -> Optional[int]:
        return self._run.seed

    @property
    def prompt_tokens(self) -> int:
        return self._run.n_prompt

    @property
    def response(self) -> Optional[Response]:
        return self._run.response

    def interrupt(self) -> Response:
        """Stop generating; the Response so far (finish_reason "interrupted" unless it had finished)."""
        self._chunks.close()
        run = self._run
        if run.response is None:
            run.response = run.build("interrupted")
        return run.response


def stream_generate(model, prompt_ids: Sequence[int], sampler: Callable[[np.ndarray, Sequence[int]], int], *,
                    max_new_tokens: Optional[int] = 128, stop: Iterable[str] = (),
                    ignore_eos: bool = False, cache: Optional[KVCache] = None,
                    context_shift: bool = False, seed: Optional[int] = None, slot: int = 0,
                    on_notice: NoticeFn = notice) -> Stream:
    """The token loop: a Stream of one GenerationChunk per sampled token; the last one has a finish_reason
    and the Response.

    prompt_ids must already fit the context (see prepare_prompt). sampler(logits, ids) picks a token (a
    Sampler, or a function around one). `cache` lets a caller (Chat) keep the KV cache between calls so a
    prompt that extends the cached tokens prefills only the new ones. max_new_tokens None or negative: until
    a stop, eos or the end of the context. seed: what the Response reports (default: sampler.seed).
    slot: the model's KV-cache slot to run in, when no cache is given (a model loaded with n_slots > 1).
    """
    ids = list(prompt_ids)
    if not ids:
        raise ValueError("the prompt must hold at least one token")
    n_ctx = context_size(model)
    if len(ids) > n_ctx:
        raise ContextLengthError(f"the prompt is {len(ids)} tokens but the model's context holds {n_ctx}")
    limit = None if max_new_tokens is None or max_new_tokens < 0 else int(max_new_tokens)
    run = _Run(model, len(ids), seed if seed is not None else getattr(sampler, "seed", None))
    cache = cache if cache is not None else KVCache(model, slot)
    return Stream(_loop(model, ids, sampler, run, limit, StopMatcher(stop), ignore_eos, cache,
                        context_shift, on_notice), run)


def check_finite(logits: np.ndarray, model=None, position: Optional[int] = None) -> None:
    """Raise CheckpointError when logits hold NaN or inf: only weights with such values (or a broken
    engine) produce them, and sampling from them would give "!!!!" (argmax of NaN is id 0), an empty chat
    reply or a sampler error. Two reductions over [V] floats, a few microseconds a token."""
    if np.isfinite(logits.max()) and np.isfinite(logits.min()):
        return
    where = getattr(model, "path", None) if model is not None else None
    at = f" after {position} tokens" if position is not None else ""
    hint = f"; run `gpt2cy verify {where}` to find the tensor" if where else ""
    raise CheckpointError(f"the model's logits{at} are not finite (NaN or inf): its weights hold NaN or "
                          f"infinite values{hint}")


def _loop(model, ids, sampler, run: _Run, limit, matcher: StopMatcher, ignore_eos, cache: KVCache,
          context_shift, on_notice) -> Iterator[GenerationChunk]:
    tok = model.tokenizer
    n_ctx = context_size(model)
    eos = tok.eot_token
    n_prompt = len(ids)
    if limit == 0:
        run.response = run.build("length")
        yield GenerationChunk("", None, "length", prompt_tokens=n_prompt, response=run.response)
        return
    run.t0 = time.perf_counter()
    logits, n_cached = cache.prefill(ids)
    run.t1 = t1 = time.perf_counter()
    run.n_cached = n_cached
    prompt_tps = (n_prompt - n_cached) / (t1 - run.t0) if n_prompt > n_cached and t1 > run.t0 else 0.0
    held = list(ids)                                  # what the KV cache holds
    decoder = tok.stream_decoder()
    n_gen = 0
    while True:
        check_finite(logits, model, len(held))
        token = sampler(mask_tokens(logits, (eos,)) if ignore_eos and eos is not None else logits, ids)
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
        context_full = finish is None and len(held) >= n_ctx and not context_shift
        if context_full:
            finish = "length"
        if finish in ("length", "eos"):
            tail, stopped = matcher.feed(decoder.flush())
            text += tail if stopped else tail + matcher.flush()
            finish = "stop" if matcher.stopped else finish
        now = time.perf_counter()
        run.tokens.append(token)
        run.parts.append(text)
        run.t_last = now
        if finish:
            run.response = run.build(finish)
            if context_full and on_notice:
                on_notice(f"context full ({n_ctx} tokens): stopped")
        yield GenerationChunk(text, token, finish, prompt_tps, n_gen / (now - t1) if now > t1 else 0.0,
                              n_prompt, n_gen, n_cached, run.response)
        if finish:
            return
        if len(held) >= n_ctx:
            # context_shift: positions are absolute, so re-prefill the newest half (as carlini/c-chat-gpt-2 does)
            held = ids[-max(1, n_ctx // 2):]
            if on_notice:
                on_notice(f"context full ({n_ctx} tokens): continuing from the last {len(held)}")
            cache.reset()
            logits, _ = cache.prefill(held)
        else:
            held.append(token)
            logits = cache.extend(held)


def generate(model, prompt_or_ids: Union[str, Sequence[int]], max_new_tokens: Optional[int] = 128,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.0,
             repetition_penalty: float = 1.0, repeat_last_n: int = 64, stop: Union[str, Iterable[str], None] = None,
             seed: Optional[int] = None, stream: bool = False, truncate: bool = False,
             context_shift: bool = False, ignore_eos: bool = False, allowed_special=frozenset(),
             on_notice: NoticeFn = notice, *, return_response: bool = False, slot: int = 0,
             max_tokens: Optional[int] = None, repeat_penalty: Optional[float] = None,
             presence_penalty: float = 0.0, frequency_penalty: float = 0.0, logit_bias=None,
             min_keep: int = 1, samplers=DEFAULT_ORDER):
    """Continue a prompt (text or token ids) with GPT-2.

    Returns the generated text (stop strings left out); with return_response=True the Response (text,
    token ids, finish_reason, usage, timings, seed, model); with stream=True a Stream of GenerationChunk,
    one per token, whose last chunk carries the Response. temperature=0 is greedy argmax; a seed makes the
    output identical on one machine and thread count (without one, a seed is drawn and reported in the
    Response). `max_tokens` and `repeat_penalty` are aliases (llama-cpp-python). presence_penalty,
    frequency_penalty, logit_bias ({id: bias}), min_keep and samplers (the stage order, llama.cpp's
    "penalties;top_k;top_p;min_p;temperature" spelling or a list) are SamplingParams' (see
    generation.sampling). ignore_eos: <|endoftext|> is never sampled (its logit is -inf).
    A prompt longer than the context raises ContextLengthError unless truncate=True (keep the newest
    tokens, leaving room to generate); reaching the end of the context ends with "length" and a notice,
    or with context_shift=True continues from the newest half. An empty prompt starts from <|endoftext|>.
    Notices go to on_notice (default: gpt2cy.notices.notice; None: dropped). slot: the KV-cache slot to
    use on a model loaded with n_slots > 1 (generations in different slots never disturb each other).
    """
    if max_tokens is not None:
        max_new_tokens = max_tokens
    if repeat_penalty is not None:
        repetition_penalty = repeat_penalty
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool)
                                       or not isinstance(max_new_tokens, (int, np.integer))):
        raise ValueError(f"max_new_tokens must be an integer or None, got {max_new_tokens!r}")
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n,
                            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                            logit_bias=logit_bias, min_keep=min_keep, order=samplers)
    params.check_vocab(model.config.n_vocab)
    sampler = Sampler(params, seed)
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    StopMatcher(stops)                                  # validate now, not at the first token
    ids = prepare_prompt(model, prompt_or_ids, max_new_tokens=max_new_tokens, truncate=truncate,
                         allowed_special=allowed_special, on_notice=on_notice)
    chunks = stream_generate(model, ids, sampler, max_new_tokens=max_new_tokens, stop=stops,
                             ignore_eos=ignore_eos, context_shift=context_shift, slot=slot,
                             on_notice=on_notice)
    if stream:
        return chunks
    for _ in chunks:
        pass
    return chunks.response if return_response else chunks.response.text


def complete(model, prompt_or_ids: Union[str, Sequence[int]], **kwargs) -> Response:
    """generate(...) returning the Response instead of the text (same arguments; not stream)."""
    if kwargs.pop("stream", False):
        raise ValueError("complete() returns one Response; use generate(..., stream=True) to stream")
    kwargs.pop("return_response", None)
    return generate(model, prompt_or_ids, return_response=True, **kwargs)
