"""Scoring text: the log-probability of every token given the ones before it, and perplexity.

    s = model.score("The quick brown fox")            # a Score
    s.logprobs, s.perplexity, s.mean_nll, s.count
    model.score(ids, n_ctx=1024, stride=512, top_n=5) # a sliding window past the context; top-5 alternatives
    model.score_batch(["text one", "text two"])       # windows of all texts batched through the prefill

Texts longer than the window are scored as the Transformers perplexity guide does it (its "sliding window"
recipe): windows start at 0, stride, 2*stride, ...; each holds up to n_ctx tokens; only its last
(end - previous window's end) tokens are counted, so every token but the first is counted exactly once, with
up to n_ctx - stride tokens of context before it. The first token of a text has nothing before it and is
never scored. (The guide's code weights each window's mean by one token fewer than it holds after the
first window; here every counted token has weight one.)

The model is taken duck-typed: `forward_rows([(slot, ids), ...], rows, out)` (the logits of rows [lo, hi) of
each request, as views of the buffer out; each request appended to its slot's cache), `reset(slot)`, `n_ctx`,
`n_slots`, `max_rows`, `tokenizer` and `config.n_vocab`.
Scoring resets and uses the model's slots. Windows are packed into passes of up to max_rows rows, one slot each.
The log-softmax is float32 over float32 logits; each token's log-probability is formed and summed in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..ids import check_ids, is_int

__all__ = ["Score", "Window", "WindowScores", "StreamScorer", "check_window", "score", "score_batch",
           "score_windows", "sliding_windows"]

_BLOCK = 64          # logits rows per log-softmax block: the temporaries stay in cache


class Window(NamedTuple):
    """One forward over ids[start:end] as a fresh sequence; the targets ids[q] for q in [first, last) are
    scored, each by the logits of row q - 1 - start (so start < first and last <= end + 1)."""
    start: int
    end: int
    first: int
    last: int


class WindowScores(NamedTuple):
    """What one window gave: targets ids[first:last], their float64 log-probabilities, whether each is the
    argmax of its row, and (top_n > 0) the top_n ids and log-probabilities per row, best first."""
    window: Window
    logprobs: np.ndarray
    greedy: np.ndarray
    top_ids: Optional[np.ndarray]
    top_logprobs: Optional[np.ndarray]


@dataclass
class Score:
    """A scored text.

    token_ids: int64 [n], the text's tokens. logprobs: float32 [n], log p(token i | the tokens before it in
    its window), NaN where a token is not scored (the first). greedy: bool [n], the token is the most likely
    one at its position. top_ids / top_logprobs: [n, top_n] (best first; -1 / NaN where not scored), or None.
    sum_logprob: float64 sum over the counted tokens; count: how many were counted (n - 1, or 0).
    n_ctx, stride: the window used.
    """
    token_ids: np.ndarray
    logprobs: np.ndarray
    greedy: np.ndarray
    sum_logprob: float
    count: int
    n_ctx: int
    stride: int
    top_ids: Optional[np.ndarray] = None
    top_logprobs: Optional[np.ndarray] = None

    @property
    def nll(self) -> float:
        """Total negative log-likelihood in nats (float64)."""
        return -self.sum_logprob

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per counted token (nats); NaN when nothing was counted."""
        return self.nll / self.count if self.count else math.nan

    @property
    def perplexity(self) -> float:
        """exp(mean_nll); NaN when nothing was counted (fewer than two tokens)."""
        return math.exp(self.mean_nll) if self.count else math.nan

    def to_dict(self) -> dict:
        """JSON-ready: token ids, per-token log-probabilities (None where not scored), totals."""
        lp = [None if math.isnan(v) else float(v) for v in self.logprobs.tolist()]
        d = {"token_ids": self.token_ids.tolist(), "logprobs": lp, "greedy": self.greedy.tolist(),
             "count": self.count, "sum_logprob": self.sum_logprob,
             "mean_nll": None if not self.count else self.mean_nll,
             "perplexity": None if not self.count else self.perplexity, "n_ctx": self.n_ctx, "stride": self.stride}
        if self.top_ids is not None:
            d["top_ids"] = self.top_ids.tolist()
            d["top_logprobs"] = [[None if math.isnan(v) else float(v) for v in row]
                                 for row in self.top_logprobs.tolist()]
        return d


# ------------------------------------------------------------------------------------ windows

def check_window(model, n_ctx=None, stride=None) -> Tuple[int, int]:
    """The (n_ctx, stride) to score with: n_ctx defaults to the model's context and must lie in [2, it];
    stride defaults to n_ctx // 2 and must lie in [1, n_ctx] (a longer stride would leave tokens between
    windows unscored). ValueError naming the value otherwise."""
    limit = int(model.n_ctx)
    if n_ctx is None:
        n_ctx = limit
    if not is_int(n_ctx) or not 2 <= n_ctx <= limit:
        raise ValueError(f"n_ctx must be an integer between 2 and the model's context {limit}, got {n_ctx!r}")
    if stride is None:
        stride = max(1, n_ctx // 2)
    if not is_int(stride) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if stride > n_ctx:
        raise ValueError(f"stride {stride} is longer than the window n_ctx {n_ctx}: the tokens between two "
                         f"windows would never be scored; use a stride of at most {n_ctx}")
    return int(n_ctx), int(stride)


def sliding_windows(n: int, n_ctx: int, stride: int) -> List[Window]:
    """The Transformers guide's windows over n tokens: begin = 0, stride, ...; end = min(begin + n_ctx, n);
    counted: [max(previous end, begin + 1), end); the last window is the one that reaches n."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + n_ctx, n)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append(Window(begin, end, first, end))
        prev_end = end
        if end == n:
            break
    return out


# ------------------------------------------------------------------------------------ the forward

def _score_rows(logits: np.ndarray, targets: np.ndarray, top_n: int):
    """Log-probabilities (float64) of targets[i] under row i of logits, argmax flags, top_n alternatives."""
    k = len(targets)
    lp = np.empty(k, np.float64)
    greedy = np.empty(k, bool)
    top_ids = np.empty((k, top_n), np.int64) if top_n else None
    top_lp = np.empty((k, top_n), np.float64) if top_n else None
    for a in range(0, k, _BLOCK):
        b = min(a + _BLOCK, k)
        x = logits[a:b]
        r = np.arange(b - a)
        best = x.argmax(axis=1)
        m = x[r, best]
        e = np.subtract(x, m[:, None])
        np.exp(e, out=e)
        lse = m.astype(np.float64) + np.log(e.sum(axis=1).astype(np.float64))
        t = targets[a:b]
        lp[a:b] = x[r, t].astype(np.float64) - lse
        greedy[a:b] = best == t
        if top_n:
            idx = np.argpartition(x, x.shape[1] - top_n, axis=1)[:, -top_n:] if top_n < x.shape[1] else \
                np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
            vals = np.take_along_axis(x, idx, axis=1)
            order = np.argsort(-vals, axis=1, kind="stable")
            top_ids[a:b] = np.take_along_axis(idx, order, axis=1)
            top_lp[a:b] = np.take_along_axis(vals, order, axis=1).astype(np.float64) - lse[:, None]
    return lp, greedy, top_ids, top_lp


def score_windows(model, jobs: Iterable[Tuple[np.ndarray, Window]], top_n: int = 0) -> Iterator[WindowScores]:
    """Score (ids, window) jobs in order, yielding a WindowScores per job as its pass completes.

    Consecutive jobs share a pass over the weights while their rows fit max_rows and there are slots for
    them (a window longer than max_rows runs alone, over several passes); every job starts from an empty
    slot. Only one pass's logits are alive at a time."""
    n_slots, R = int(model.n_slots), int(model.max_rows)
    group: List[Tuple[np.ndarray, Window]] = []
    rows = 0
    buf = [np.empty((0, int(model.config.n_vocab)), np.float32)]   # the logits, reused pass after pass

    def run(group):
        for s in range(len(group)):
            model.reset(s)
        need = sum(w.last - w.first for _, w in group)
        if buf[0].shape[0] < need:
            buf[0] = np.empty((need, buf[0].shape[1]), np.float32)
        # logits only of the rows that score a target: a window's context rows cost no lm_head
        logits = model.forward_rows([(s, ids[w.start:w.end]) for s, (ids, w) in enumerate(group)],
                                    [(w.first - 1 - w.start, w.last - 1 - w.start) for _, w in group], buf[0])
        for (ids, w), lg in zip(group, logits):
            targets = np.asarray(ids[w.first:w.last], dtype=np.int64)
            yield WindowScores(w, *_score_rows(lg, targets, top_n))

    for ids, w in jobs:
        if not (0 <= w.start < w.first <= w.last <= w.end + 1 and w.end - w.start <= model.n_ctx
                and w.last <= len(ids)):
            raise ValueError(f"bad window {tuple(w)} for {len(ids)} tokens and n_ctx {model.n_ctx}")
        n = w.end - w.start
        if group and (rows + n > R or len(group) == n_slots):
            yield from run(group)
            group, rows = [], 0
        group.append((ids, w))
        rows += n
    if group:
        yield from run(group)


# ------------------------------------------------------------------------------------ the API

def _ids_of(model, text_or_ids, allowed_special) -> np.ndarray:
    if isinstance(text_or_ids, str):
        ids = model.tokenizer.encode(text_or_ids, allowed_special=allowed_special)
        return np.asarray(ids, dtype=np.int64)
    return check_ids(text_or_ids, model.config.n_vocab, allow_empty=True).astype(np.int64, copy=False)


def _check_top_n(top_n, n_vocab: int) -> int:
    if not is_int(top_n) or not 0 <= top_n <= n_vocab:
        raise ValueError(f"top_n must be an integer between 0 and {n_vocab}, got {top_n!r}")
    return int(top_n)


def score_batch(model, texts: Sequence[Union[str, Sequence[int]]], *, n_ctx: Optional[int] = None,
                stride: Optional[int] = None, top_n: int = 0, allowed_special="all") -> List[Score]:
    """Score every text (a str, or token ids); their windows go through the prefill together. See score."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError("score_batch takes a list of texts (str) or token-id lists")
    n_ctx, stride = check_window(model, n_ctx, stride)
    V = int(model.config.n_vocab)
    top_n = _check_top_n(top_n, V)
    seqs = [_ids_of(model, t, allowed_special) for t in texts]
    results = []
    for ids in seqs:
        n = len(ids)
        results.append(Score(token_ids=ids, logprobs=np.full(n, np.nan, np.float32), greedy=np.zeros(n, bool),
                             sum_logprob=0.0, count=0, n_ctx=n_ctx, stride=stride,
                             top_ids=np.full((n, top_n), -1, np.int64) if top_n else None,
                             top_logprobs=np.full((n, top_n), np.nan, np.float32) if top_n else None))
    jobs = [(i, w) for i, ids in enumerate(seqs) for w in sliding_windows(len(ids), n_ctx, stride)]
    sums = [0.0] * len(seqs)
    for (i, _), ws in zip(jobs, score_windows(model, ((seqs[i], w) for i, w in jobs), top_n)):
        res, w = results[i], ws.window
        res.logprobs[w.first:w.last] = ws.logprobs
        res.greedy[w.first:w.last] = ws.greedy
        if top_n:
            res.top_ids[w.first:w.last] = ws.top_ids
            res.top_logprobs[w.first:w.last] = ws.top_logprobs
        sums[i] += math.fsum(ws.logprobs.tolist())
        res.count += len(ws.logprobs)
    for res, s in zip(results, sums):
        res.sum_logprob = s
    return results


def score(model, text_or_ids: Union[str, Sequence[int]], *, n_ctx: Optional[int] = None,
          stride: Optional[int] = None, top_n: int = 0, allowed_special="all") -> Score:
    """Per-token log-probabilities of a text (str, tokenized with the model's tokenizer; "<|endoftext|>"
    is the special token unless allowed_special=() says otherwise, as transformers' GPT-2 tokenizer reads
    it) or of token ids.

    n_ctx: the window (default and maximum: the model's context; at least 2). stride: how far each window
    starts after the one before (default n_ctx // 2; at most n_ctx). top_n: also the top_n most likely
    tokens at every scored position. Fewer than two tokens: a Score with count 0 and NaN perplexity.
    """
    if not isinstance(text_or_ids, str) and (not hasattr(text_or_ids, "__len__") or
                                             isinstance(text_or_ids, (bytes, bytearray))):
        raise TypeError(f"score takes a str or a sequence of token ids, not {type(text_or_ids).__name__}")
    return score_batch(model, [text_or_ids], n_ctx=n_ctx, stride=stride, top_n=top_n,
                       allowed_special=allowed_special)[0]


# ------------------------------------------------------------------------------------ streaming

@dataclass
class StreamScorer:
    """The sliding window over a token stream too long to hold: feed() ids as they are tokenized, then
    finish(). Gives exactly score()'s totals for the whole stream (the same windows), holding only the
    current window's tokens and one pass's logits. Totals: sum_logprob (float64), count, n_tokens.

    Windows are batched: up to `batch` complete windows wait for one pass (the model's slots and max_rows
    bound how many share it)."""
    model: object
    n_ctx: int
    stride: int
    batch: int = 1
    sum_logprob: float = 0.0
    count: int = 0
    n_tokens: int = 0
    _buf: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _base: int = 0              # the global index of _buf[0]: the next window's start
    _prev_end: int = 0
    _waiting: list = field(default_factory=list)

    def feed(self, ids) -> None:
        """Append token ids; score every window they complete."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        self._buf = np.concatenate([self._buf, ids])
        self.n_tokens += len(ids)
        # a window [begin, begin + n_ctx) with room for it is the same whatever follows
        while self._base + self.n_ctx <= self.n_tokens and self._prev_end < self.n_tokens:
            self._take(self._base + self.n_ctx)
        if len(self._waiting) >= self.batch:
            self._flush()

    def finish(self) -> None:
        """Score the windows that reach the end of the stream."""
        while self._prev_end < self.n_tokens and self._base < self.n_tokens:
            self._take(min(self._base + self.n_ctx, self.n_tokens))
        self._flush()

    @property
    def mean_nll(self) -> float:
        return -self.sum_logprob / self.count if self.count else math.nan

    def _take(self, end: int) -> None:
        begin = self._base
        first = max(self._prev_end, begin + 1)
        if first < end:
            local = self._buf[:end - begin].copy()
            self._waiting.append((local, Window(0, end - begin, first - begin, end - begin)))
        self._prev_end = end
        self._base = begin + self.stride
        self._buf = self._buf[self.stride:]

    def _flush(self) -> None:
        for ws in score_windows(self.model, self._waiting):
            self.sum_logprob += math.fsum(ws.logprobs.tolist())
            self.count += len(ws.logprobs)
        self._waiting = []
