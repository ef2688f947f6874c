"""The Python face of the engine: `load` and `Model` (validation, the incremental API, fresh logits arrays).

    model = gpt2cy.load("124M", threads=2)
    model.logits(ids)            # float32 [len(ids), n_vocab], a fresh sequence
    model.prefill(ids)           # appends ids to the KV cache -> last position's logits [n_vocab]
    model.step(token)            # one more token -> [n_vocab]
    model.truncate(n)            # keep the first n cached positions (reuse a common prefix)
    model.reset()                # empty the cache

Several sequences at once: `load(..., n_slots=4)` gives four KV-cache slots; every call above takes slot=
(default 0), and `forward_batch([(slot, ids), ...])` runs a prefill chunk of one sequence and decode tokens
of others in one pass over the weights, each sequence's logits bit-identical to running it alone.

Every id, slot and position is checked here, before the compiled engine indexes an array.
"""
from __future__ import annotations

import mmap
import os
from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .config import Config
from .errors import CheckpointError, ContextLengthError, TokenizerError
from .ids import check_id, check_ids, is_int
from .notices import notice
from .tensors import EMBEDDING, MATMUL, tensor_specs
from .threads import ThreadGovernor, busy_cpus, check_threads, thread_setting


DTYPE_CHOICES = ("f32", "bf16", "q8_0", "q4_0")     # what load(..., dtype=) and Model(..., dtype=) accept


def check_dtype(dtype) -> str:
    """A valid weight dtype name (None means "f32"); ValueError listing the choices otherwise."""
    if dtype is None:
        return "f32"
    if not isinstance(dtype, str) or dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    return dtype


def engine_weights(config: Config, weights, dtype: str = "f32", threads: int = 1) -> dict:
    """The engine's description of `weights` (canonical name -> engine.weights.WeightTensor), with the four
    matmul weights of every block and wte in `dtype` (DTYPE_CHOICES); biases, layer norms and wpe
    are always f32.

    This is the one place where stored types change (`weights.dtypes`; a missing entry means f32): a tensor
    already stored in `dtype` is used where it lies; any other is widened to float32 (f16, bf16: exact) and,
    for bf16 and q8_0, converted by the compiled, parallel quantizers (`threads`). Widening a stored type to
    f32 for dtype "f32" gives a notice (it takes 4 bytes per weight). A misaligned f32 view (a tensor at an
    odd offset of a TF bundle) or a transposed one (a GGUF file's float matmul weights) is copied onto cache
    lines (engine/aligned.py), since the C kernels read aligned, C-contiguous [in, out] arrays. ggml blocks
    stored by a GGUF file (q8_0, q4_0, rows along the output dimension) are used where they lie when `dtype`
    is theirs, else dequantized first.
    Raises ValueError naming the tensor for anything else wrong."""
    from .engine import aligned
    from .engine.weights import convert, describe_all
    from .formats.dtypes import to_float32
    dtype = check_dtype(dtype)
    tensors = weights.tensors
    dtypes = getattr(weights, "dtypes", None) or {}
    arrays, kinds, widened = {}, {}, {}
    for spec in tensor_specs(config):
        a = tensors.get(spec.name)
        if a is None:
            continue                                   # describe_all names what is missing
        d = dtypes.get(spec.name, "f32")
        want = dtype if spec.role in (MATMUL, EMBEDDING) else "f32"
        if d in _BLOCK_STORED:
            wt = _stored_blocks(spec, a, d)
            if d == want:
                arrays[spec.name] = wt                 # the file's blocks, where they lie
                continue
            from .engine.weights import to_float32 as dequantize
            a, d = dequantize(wt).reshape(spec.shape), "f32"
            if want == "f32":
                widened[wt.dtype] = widened.get(wt.dtype, 0) + 1
        if d == want and (want == "f32" or want == "bf16" and isinstance(a, np.ndarray) and a.ndim == 2):
            if isinstance(a, np.ndarray):
                a = aligned.contiguous(a)              # a copy only where the kernels cannot read it
            arrays[spec.name], kinds[spec.name] = a, d
            continue
        if d != "f32":
            try:
                a = to_float32(a, d)
            except ValueError as e:
                raise ValueError(f"tensor '{spec.name}': {e}") from None
            if want == "f32":
                widened[d] = widened.get(d, 0) + 1
        if isinstance(a, np.ndarray):
            a = aligned.contiguous(a)
        if want == "f32":
            arrays[spec.name], kinds[spec.name] = np.ascontiguousarray(a), "f32"
        else:
            if not isinstance(a, np.ndarray) or a.shape != spec.shape:
                raise ValueError(f"tensor '{spec.name}' has shape {getattr(a, 'shape', None)}, expected "
                                 f"{spec.shape}")
            arrays[spec.name] = convert(spec.name, a, want, spec.role == MATMUL, threads)
            release_pages(a)
    if widened:
        what = ", ".join(f"{n} {d}" for d, n in sorted(widened.items()))
        notice(f"converted {what} tensor(s) to f32 (dtype f32), so they take 4 bytes per weight in memory; "
               f"load(..., dtype=\"bf16\") keeps bf16 weights as they are")
    return describe_all(config, arrays, kinds)


def release_pages(a) -> bool:
    """Drop the pages of `a`, a view of a file's read-only mapping (the checkpoint readers' tensors), from
    this process's resident memory: they stay in the page cache, and a later read faults them in again, so
    nothing is lost. Converting 1558M to q8_0 thus never holds the whole fp32 file resident at once (its
    peak would be the fp32 file plus the result). Anything else (heap memory, a copy) is left alone: False."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not (isinstance(base, mmap.mmap) and isinstance(a, np.ndarray) and not a.flags.writeable and a.nbytes
            and hasattr(mmap, "MADV_DONTNEED") and hasattr(base, "madvise")):
        return False
    try:
        start = np.frombuffer(base, np.uint8).ctypes.data
    except (ValueError, TypeError):                    # a closed mapping
        return False
    off, page = a.ctypes.data - start, mmap.PAGESIZE
    if not 0 <= off <= len(base) - a.nbytes:
        return False
    lo, hi = off // page * page, min(len(base), -(-(off + a.nbytes) // page) * page)
    try:
        base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except OSError:
        return False
    return True


_BLOCK_STORED = ("q8_0", "q4_0")       # ggml block types a reader may hand over (formats/gguf.py)


def _stored_blocks(spec, a, dtype):
    # a GGUF file's q8_0/q4_0 tensor as a WeightTensor: matmul weights [out, in] (transposed), wte [V, C]
    from dataclasses import replace
    from .engine.weights import OUT_IN, WeightTensor, describe
    transposed = spec.role == MATMUL
    shape = tuple(spec.shape[::-1]) if transposed else tuple(spec.shape)
    if len(shape) == 1:
        shape = (1, shape[0])
    if spec.role not in (MATMUL, EMBEDDING):           # only dequantized: no kernel reads it as blocks
        return WeightTensor(spec.name, dtype, shape, np.ascontiguousarray(a).reshape(shape[0], -1), None, OUT_IN)
    return replace(describe(spec.name, np.ascontiguousarray(a), dtype, OUT_IN, shape), transposed=transposed)


class Model:
    """GPT-2 with KV-cache slots. Build with `gpt2cy.load(...)`, or `Model(weights)` from
    `gpt2cy.formats.checkpoint.load_weights(dir)`, or `Model.from_tensors(config, tensors)`.

    config: the checkpoint's hparams (Config). n_ctx: the context in use per slot (config.n_ctx unless a
    smaller one was asked for). path: the model directory (None when built from tensors).
    threads: threads the kernels use (settable; None adapts them to the machine's load, see .threads). n_slots: sequences the KV cache holds at once; each call
    takes slot= (default 0). max_rows: rows one pass over the weights carries (longer inputs are split).
    n_past: positions held in slot 0's cache (past(slot) for any slot).
    """

    def __init__(self, weights, *, threads=None, path=None, n_ctx=None, n_slots=1, max_rows=None,
                 dtype="f32"):
        from .engine._forward import Engine
        self.config: Config = weights.config
        self.path = path if path is not None else getattr(weights, "path", None)
        self._weights = weights                    # owns the mapped file the engine points into
        self._tokenizer = None
        self._vocab = getattr(weights, "vocab", None)   # the tokenizer a GGUF file carries
        self.dtype = check_dtype(dtype)
        adaptive = threads is None and thread_setting()[1] == "cpus"   # nobody asked for a count
        threads = check_threads(threads)
        n_ctx = check_n_ctx(n_ctx, self.config.n_ctx)
        if not is_int(n_slots) or n_slots < 1:
            raise ValueError(f"n_slots must be a positive integer, got {n_slots!r}")
        if max_rows is not None and (not is_int(max_rows) or max_rows < 1):
            raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        where = f"{self.path}: " if self.path else ""
        try:
            described = engine_weights(self.config, weights, self.dtype, threads)
            if self.dtype != "f32":
                # the converted tensors are new arrays: keep no view of the checkpoint's float32 pages (the
                # small vectors are copied), so the mapping closes and its pages leave the resident set
                described = {n: (_own(wt) if wt.data.base is not None and wt.dtype == "f32" else wt)
                             for n, wt in described.items()}
                self._weights = SimpleNamespace(
                    config=self.config, path=self.path, dtypes={n: wt.dtype for n, wt in described.items()},
                    tensors={n: wt.data for n, wt in described.items()})
            self._engine = Engine(self.config, described, threads, n_ctx, int(n_slots),
                                  None if max_rows is None else int(max_rows))
            if adaptive and threads > 1:
                from .engine.adaptive import AdaptiveEngine
                self._engine = AdaptiveEngine(self._engine, ThreadGovernor(threads, busy=busy_cpus))
        except ValueError as e:
            raise CheckpointError(f"{where}{e}") from None
        self._described = described                # name -> WeightTensor, as the engine reads them
        del weights

    @classmethod
    def from_tensors(cls, config: Config, tensors: dict, threads=None, n_ctx=None, *, n_slots=1,
                     max_rows=None, dtypes=None, dtype="f32") -> "Model":
        """A model over in-memory tensors in canonical names (tests, conversions); dtypes: name -> "f32",
        "f16" or "bf16" for tensors not stored as float32 (missing: f32); dtype: the type the matmul
        weights and wte run in (DTYPE_CHOICES; converted here when stored otherwise)."""
        return cls(SimpleNamespace(config=config, tensors=tensors, dtypes=dict(dtypes or {})),
                   threads=threads, n_ctx=n_ctx, n_slots=n_slots, max_rows=max_rows, dtype=dtype)

    # ------------------------------------------------------------------------------------ properties

    @property
    def threads(self) -> int:
        """Threads the kernels use now; assign a positive integer to fix it. Unless a count was given (here,
        -t, $GPT2CY_NUM_THREADS or $OMP_NUM_THREADS), it adapts between 1 and the CPUs available to how fast
        the recent calls ran (gpt2cy.threads.ThreadGovernor), so a busy machine does not make it the slow
        case; the results are the same bits at any count."""
        return self._engine.threads

    @property
    def adaptive_threads(self) -> bool:
        """True while the thread count adapts (no count was given, none assigned since)."""
        return getattr(self._engine, "governor", None) is not None

    @threads.setter
    def threads(self, n) -> None:
        self._engine.threads = check_threads(n)

    @property
    def n_ctx(self) -> int:
        """Positions each slot's KV cache holds at most: the context in use (<= config.n_ctx)."""
        return self._engine.n_ctx

    @property
    def n_slots(self) -> int:
        """KV-cache slots: sequences held at once."""
        return self._engine.n_slots

    @property
    def max_rows(self) -> int:
        """Rows one pass over the weights carries (activation buffers); longer inputs are split."""
        return self._engine.max_rows

    @property
    def n_past(self) -> int:
        """Positions held in slot 0's KV cache (0 after reset); past(slot) for the others."""
        return self._engine.past(0)

    def past(self, slot: int = 0) -> int:
        """Positions held in `slot`'s KV cache."""
        return self._engine.past(self._slot(slot))

    def cache_version(self, slot: int = 0) -> int:
        """A number that changes on every change of `slot`'s cache (prefill, step, truncate, reset, logits,
        forward_batch), so a caller that remembers it can tell whether someone else used the slot since."""
        return self._engine.version(self._slot(slot))

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes allocated for the KV cache of every slot (pages count in RSS only once written)."""
        return self._engine.kv_cache_bytes

    @property
    def tokenizer(self):
        """The model's tokenizer (from encoder.json and vocab.bpe in its directory, or a GGUF file's own),
        loaded on first use."""
        if self._tokenizer is None:
            if self.path is None:
                raise TokenizerError("this model was built from tensors and has no directory to read "
                                     "its tokenizer from; use gpt2cy.get_tokenizer()")
            from .text.tokenizer import Tokenizer
            if self._vocab is not None:
                try:
                    self._tokenizer = Tokenizer(self._vocab.encoder, self._vocab.merges,
                                                name=self.config.name or "gpt2")
                except TokenizerError as e:
                    raise TokenizerError(f"{self._vocab.source}: {e}") from None
            elif os.path.isfile(self.path):
                raise TokenizerError(f"{self.path}: the file holds no tokenizer (tokenizer.ggml.tokens and "
                                     f"tokenizer.ggml.merges)")
            else:
                self._tokenizer = Tokenizer.from_dir(self.path)
        return self._tokenizer

    # ------------------------------------------------------------------------------------ forward

    def _slot(self, slot) -> int:
        if not is_int(slot) or not 0 <= slot < self._engine.n_slots:
            raise ValueError(f"slot must be an integer in [0, {self._engine.n_slots}), got {slot!r}")
        return int(slot)

    def _check_room(self, n_new: int, slot: int) -> None:
        n_ctx, n_past = self.n_ctx, self._engine.past(slot)
        if n_past + n_new > n_ctx:
            where = f" in slot {slot}" if self._engine.n_slots > 1 else ""
            raise ContextLengthError(
                f"{n_past} cached + {n_new} new tokens = {n_past + n_new} positions{where}, more than "
                f"the context of {n_ctx}; call reset() or use fewer tokens")

    def logits(self, ids, slot: int = 0) -> np.ndarray:
        """Logits float32 [len(ids), n_vocab] for ids as a fresh sequence (the slot's cache is reset first,
        and afterwards holds these ids)."""
        slot = self._slot(slot)
        arr = check_ids(ids, self.config.n_vocab)
        if len(arr) > self.n_ctx:
            raise ContextLengthError(f"{len(arr)} tokens are more than the context of {self.n_ctx}")
        self._engine.reset(slot)
        out = np.empty((len(arr), self.config.n_vocab), dtype=np.float32)
        step = self._engine.max_rows
        for i in range(0, len(arr), step):
            self._engine.forward(arr[i:i + step], out[i:i + step], True, slot)
        return out

    __call__ = logits

    def prefill(self, ids, slot: int = 0) -> np.ndarray:
        """Append ids to `slot`'s KV cache; return the last position's logits, float32 [n_vocab]."""
        slot = self._slot(slot)
        arr = check_ids(ids, self.config.n_vocab)
        self._check_room(len(arr), slot)
        if len(arr) > self._engine.max_rows:
            return self._batch([(slot, arr)])[0]
        out = np.empty((1, self.config.n_vocab), dtype=np.float32)
        self._engine.forward(arr, out, False, slot)
        return out[0]

    def step(self, token, slot: int = 0) -> np.ndarray:
        """Append one token to `slot`'s KV cache; return its logits, float32 [n_vocab]."""
        slot = self._slot(slot)
        token = check_id(token, self.config.n_vocab)
        self._check_room(1, slot)
        out = np.empty(self.config.n_vocab, dtype=np.float32)
        self._engine.step(token, out, slot)
        return out

    def forward_batch(self, requests: Sequence[Tuple[int, object]]) -> List[np.ndarray]:
        """Append ids to several slots in one pass over the weights; return each one's last-position logits.

        requests: [(slot, ids), ...], each slot at most once; ids as for prefill (a prompt chunk, or one
        token to decode: [token]). Returns a list of float32 [n_vocab] arrays in the order of requests.
        Each sequence's logits are bit-identical to running it alone (prefill or step), whatever else is
        in the batch and at any thread count. Rows beyond max_rows go in further passes. Everything is
        checked before anything runs: a bad slot, id or a request that does not fit its slot's context
        raises (ValueError, InvalidTokenError, ContextLengthError) and changes no cache.
        """
        checked = self._checked_requests(requests, "forward_batch")
        return self._batch(checked)

    def _checked_requests(self, requests, name: str) -> list:
        # [(slot, ids array)] from (slot, ids) pairs: every slot, id and fit checked before anything runs
        checked, seen = [], set()
        for item in requests:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"{name} takes (slot, ids) pairs, got {item!r}")
            slot = self._slot(item[0])
            if slot in seen:
                raise ValueError(f"slot {slot} appears twice in one batch; concatenate its ids instead")
            seen.add(slot)
            arr = check_ids(item[1], self.config.n_vocab)
            self._check_room(len(arr), slot)
            checked.append((slot, arr))
        return checked

    def _batch(self, requests) -> List[np.ndarray]:
        # pack the rows of validated (slot, ids) into engine calls of at most max_rows rows, in order; a
        # request's logits are taken (row by row) in the call that holds its last row
        eng, V, R = self._engine, self.config.n_vocab, self._engine.max_rows
        results: List[np.ndarray] = [None] * len(requests)
        calls, cur = [], []                           # cur: [(request index, slot, ids piece, pos0, last)]
        n_cur = 0
        for i, (slot, arr) in enumerate(requests):
            start, base = 0, eng.past(slot)
            while start < len(arr):
                if n_cur == R:
                    calls.append(cur)
                    cur, n_cur = [], 0
                take = min(R - n_cur, len(arr) - start)
                cur.append((i, slot, arr[start:start + take], base + start, start + take == len(arr)))
                n_cur += take
                start += take
        if cur:
            calls.append(cur)
        for pieces in calls:
            ids = np.concatenate([p[2] for p in pieces]).astype(np.intp, copy=False)
            slots = np.concatenate([np.full(len(p[2]), p[1], np.intp) for p in pieces])
            pos = np.concatenate([np.arange(p[3], p[3] + len(p[2]), dtype=np.intp) for p in pieces])
            ends = np.cumsum([len(p[2]) for p in pieces]) - 1
            want = [k for k, p in enumerate(pieces) if p[4]]
            rows = np.ascontiguousarray(ends[want], dtype=np.intp)
            out = np.empty((len(rows), V), dtype=np.float32)
            eng.forward_batch(ids, slots, pos, rows, out)
            for j, k in enumerate(want):
                results[pieces[k][0]] = out[j]
        return results

    # ------------------------------------------------------------------------------------ scoring

    def forward_rows(self, requests: Sequence[Tuple[int, object]],
                     rows: Optional[Sequence[Tuple[int, int]]] = None,
                     out: Optional[np.ndarray] = None) -> List[np.ndarray]:
        """forward_batch with many rows' logits: append ids to several slots in one pass over the weights
        and return float32 logits per request, in order, by the dense, tiled lm_head (as logits() uses).
        The scorer's prefill: several windows or texts, each in its own slot. rows: one (lo, hi) per
        request, the rows [lo, hi) of its ids whose logits are wanted ([hi - lo, n_vocab] comes back;
        the other rows cost no lm_head); None: every row. out: a float32 [>= the rows wanted, n_vocab]
        C-contiguous buffer to write the logits into (what comes back are views of it, valid until it is
        written again), so a scorer allocates one buffer for all its passes. Checked as forward_batch
        checks; rows beyond max_rows go in further passes."""
        checked = self._checked_requests(requests, "forward_rows")
        if rows is None:
            ranges = [(0, len(arr)) for _, arr in checked]
        else:
            ranges = list(rows)
            if len(ranges) != len(checked):
                raise ValueError(f"rows takes one (lo, hi) per request: {len(ranges)} for {len(checked)}")
            for (lo, hi), (_, arr) in zip(ranges, checked):
                if not (is_int(lo) and is_int(hi) and 0 <= lo <= hi <= len(arr)):
                    raise ValueError(f"rows ({lo!r}, {hi!r}) is not a range within the {len(arr)} ids")
        eng, V, R = self._engine, self.config.n_vocab, self._engine.max_rows
        total = sum(hi - lo for lo, hi in ranges)
        if out is None:
            out = np.empty((total, V), dtype=np.float32)
        elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 2
                  and out.flags.c_contiguous and out.flags.writeable and out.shape[1] == V
                  and out.shape[0] >= total):
            raise ValueError(f"out must be a writable C-contiguous float32 array of at least ({total}, {V})")
        filled = 0
        parts: List[list] = [[] for _ in checked]
        pending = [(i, slot, arr, 0) for i, (slot, arr) in enumerate(checked) if len(arr)]
        while pending:                      # one engine call per max_rows rows; a long request spans calls
            call, n_rows, rest = [], 0, []
            for i, slot, arr, start in pending:
                take = min(R - n_rows, len(arr) - start)
                if take > 0:
                    call.append((i, slot, arr[start:start + take], eng.past(slot), start))
                    n_rows += take
                if start + max(take, 0) < len(arr):
                    rest.append((i, slot, arr, start + max(take, 0)))
            ids = np.concatenate([c[2] for c in call]).astype(np.intp, copy=False)
            slots = np.concatenate([np.full(len(c[2]), c[1], np.intp) for c in call])
            pos = np.concatenate([np.arange(c[3], c[3] + len(c[2]), dtype=np.intp) for c in call])
            want, counts, at = [], [], 0
            for i, _, piece, _, start in call:       # this call's rows within each request's range
                lo, hi = max(ranges[i][0], start), min(ranges[i][1], start + len(piece))
                counts.append(max(0, hi - lo))
                want.extend(range(at + lo - start, at + hi - start))
                at += len(piece)
            # one row alone would take the matrix-vector kernel, whose bits differ from the tiles': a
            # neighbour goes with it (and is dropped), so a row's logits never depend on the batch beside it
            drop = None
            if len(want) == 1 and n_rows > 1:
                drop = 1 if want[0] == 0 else 0
                want = sorted(want + [want[0] - 1 + 2 * (drop == 1)])
            logit_rows = np.asarray([] if len(want) == n_rows else want, dtype=np.intp)
            dst = out[filled:filled + len(want)] if drop is None else np.empty((2, V), dtype=np.float32)
            eng.forward_batch(ids, slots, pos, logit_rows, dst, bool(want))
            if drop is not None:
                out[filled] = dst[1 - drop]
            at = filled
            for (i, *_), k in zip(call, counts):
                if k:
                    parts[i].append(out[at:at + k])
                    at += k
            filled = at
            pending = rest
        return [p[0] if len(p) == 1 else np.concatenate(p) if p else np.empty((0, V), np.float32)
                for p in parts]

    def score(self, text_or_ids, **kwargs):
        """Per-token log-probabilities of a text (or token ids), with a sliding window past the context:
        a gpt2cy.generation.scoring.Score (token_ids, logprobs, perplexity, ...). Keywords: n_ctx, stride,
        top_n, allowed_special; see gpt2cy.generation.scoring.score. Uses (and resets) the model's slots."""
        from .generation.scoring import score
        return score(self, text_or_ids, **kwargs)

    def score_batch(self, texts, **kwargs):
        """score() of each text (str or ids), their windows batched through the prefill: a list of Score."""
        from .generation.scoring import score_batch
        return score_batch(self, texts, **kwargs)

    def truncate(self, n, slot: int = 0) -> None:
        """Keep the first n cached positions of `slot` (0 <= n <= its n_past) and forget the rest, so a
        sequence that shares those n tokens prefills only what follows them."""
        slot = self._slot(slot)
        if not is_int(n):
            raise ValueError(f"truncate takes an integer, got {n!r}")
        n_past = self._engine.past(slot)
        if not 0 <= n <= n_past:
            raise ValueError(f"cannot truncate to {n} positions: the cache holds {n_past}")
        self._engine.truncate(int(n), slot)

    def reset(self, slot: int = 0) -> None:
        """Empty `slot`'s KV cache (its n_past becomes 0)."""
        self._engine.reset(self._slot(slot))

    def dequantized(self) -> dict:
        """The float32 values the engine multiplies by, in canonical names and shapes (matmul weights [in, out]
        whatever their storage): a new dict of arrays, for tests and the numpy reference."""
        from .engine.weights import to_float32
        return {name: to_float32(wt) for name, wt in self._described.items()}

    def generate(self, prompt, *args, **kwargs):
        """Generate text or tokens; see gpt2cy.generation.generate for the arguments. A list of prompts
        (str, token ids, or dicts with per-prompt settings) runs them together, one forward over all of
        them a step, and returns a list: see gpt2cy.generation.batch.generate_batch."""
        from .generation.batch import generate_batch, is_prompt_list
        if is_prompt_list(prompt):
            return generate_batch(self, prompt, *args, **kwargs)
        from .generation.loop import generate
        return generate(self, prompt, *args, **kwargs)

    def __repr__(self) -> str:
        c = self.config
        name = c.name or (os.path.basename(self.path) if self.path else "GPT-2")
        slots = f" n_slots={self.n_slots}" if self.n_slots > 1 else ""
        dt = f" dtype={self.dtype}" if self.dtype != "f32" else ""
        return (f"<gpt2cy.Model {name}: n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} "
                f"n_ctx={self.n_ctx} threads={self.threads} n_past={self.n_past}{slots}{dt}>")


def check_n_ctx(n_ctx, limit: int) -> int:
    """A valid context size: None means `limit` (the checkpoint's n_ctx); else an integer in [1, limit]."""
    if n_ctx is None:
        return limit
    if not is_int(n_ctx):
        raise ValueError(f"n_ctx must be an integer, got {n_ctx!r}")
    if not 1 <= n_ctx <= limit:
        raise ValueError(f"n_ctx must be between 1 and the model's {limit}, got {n_ctx}")
    return int(n_ctx)


def _own(wt):
    # an f32 WeightTensor over its own copy of the data (not a view of a mapped file)
    from dataclasses import replace
    from .engine import aligned
    return replace(wt, data=aligned.copy(wt.data))
