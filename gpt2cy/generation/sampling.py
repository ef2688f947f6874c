"""Turning a row of logits into the next token: repetition penalty, temperature, top-k, top-p, min-p.

The order follows HF transformers' logits processors: repetition penalty, then temperature, then top-k,
top-p and min-p on the tempered distribution, then one draw from a seeded numpy Generator.
Temperature 0 is greedy argmax (after the penalty), the same choice as Carlini's C chat (carlini/c-chat-gpt-2).

`candidates()` is the readable numpy version of the rules. Sampler takes compiled paths in _sampling.pyx
instead: with top-k on (the default), one pass over the row with a k-entry heap, then scalar work on the k
survivors, ~12 us a token instead of ~70 us; with top-p (or min-p) alone, softmax() (numpy's exp between
two compiled passes) then a radix select for the nucleus (no sort of the 50257 probabilities), drawing in
id order, ~65 us on a flat row (~30 us with min-p alone). Both are under 1% of a 124M decode step
(bench/bench_generate.py measures it; tests check the compiled paths keep exactly the reference's sets,
and that the top-k path draws the same tokens).
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, fields, replace
from typing import FrozenSet, Iterable, Optional, Sequence, Tuple

import numpy as np

from ._sampling import normalise, sample_nucleus, sample_top_k, shift_scale


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen.

    temperature: 0 = greedy argmax; higher flattens the distribution.
    top_k: keep the k most likely tokens (0 = off).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = off).
    min_p: drop tokens less likely than min_p times the most likely one (0 = off).
    repetition_penalty: divide positive (multiply negative) logits of recently seen tokens (1 = off).
    repeat_last_n: how many recent tokens the penalty looks at (0 = none, -1 = all).
    """
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64

    def __post_init__(self):
        def num(name, value, integer=False):
            ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
            if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
                kind = "an integer" if integer else "a finite number"
                raise ValueError(f"{name} must be {kind}, got {value!r}")
        for f in fields(self):
            num(f.name, getattr(self, f.name), integer=f.name in ("top_k", "repeat_last_n"))
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1 (-1 = all), got {self.repeat_last_n}")

    def replace(self, **changes) -> "SamplingParams":
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


def random_seed() -> int:
    """A fresh seed from the OS, small enough to print and pass back with -s."""
    return secrets.randbits(31)


def apply_repetition_penalty(logits: np.ndarray, tokens: Sequence[int], penalty: float) -> np.ndarray:
    """Penalise every token in `tokens` once (the CTRL paper's rule, arXiv:1909.05858, as HF's
    RepetitionPenaltyLogitsProcessor); returns a new array when it changes anything.

    logits: [V] float32.  Positive logits are divided by `penalty`, negative ones multiplied.
    """
    if penalty == 1.0 or len(tokens) == 0:
        return logits
    idx = np.asarray(tokens, dtype=np.intp)
    out = logits.copy()
    vals = out[idx]
    out[idx] = np.where(vals > 0, vals / penalty, vals * penalty)   # duplicates write the same value
    return out


def _recent(history: Sequence[int], n: int, exempt: FrozenSet[int] = frozenset()) -> Sequence[int]:
    """The last n tokens of history (all when n < 0) that the repetition penalty applies to."""
    if n == 0 or len(history) == 0:
        return ()
    window = history if n < 0 else history[-n:]
    return [t for t in window if t not in exempt] if exempt else window


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities float32 [V] of (logits - max) / temperature, normalised: the one distribution both
    the reference and the compiled top-p path cut. Bit for bit what numpy's
    `e = np.exp((x - x.max()) * np.float32(1 / T)); e * np.float32(1 / float(e.sum()))` gives (float32
    throughout), with numpy's exp between two compiled passes instead of six numpy ones: ~20 us for
    50257 instead of ~30."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    full = np.empty_like(logits)
    shift_scale(logits, np.float32(1.0 / temperature), full)
    np.exp(full, out=full)
    normalise(full)                            # numpy's pairwise float32 sum, then the scale
    return full


def candidates(logits: np.ndarray, params: SamplingParams, history: Sequence[int] = (),
               exempt: FrozenSet[int] = frozenset(), _sorted: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """The tokens that may be drawn and their probabilities, most likely first.

    logits: [V] float.  Returns (ids [n] intp, probs [n] float64 summing to 1).
    With temperature 0 the single argmax token is returned with probability 1.
    exempt: tokens the repetition penalty never touches (e.g. the newline that ends every chat turn).
    """
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
    logits = apply_repetition_penalty(logits, _recent(history, params.repeat_last_n, exempt),
                                      params.repetition_penalty)
    if params.temperature == 0:
        return np.array([int(np.argmax(logits))], dtype=np.intp), np.ones(1)
    V = logits.shape[0]
    k = params.top_k if 0 < params.top_k < V else 0
    if k:
        # O(V) partition, then sort only the k survivors
        ids = np.argpartition(logits, V - k)[V - k:]
        ids = ids[np.lexsort((ids, -logits[ids]))]          # best first; ties: lower id first
        scaled = logits[ids].astype(np.float64) / params.temperature
        probs = np.exp(scaled - scaled[0])
        probs /= probs.sum()
    else:
        full = softmax(logits, params.temperature)
        if params.top_p >= 1.0 and params.min_p == 0.0 and not _sorted:
            return np.arange(V), full.astype(np.float64)   # nothing to cut: skip sorting 50257 values
        ids = np.arange(V)
        if params.top_p >= 1.0 and params.min_p > 0.0:     # a float64 floor, as the final cut below
            ids = np.flatnonzero(full >= np.float64(params.min_p) * np.float64(full.max()))
        ids = ids[np.argsort(-full[ids], kind="stable")]    # best first; ties: lower id first
        probs = full[ids].astype(np.float64)
    if params.top_p < 1.0:
        cum = np.cumsum(probs)
        # probs are full-vocabulary (or within-top-k) probabilities, so the cut is at top_p itself
        n = int(np.searchsorted(cum, params.top_p, side="left")) + 1
        ids, probs = ids[:n], probs[:n]
    if params.min_p > 0.0:
        keep = probs >= params.min_p * probs[0]
        ids, probs = ids[keep], probs[keep]
    return ids, probs / probs.sum()


class Sampler:
    """Chooses tokens from logits with fixed parameters and its own seeded random stream.

    The same seed, parameters and logits give the same tokens, call after call.
    """

    def __init__(self, params: Optional[SamplingParams] = None, seed: Optional[int] = None,
                 exempt: Iterable[int] = ()):
        self.params = params if params is not None else SamplingParams()
        self.exempt = frozenset(int(t) for t in exempt)   # never penalised (llama.cpp's penalize_nl=false)
        self.reseed(seed)

    def reseed(self, seed: Optional[int] = None) -> int:
        """Restart the random stream; None or -1 picks a fresh seed. Returns the seed in use."""
        if seed is None or seed == -1:
            seed = random_seed()
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer (or -1 for random), got {seed!r}")
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        return self.seed

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """Pick the next token. logits: [V]; history: the tokens so far (prompt and generated)."""
        p = self.params
        logits = np.asarray(logits)
        if p.temperature == 0:
            logits = apply_repetition_penalty(logits, _recent(history, p.repeat_last_n, self.exempt),
                                              p.repetition_penalty)
            return int(np.argmax(logits))
        if logits.ndim == 1 and logits.shape[0] > 0:
            logits = apply_repetition_penalty(logits, _recent(history, p.repeat_last_n, self.exempt),
                                              p.repetition_penalty)
            if 0 < p.top_k < logits.shape[0]:
                # the hot path (defaults): one C pass, same rules as candidates(); see _sampling.pyx
                if logits.dtype != np.float32 or not logits.flags.c_contiguous:
                    logits = np.ascontiguousarray(logits, dtype=np.float32)
                return sample_top_k(logits, p.top_k, p.temperature, p.top_p, p.min_p, self._rng.random())
            # top-p / min-p alone: the nucleus by radix select, drawn in id order; -1 = too close to call
            full = softmax(logits, p.temperature)
            u = self._rng.random()
            token = sample_nucleus(full, p.top_p, p.min_p, u)
            if token >= 0:
                return token
            ids, probs = candidates(logits, p, (), self.exempt)
            order = np.argsort(ids)                   # the same id-order walk, on the reference's set
            cum = np.cumsum(probs[order], dtype=np.float64)
            i = int(np.searchsorted(cum, u * cum[-1], side="right"))
            return int(ids[order][min(i, len(ids) - 1)])
        ids, probs = candidates(logits, p, history, self.exempt, _sorted=False)
        if len(ids) == 1:
            return int(ids[0])
        cum = np.cumsum(probs, dtype=np.float64)
        i = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
        return int(ids[min(i, len(ids) - 1)])
