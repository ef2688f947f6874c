"""`load`: a name or a directory -> a ready Model. The one place that composes the layers: the hub turns a
name into a directory (downloading it when allowed), the formats read it, model.py builds the engine.

    model = gpt2cy.load("124M", threads=2, dtype="q8_0")
"""
from __future__ import annotations

from .config import PUBLISHED
from .formats.checkpoint import load_weights
from .hub.models import resolve_model
from .ids import is_int
from .model import Model, check_dtype
from .threads import check_threads


def load(path_or_name, threads=None, download=True, offline=None, n_ctx=None, n_slots=1, dtype="f32") -> Model:
    """Load GPT-2 from a model directory (OpenAI's or HuggingFace's files) or a name ("124M", "gpt2-xl", ...).

    threads: kernel threads (default: GPT2CY_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs available).
    download/offline: passed to gpt2cy.hub.resolve_model. n_ctx: the context to allocate the KV cache for (default and maximum: the
    checkpoint's, 1024; smaller bounds memory: 1558M's KV cache is 600 MiB at 1024, 150 MiB at 256), per slot.
    n_slots: sequences the KV cache holds at once (Model.forward_batch runs them in one pass).
    dtype: what the four matmul weights of every block and wte are held and multiplied in: "f32" (default),
    "bf16" (half the bytes; round to nearest even) or "q8_0" (ggml's 8-bit blocks: 34 bytes per 32 weights,
    about 27% of f32). Converted at load, compiled and in parallel; the float32 file pages are not kept.
    Biases, layer norms, wpe, activations and the KV cache stay f32.
    Raises CheckpointError for bad files, ModelNotFound for unknown names, ValueError for a bad n_ctx or dtype.
    """
    threads = check_threads(threads)
    dtype = check_dtype(dtype)
    if n_ctx is not None and (not is_int(n_ctx) or n_ctx < 1):   # fails before any download; the upper
        # limit is the checkpoint's n_ctx, checked by Model once the files are read
        raise ValueError(f"n_ctx must be a positive integer (at most the model's context: "
                         f"{PUBLISHED['124M'].n_ctx} for the published sizes), got {n_ctx!r}")
    if not is_int(n_slots) or n_slots < 1:
        raise ValueError(f"n_slots must be a positive integer, got {n_slots!r}")
    path = resolve_model(path_or_name, download=download, offline=offline)
    return Model(load_weights(path), threads=threads, path=path, n_ctx=n_ctx, n_slots=n_slots, dtype=dtype)
