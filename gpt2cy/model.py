"""The Python face of the engine: `load` and `Model` (validation, the incremental API, fresh logits arrays).

    model = gpt2cy.load("124M", threads=2)
    model.logits(ids)            # float32 [len(ids), n_vocab], a fresh sequence
    model.prefill(ids)           # appends ids to the KV cache -> last position's logits [n_vocab]
    model.step(token)            # one more token -> [n_vocab]
    model.truncate(n)            # keep the first n cached positions (reuse a common prefix)
    model.reset()                # empty the cache

Every id and position is checked here, before the compiled engine indexes an array.
"""
from __future__ import annotations

import numbers
import os
import sys
from types import SimpleNamespace

import numpy as np

from .hub import models as hub
from .config import Config
from .errors import CheckpointError, ContextLengthError, InvalidTokenError, TokenizerError
from .threads import check_threads



def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _as_ids(ids, n_vocab: int) -> np.ndarray:
    """Validated token ids as a contiguous intp array (raises InvalidTokenError, ValueError)."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidTokenError(f"token ids must be a 1-D sequence, got an array of shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise InvalidTokenError(f"token ids must be integers, got an array of dtype {ids.dtype}")
        arr = ids
    elif isinstance(ids, (list, tuple, range)):
        for v in ids:
            if not _is_int(v):
                raise InvalidTokenError(f"token ids must be integers, got {v!r}")
        try:
            arr = np.array(ids, dtype=np.int64)
        except OverflowError:
            raise InvalidTokenError(f"a token id is outside the vocabulary [0, {n_vocab})") from None
    else:
        raise InvalidTokenError(f"token ids must be a list, tuple or 1-D integer array, "
                                f"got {type(ids).__name__}")
    if arr.size == 0:
        raise ValueError("no token ids given")
    bad = (arr < 0) | (arr >= n_vocab)
    if bad.any():
        raise InvalidTokenError(f"token id {arr[np.argmax(bad)]} (at index {int(np.argmax(bad))}) is "
                                f"outside the vocabulary [0, {n_vocab})")
    return np.ascontiguousarray(arr, dtype=np.intp)


class Model:
    """GPT-2 with a KV cache. Build with `gpt2cy.load(...)`, or `Model(weights)` from
    `gpt2cy.checkpoint.load_weights(dir)`, or `Model.from_tensors(config, tensors)`.

    config: the checkpoint's hparams (Config). n_ctx: the context in use (config.n_ctx unless a smaller
    one was asked for). path: the model directory (None when built from tensors).
    threads: threads the kernels use (settable). n_past: positions held in the KV cache.
    """

    def __init__(self, weights, *, threads=None, path=None, n_ctx=None):
        from .engine._forward import Engine
        self.config: Config = weights.config
        self.path = path if path is not None else getattr(weights, "path", None)
        self._weights = weights                    # owns the mapped file the engine points into
        self._tokenizer = None
        threads = check_threads(threads)
        n_ctx = check_n_ctx(n_ctx, self.config.n_ctx)
        try:
            self._engine = Engine(self.config, dict(weights.tensors), threads, n_ctx)
        except ValueError as e:
            where = f"{self.path}: " if self.path else ""
            raise CheckpointError(f"{where}{e}") from None

    @classmethod
    def from_tensors(cls, config: Config, tensors: dict, threads=None, n_ctx=None) -> "Model":
        """A model over in-memory float32 tensors in canonical names (tests, conversions)."""
        return cls(SimpleNamespace(config=config, tensors=tensors), threads=threads, n_ctx=n_ctx)

    # ------------------------------------------------------------------------------------ properties

    @property
    def threads(self) -> int:
        """Threads the kernels use; assign a positive integer to change it."""
        return self._engine.threads

    @threads.setter
    def threads(self, n) -> None:
        self._engine.threads = check_threads(n)

    @property
    def n_ctx(self) -> int:
        """Positions the KV cache holds at most: the context in use (<= config.n_ctx)."""
        return self._engine.n_ctx

    @property
    def n_past(self) -> int:
        """Positions held in the KV cache (0 after reset)."""
        return self._engine.n_past

    @property
    def tokenizer(self):
        """The model's tokenizer (from encoder.json and vocab.bpe in its directory), loaded on first use."""
        if self._tokenizer is None:
            if self.path is None:
                raise TokenizerError("this model was built from tensors and has no directory to read "
                                     "its tokenizer from; use gpt2cy.get_tokenizer()")
            from .text.tokenizer import Tokenizer
            self._tokenizer = Tokenizer.from_dir(self.path)
        return self._tokenizer

    # ------------------------------------------------------------------------------------ forward

    def _check_room(self, n_new: int) -> None:
        n_ctx = self.n_ctx
        if self.n_past + n_new > n_ctx:
            raise ContextLengthError(
                f"{self.n_past} cached + {n_new} new tokens = {self.n_past + n_new} positions, more than "
                f"the context of {n_ctx}; call reset() or use fewer tokens")

    def logits(self, ids) -> np.ndarray:
        """Logits float32 [len(ids), n_vocab] for ids as a fresh sequence (the KV cache is reset first,
        and afterwards holds these ids)."""
        arr = _as_ids(ids, self.config.n_vocab)
        if len(arr) > self.n_ctx:
            raise ContextLengthError(f"{len(arr)} tokens are more than the context of {self.n_ctx}")
        self._engine.reset()
        out = np.empty((len(arr), self.config.n_vocab), dtype=np.float32)
        self._engine.forward(arr, out, True)
        return out

    __call__ = logits

    def prefill(self, ids) -> np.ndarray:
        """Append ids to the KV cache; return the last position's logits, float32 [n_vocab]."""
        arr = _as_ids(ids, self.config.n_vocab)
        self._check_room(len(arr))
        out = np.empty((1, self.config.n_vocab), dtype=np.float32)
        self._engine.forward(arr, out, False)
        return out[0]

    def step(self, token) -> np.ndarray:
        """Append one token to the KV cache; return its logits, float32 [n_vocab]."""
        if not _is_int(token):
            raise InvalidTokenError(f"a token id must be an integer, got {token!r}")
        if not 0 <= token < self.config.n_vocab:
            raise InvalidTokenError(f"token id {token} is outside the vocabulary [0, {self.config.n_vocab})")
        self._check_room(1)
        out = np.empty(self.config.n_vocab, dtype=np.float32)
        self._engine.step(token, out)
        return out

    def truncate(self, n) -> None:
        """Keep the first n cached positions (0 <= n <= n_past) and forget the rest, so a sequence that
        shares those n tokens prefills only what follows them."""
        if not _is_int(n):
            raise ValueError(f"truncate takes an integer, got {n!r}")
        if not 0 <= n <= self.n_past:
            raise ValueError(f"cannot truncate to {n} positions: the cache holds {self.n_past}")
        self._engine.truncate(int(n))

    def reset(self) -> None:
        """Empty the KV cache (n_past becomes 0)."""
        self._engine.reset()

    def generate(self, *args, **kwargs):
        """Generate text or tokens; see gpt2cy.generation.generate for the arguments."""
        from .generation.loop import generate
        return generate(self, *args, **kwargs)

    def __repr__(self) -> str:
        c = self.config
        name = c.name or (os.path.basename(self.path) if self.path else "GPT-2")
        return (f"<gpt2cy.Model {name}: n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} "
                f"n_ctx={self.n_ctx} threads={self.threads} n_past={self.n_past}>")


def check_n_ctx(n_ctx, limit: int) -> int:
    """A valid context size: None means `limit` (the checkpoint's n_ctx); else an integer in [1, limit]."""
    if n_ctx is None:
        return limit
    if not _is_int(n_ctx):
        raise ValueError(f"n_ctx must be an integer, got {n_ctx!r}")
    if not 1 <= n_ctx <= limit:
        raise ValueError(f"n_ctx must be between 1 and the model's {limit}, got {n_ctx}")
    return int(n_ctx)


def load(path_or_name, threads=None, download=True, offline=None, n_ctx=None) -> Model:
    """Load GPT-2 from a model directory (OpenAI's or HuggingFace's files) or a name ("124M", "gpt2-xl", ...).

    threads: kernel threads (default: OMP_NUM_THREADS, else the CPUs available). download/offline: passed to
    gpt2cy.hub.resolve_model. n_ctx: the context to allocate the KV cache for (default and maximum: the
    checkpoint's, 1024; smaller bounds memory: 1558M's KV cache is 600 MiB at 1024, 150 MiB at 256).
    Raises CheckpointError for bad files, ModelNotFound for unknown names, ValueError for a bad n_ctx.
    """
    from .formats.checkpoint import load_weights
    threads = check_threads(threads)
    if n_ctx is not None:
        check_n_ctx(n_ctx, sys.maxsize)             # a bad type or sign fails before any download
    path = hub.resolve_model(path_or_name, download=download, offline=offline)
    return Model(load_weights(path), threads=threads, path=path, n_ctx=n_ctx)
