"""Turning a row of logits into the next token: logit bias, penalties, temperature, top-k, top-p, min-p.

Order. `logit_bias` (OpenAI's) is always added first. The stages then run in `SamplingParams.order`, by
default HF transformers' order: penalties, temperature, top_k, top_p, min_p (top-p and min-p cut the
*tempered* distribution). llama.cpp's default applies temperature last (`--samplers
"penalties;top_k;top_p;min_p;temperature"`): top-p and min-p then cut the untempered distribution, so the
same flags keep different sets at T != 1. A stage left out of `order` is not applied (as in llama.cpp).
Temperature 0 is greedy: the temperature stage keeps only the best token (in the default order: argmax
after the bias and penalties, the same choice as Carlini's C chat, carlini/c-chat-gpt-2).

Penalties. repetition_penalty (the CTRL rule, as HF and llama.cpp) sees the last repeat_last_n tokens of
the prompt and the generated text. presence_penalty and frequency_penalty follow OpenAI's formula,
logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty, where c[j] counts the times token j
was *sampled* in this generation (OpenAI counts sampled tokens; the prompt does not count, unlike
llama.cpp, which counts the last N tokens of everything).

Ties. Every cut ranks by value, then by id: among equal values the lower id is kept first, in the readable
`candidates()` and in the compiled paths alike. Tokens whose logit is -inf (masked by ignore_eos or a
caller) or NaN are never candidates; when nothing is left, a ValueError says so.
min_keep (Transformers' min_tokens_to_keep): top-k, top-p and min-p never keep fewer than that many.

`candidates()` is the readable numpy version of the rules. Sampler takes compiled paths in _sampling.pyx
for the default order instead: with top-k on (the default), one pass over the row with a k-entry heap,
then scalar work on the k survivors, ~12 us a token instead of ~70 us; with top-p (or min-p) alone,
softmax() (numpy's exp between two compiled passes) then a radix select for the nucleus (no sort of the
50257 probabilities), drawing in id order, ~65 us on a flat row (~30 us with min-p alone). Both are under
1% of a 124M decode step (bench/bench_generate.py measures it; tests check the compiled paths keep exactly
the reference's sets, and that the top-k path draws the same tokens). Any other order takes the readable
path, _ordered (numpy over the row; a sort of the vocabulary when top-p or min-p comes before top-k), and
so does min_keep > 1 without top-k.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._sampling import normalise, sample_nucleus, sample_top_k, shift_scale

STAGES = ("penalties", "temperature", "top_k", "top_p", "min_p")
DEFAULT_ORDER = STAGES                                  # HF transformers' order
LLAMA_CPP_ORDER = ("penalties", "top_k", "top_p", "min_p", "temperature")
# llama.cpp's other stage names: accepted in an order and skipped, as llama.cpp does with them at their
# defaults (DRY, top-n-sigma, typical-p and XTC are off unless configured; gpt2cy has none of them)
_LLAMA_CPP_ONLY = frozenset({"dry", "top_n_sigma", "typ_p", "xtc"})
_ALIASES = {"temp": "temperature", "typical_p": "typ_p", "typical": "typ_p", "top-k": "top_k",
            "top-p": "top_p", "min-p": "min_p", "nucleus": "top_p", "top-n-sigma": "top_n_sigma",
            "penalty": "penalties"}
MAX_LOGIT_BIAS = 100.0                                  # OpenAI's range: [-100, 100]
MAX_PENALTY = 2.0                                       # OpenAI's presence/frequency range: [-2, 2]

_NUMERIC = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "repeat_last_n",
            "presence_penalty", "frequency_penalty", "min_keep")
_INTEGER = ("top_k", "repeat_last_n", "min_keep")


def parse_order(spec: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A sampler order from llama.cpp's `--samplers` spelling ("penalties;top_k;top_p;min_p;temperature",
    also ',' separated) or a sequence of names. llama.cpp's dry, top_n_sigma, typ_p and xtc are accepted
    and dropped (off at their defaults there; gpt2cy has none). Raises ValueError on an unknown name,
    a repeated one or an empty order."""
    if isinstance(spec, str):
        names = [n for part in spec.split(";") for n in part.split(",")]
    elif isinstance(spec, (list, tuple)):
        names = list(spec)
    else:
        raise ValueError(f"the sampler order must be a string like \"top_k;top_p;temperature\" or a list of "
                         f"names, got {spec!r}")
    out: List[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise ValueError(f"sampler names must be strings, got {raw!r}")
        name = raw.strip().lower()
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name in _LLAMA_CPP_ONLY:
            continue
        if name not in STAGES:
            raise ValueError(f"unknown sampler {raw.strip()!r}: expected some of {', '.join(STAGES)} "
                             f"(separated by ';', as llama.cpp's --samplers)")
        if name in out:
            raise ValueError(f"sampler {name!r} is named twice in the order")
        out.append(name)
    if not names or not any(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("the sampler order is empty: name some of " + ", ".join(STAGES))
    return tuple(out)


def _logit_bias(value) -> Tuple[Tuple[int, float], ...]:
    """logit_bias as sorted (id, bias) pairs: from a mapping (int or digit-string keys, as OpenAI's JSON
    sends them) or pairs (what asdict and a JSON round trip give back)."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    out = {}
    try:
        pairs = list(items)
    except TypeError:
        raise ValueError(f"logit_bias must map token ids to biases, got {value!r}") from None
    for pair in pairs:
        try:
            key, bias = pair
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias must map token ids to biases, got the entry {pair!r}") from None
        if isinstance(key, str) and key.strip().lstrip("+").isdigit():
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {key!r}")
        if (isinstance(bias, bool) or not isinstance(bias, (int, float, np.number))
                or not math.isfinite(bias) or abs(bias) > MAX_LOGIT_BIAS):
            raise ValueError(f"logit_bias values must be numbers in [-100, 100], got {bias!r} for token {key}")
        out[int(key)] = float(bias)
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen.

    temperature: 0 = greedy argmax; higher flattens the distribution.
    top_k: keep the k most likely tokens (0 = off).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = off; 0 = only
        the most likely token, as Transformers and llama.cpp).
    min_p: drop tokens less likely than min_p times the most likely one (0 = off).
    repetition_penalty: divide positive (multiply negative) logits of recently seen tokens (1 = off).
    repeat_last_n: how many recent tokens (prompt included) repetition_penalty looks at (0 = none, -1 = all).
    presence_penalty, frequency_penalty: OpenAI's, in [-2, 2]: subtract presence_penalty from the logit of
        every token sampled so far in this generation, and frequency_penalty times its count (0 = off).
    logit_bias: {token id: bias in [-100, 100]} added to the logits before anything else (OpenAI's; keys
        may be digit strings, as in JSON). Stored as sorted (id, bias) pairs. -100 all but bans a token.
    min_keep: top-k, top-p and min-p never keep fewer tokens than this (Transformers' min_tokens_to_keep;
        0 behaves as 1).
    order: the stages in the order they apply (see parse_order for llama.cpp's `--samplers` spelling);
        default penalties, temperature, top_k, top_p, min_p.
    """
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Tuple[Tuple[int, float], ...] = ()
    min_keep: int = 1
    order: Tuple[str, ...] = DEFAULT_ORDER

    def __post_init__(self):
        def num(name, value, integer=False):
            ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
            if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
                kind = "an integer" if integer else "a finite number"
                raise ValueError(f"{name} must be {kind}, got {value!r}")
        for name in _NUMERIC:
            num(name, getattr(self, name), integer=name in _INTEGER)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1 (-1 = all), got {self.repeat_last_n}")
        for name in ("presence_penalty", "frequency_penalty"):
            if abs(getattr(self, name)) > MAX_PENALTY:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {self.min_keep}")
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        object.__setattr__(self, "order", DEFAULT_ORDER if self.order is None else parse_order(self.order))

    def check_vocab(self, n_vocab: int) -> None:
        """Raise ValueError when logit_bias names a token outside a vocabulary of n_vocab tokens (call it
        before generating, so the error comes before the first token)."""
        if self.logit_bias and self.logit_bias[-1][0] >= n_vocab:
            raise ValueError(f"logit_bias names token {self.logit_bias[-1][0]}, but the vocabulary has "
                             f"{n_vocab} tokens (ids 0..{n_vocab - 1})")

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


def apply_presence_frequency(logits: np.ndarray, generated: Sequence[int], presence: float, frequency: float,
                             exempt: FrozenSet[int] = frozenset()) -> np.ndarray:
    """OpenAI's penalties: logits[j] -= c[j] * frequency + (c[j] > 0) * presence, c[j] = how often token j
    is in `generated` (exempt tokens never count). Returns a new array when it changes anything."""
    if (presence == 0.0 and frequency == 0.0) or len(generated) == 0:
        return logits
    ids, counts = np.unique(np.asarray(generated, dtype=np.intp), return_counts=True)
    if exempt:
        keep = ~np.isin(ids, np.fromiter(exempt, dtype=np.intp, count=len(exempt)))
        ids, counts = ids[keep], counts[keep]
    out = logits.copy()
    out[ids] -= (counts * frequency + presence).astype(out.dtype)
    return out


def apply_logit_bias(logits: np.ndarray, bias: Sequence[Tuple[int, float]]) -> np.ndarray:
    """Add OpenAI's logit_bias ((id, bias) pairs, as SamplingParams stores them) to a copy of logits [V];
    an id outside the vocabulary is a ValueError."""
    if not bias:
        return logits
    ids = np.fromiter((i for i, _ in bias), dtype=np.intp, count=len(bias))
    if ids[-1] >= logits.shape[0]:                      # sorted: the last is the largest
        raise ValueError(f"logit_bias names token {int(ids[-1])}, but the vocabulary has {logits.shape[0]} "
                         f"tokens (ids 0..{logits.shape[0] - 1})")
    out = logits.copy()
    out[ids] += np.fromiter((b for _, b in bias), dtype=np.float64, count=len(bias)).astype(out.dtype)
    return out


def mask_tokens(logits: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """A copy of logits with these tokens at -inf, so they are never sampled (ignore_eos bans
    <|endoftext|> this way, as llama.cpp and Transformers do)."""
    out = np.array(logits, dtype=np.float32 if np.asarray(logits).dtype != np.float64 else np.float64)
    out[np.asarray(ids, dtype=np.intp)] = -np.inf
    return out


def _recent(history: Sequence[int], n: int, exempt: FrozenSet[int] = frozenset()) -> Sequence[int]:
    """The last n tokens of history (all when n < 0) that the repetition penalty applies to."""
    if n == 0 or len(history) == 0:
        return ()
    window = history if n < 0 else history[-n:]
    return [t for t in window if t not in exempt] if exempt else window


def _penalise(logits: np.ndarray, params: SamplingParams, history: Sequence[int], generated: Sequence[int],
              exempt: FrozenSet[int]) -> np.ndarray:
    """The penalties stage: repetition penalty (recent history), then presence and frequency (generated)."""
    logits = apply_repetition_penalty(logits, _recent(history, params.repeat_last_n, exempt),
                                      params.repetition_penalty)
    return apply_presence_frequency(logits, generated, params.presence_penalty, params.frequency_penalty, exempt)


def _prepare(logits, params: SamplingParams, history, generated, exempt) -> np.ndarray:
    """Checked 1-D logits with the bias added and, when penalties run first (the default order), the
    penalties applied."""
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
    logits = apply_logit_bias(logits, params.logit_bias)
    if params.order[:1] == ("penalties",):
        logits = _penalise(logits, params, history, generated, exempt)
    return logits


_NOTHING_LEFT = ("nothing can be sampled: every logit is -inf or NaN (masked by logit_bias, ignore_eos "
                 "or the caller)")


def _finite_pool(logits: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(logits with NaN as -inf, the ids that may be drawn or None for all of them)."""
    lo = logits.min()
    if lo > -np.inf:                                    # NaN compares False: checked below
        return logits, None
    if np.isnan(lo) or np.isnan(logits).any():
        logits = np.where(np.isnan(logits), -np.inf, logits).astype(logits.dtype)
    pool = np.flatnonzero(logits > -np.inf)
    if pool.size == 0:
        raise ValueError(_NOTHING_LEFT)
    return logits, (pool if pool.size < logits.shape[0] else None)


def _best_first(x: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The k best of ids by x[ids] (ties: lower id first), sorted best first. x: [V]; ids: ascending."""
    vals = x[ids]
    if k < len(ids):
        thr = np.partition(vals, len(ids) - k)[len(ids) - k]       # the k-th largest value
        above = np.flatnonzero(vals > thr)
        tied = np.flatnonzero(vals == thr)[:k - len(above)]        # ascending ids: the lowest win
        sel = np.concatenate([above, tied])
        ids, vals = ids[sel], vals[sel]
    return ids[np.lexsort((ids, -vals))]


def _floor(n: int, min_keep: int, avail: int) -> int:
    """A cut's length raised to min_keep (never past what is there)."""
    return max(n, min(min_keep, avail))


def _cut(logits: np.ndarray, p: SamplingParams, _sorted: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """The default order's temperature, top-k, top-p and min-p on prepared logits (see candidates)."""
    logits, pool = _finite_pool(logits)
    V = logits.shape[0]
    if p.temperature == 0:
        return np.array([int(np.argmax(logits))], dtype=np.intp), np.ones(1)
    mk = max(1, p.min_keep)
    k = max(p.top_k, mk) if p.top_k > 0 else 0
    k = k if k < V else 0
    if k:
        ids = _best_first(logits, pool if pool is not None else np.arange(V), k)
        scaled = logits[ids].astype(np.float64) / p.temperature
        probs = np.exp(scaled - scaled[0])
        probs /= probs.sum()
    else:
        full = softmax(logits, p.temperature)
        ids = pool if pool is not None else np.arange(V)
        if p.top_p >= 1.0 and p.min_p == 0.0 and not _sorted:
            return ids, full[ids].astype(np.float64)      # nothing to cut: skip sorting 50257 values
        if p.top_p >= 1.0 and p.min_p > 0.0:             # a float64 floor, as the final cut below
            pre = ids[full[ids] >= np.float64(p.min_p) * np.float64(full.max())]
            if len(pre) >= mk:
                ids = pre
        ids = ids[np.argsort(-full[ids], kind="stable")]  # best first; ties: lower id first
        probs = full[ids].astype(np.float64)
    if p.top_p < 1.0:
        cum = np.cumsum(probs)
        # probs are full-vocabulary (or within-top-k) probabilities, so the cut is at top_p itself
        n = _floor(int(np.searchsorted(cum, p.top_p, side="left")) + 1, mk, len(ids))
        ids, probs = ids[:n], probs[:n]
    if p.min_p > 0.0:
        n = _floor(int(np.count_nonzero(probs >= p.min_p * probs[0])), mk, len(ids))   # probs fall: a prefix
        ids, probs = ids[:n], probs[:n]
    return ids, probs / probs.sum()


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _ordered(logits: np.ndarray, p: SamplingParams, history, generated, exempt) -> Tuple[np.ndarray, np.ndarray]:
    """Any order: the stages one after another on float64 logits over the surviving ids (best first)."""
    logits, pool = _finite_pool(logits)
    row = logits.astype(np.float64)
    ids = pool if pool is not None else np.arange(row.shape[0])
    mk = max(1, p.min_keep)
    ranked = False                                      # ids sorted best first (ties: lower id first)

    def rank(ids):
        ids = np.sort(ids)
        return ids[np.argsort(-row[ids], kind="stable")]

    for i, stage in enumerate(p.order):
        if stage == "penalties":
            if i > 0:                                   # first: _prepare applied them already
                row = _penalise(row, p, history, generated, exempt)
                ranked = False
        elif stage == "temperature":
            if p.temperature == 0:                      # greedy: the best survivor alone
                ids, ranked = _best_first(row, np.sort(ids), 1), True
            else:
                row = row / p.temperature               # a positive scale keeps the ranking
        elif stage == "top_k":
            if p.top_k > 0:
                k = max(p.top_k, mk)
                ids = ids[:k] if ranked else _best_first(row, np.sort(ids), k)
                ranked = True
        elif stage == "top_p":
            if p.top_p < 1.0:
                ids = ids if ranked else rank(ids)
                ranked = True
                cum = np.cumsum(_softmax64(row[ids]))
                ids = ids[:_floor(int(np.searchsorted(cum, p.top_p, side="left")) + 1, mk, len(ids))]
        elif stage == "min_p":
            if p.min_p > 0.0:
                probs = _softmax64(row[ids])
                keep = probs >= p.min_p * probs.max()
                n = int(np.count_nonzero(keep))
                if ranked:                              # probs fall along ids: keep is a prefix
                    ids = ids[:_floor(n, mk, len(ids))]
                elif n >= mk:
                    ids = ids[keep]
                else:
                    ids, ranked = rank(ids)[:min(mk, len(ids))], True
    ids = ids if ranked else rank(ids)
    return ids, _softmax64(row[ids])


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
               exempt: FrozenSet[int] = frozenset(), _sorted: bool = True,
               generated: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """The tokens that may be drawn and their probabilities, most likely first (ties: lower id first).

    logits: [V] float.  Returns (ids [n] intp, probs [n] float64 summing to 1).
    With temperature 0 the single argmax token is returned with probability 1.
    history: the tokens so far (prompt and generated), for repetition_penalty; generated: the tokens
    sampled in this generation, for presence_penalty and frequency_penalty.
    exempt: tokens the penalties never touch (e.g. the newline that ends every chat turn).
    Raises ValueError when every token is masked (-inf or NaN).
    """
    prepared = _prepare(logits, params, history, generated, exempt)
    if params.order == DEFAULT_ORDER:
        return _cut(prepared, params, _sorted)
    return _ordered(prepared, params, history, generated, exempt)


class Sampler:
    """Chooses tokens from logits with fixed parameters and its own seeded random stream.

    The same seed, parameters and logits give the same tokens, call after call. Each token drawn at a
    temperature above 0 takes one number from the stream; greedy takes none.
    presence_penalty and frequency_penalty count the tokens this Sampler drew in the current generation:
    a call whose history is the previous call's history plus the token it returned continues the
    generation; any other history starts a new one (so one Sampler serves one generation at a time).
    """

    def __init__(self, params: Optional[SamplingParams] = None, seed: Optional[int] = None,
                 exempt: Iterable[int] = ()):
        self.params = params if params is not None else SamplingParams()
        self.exempt = frozenset(int(t) for t in exempt)   # never penalised (llama.cpp's penalize_nl=false)
        self._generated: List[int] = []
        self._seen = -1                                   # len(history) at the last call
        self._last = -1                                   # the token it returned
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

    def _track(self, history: Sequence[int]) -> List[int]:
        """The tokens drawn so far in this generation (see the class docstring)."""
        n = len(history)
        if n == self._seen + 1 and n > 0 and history[-1] == self._last:
            self._generated.append(self._last)
        else:
            self._generated = []
        self._seen = n
        return self._generated

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """Pick the next token. logits: [V]; history: the tokens so far (prompt and generated)."""
        generated = self._track(history)
        token = self._pick(logits, history, generated)
        self._last = token
        return token

    def _pick(self, logits, history, generated) -> int:
        p = self.params
        logits = _prepare(logits, p, history, generated, self.exempt)
        if p.order != DEFAULT_ORDER:                      # the readable path (see the module docstring)
            ids, probs = _ordered(logits, p, history, generated, self.exempt)
            if p.temperature == 0 and "temperature" in p.order:
                return int(ids[0])
            return self._draw(ids, probs)
        if p.temperature == 0:
            token = int(np.argmax(logits))
            if not logits[token] > -np.inf:               # NaN or -inf won: look closer (or fail clearly)
                token = int(_cut(logits, p)[0][0])
            return token
        V = logits.shape[0]
        mk = max(1, p.min_keep)
        k = max(p.top_k, mk) if p.top_k > 0 else 0
        if 0 < k < V:
            # the hot path (defaults): one C pass, same rules as candidates(); see _sampling.pyx
            if logits.dtype != np.float32 or not logits.flags.c_contiguous:
                logits = np.ascontiguousarray(logits, dtype=np.float32)
            return sample_top_k(logits, k, p.temperature, p.top_p, p.min_p, self._rng.random(), mk)
        if p.top_p == 0 and mk == 1:                      # the single most likely token, as the reference
            full = softmax(_finite_pool(logits)[0], p.temperature)   # ranks it (ties: the lowest id)
            self._rng.random()                            # one number a token, as every path at T > 0
            return int(np.argmax(full))
        if mk > 1:                                        # a floor the radix select does not keep
            ids, probs = _cut(logits, p)
            return self._draw(ids, probs)
        # top-p / min-p alone: the nucleus by radix select, drawn in id order; -1 = too close to call
        full = softmax(logits, p.temperature)
        u = self._rng.random()
        token = sample_nucleus(full, p.top_p, p.min_p, u)
        if token >= 0:
            return token
        ids, probs = _cut(logits, p)
        order = np.argsort(ids)                           # the same id-order walk, on the reference's set
        cum = np.cumsum(probs[order], dtype=np.float64)
        i = int(np.searchsorted(cum, u * cum[-1], side="right"))
        return int(ids[order][min(i, len(ids) - 1)])

    def _draw(self, ids: np.ndarray, probs: np.ndarray) -> int:
        """One inverse-CDF draw over ids (best first)."""
        cum = np.cumsum(probs, dtype=np.float64)
        i = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
        return int(ids[min(i, len(ids) - 1)])
