"""`load`: a name or a directory -> a ready Model. The one place that composes the layers: the hub turns a
name into a directory (downloading it when allowed), the formats read it, model.py builds the engine.

    model = gpt2cy.load("124M", threads=2, dtype="q8_0")
"""
from __future__ import annotations

import os

from .config import PUBLISHED
from .formats.checkpoint import load_weights
from .formats.layout import GGUF
from .hub.models import get_tokenizer, gguf_file_path, resolve_model
from .ids import is_int
from .model import Model, check_dtype
from .threads import check_threads


def resolve(path_or_name, download=True, offline=None, verify=True) -> str:
    """The path `load` reads for a name, a model directory or a GGUF file (a file is taken as it is; a name
    or directory goes through gpt2cy.hub.resolve_model, which may download, and verifies a cached model not
    yet verified unless `verify` is False)."""
    path = gguf_file_path(path_or_name)
    if path is not None:
        return path
    return resolve_model(path_or_name, download=download, offline=offline, verify=verify)


def load_tokenizer(path_or_name, download=True, offline=None):
    """The tokenizer of the model `load` would read for `path_or_name`: gpt2cy.get_tokenizer's (a GGUF file's
    own, from its metadata; for a name or directory only the vocabulary files, downloaded when missing, never
    the weights). Raises ModelNotFound, CheckpointError (a damaged GGUF file) or TokenizerError."""
    return get_tokenizer(path_or_name, download=download, offline=offline)


def default_dtype(weights) -> str:
    """The dtype a model runs in when none is asked for: a GGUF file's own (its matmul weights' type, f16
    widened to f32), else f32."""
    if getattr(weights, "format", None) == GGUF:
        from .formats.gguf import run_dtype
        return check_dtype(run_dtype(weights))
    return "f32"


def load(path_or_name, threads=None, download=True, offline=None, n_ctx=None, n_slots=1, dtype=None,
         max_rows=None) -> Model:
    """Load GPT-2 from a model directory (OpenAI's or HuggingFace's files), a GGUF file (llama.cpp's, or
    `gpt2cy convert`'s) or a name ("124M", "gpt2-xl", ...).

    threads: kernel threads (default: GPT2CY_NUM_THREADS, else OMP_NUM_THREADS, else between 1 and the CPUs
    available, adapted to the machine's load: Model.threads).
    download/offline: passed to gpt2cy.hub.resolve_model. n_ctx: the context to allocate the KV cache for (default and maximum: the
    checkpoint's, 1024; smaller bounds memory: 1558M's KV cache is 600 MiB at 1024, 150 MiB at 256), per slot.
    n_slots: sequences the KV cache holds at once (Model.forward_batch runs them in one pass).
    max_rows: rows one pass over the weights carries (default n_ctx); scoring packs many windows into one.
    dtype: what the four matmul weights of every block and wte are held and multiplied in: "f32" (the default,
    except for a GGUF file: its own type, its blocks used where they lie; f16 is widened to f32),
    "bf16" (half the bytes; round to nearest even) or "q8_0" (ggml's 8-bit blocks: 34 bytes per 32 weights,
    about 27% of f32). Converted at load, compiled and in parallel; the float32 file pages are not kept.
    Biases, layer norms, wpe, activations and the KV cache stay f32.
    Raises CheckpointError for bad files, ModelNotFound for unknown names, ValueError for a bad n_ctx or dtype.
    """
    if threads is not None:                  # None: Model adapts the count to the machine's load
        threads = check_threads(threads)
    if dtype is not None:
        dtype = check_dtype(dtype)
    if n_ctx is not None and (not is_int(n_ctx) or n_ctx < 1):   # fails before any download; the upper
        # limit is the checkpoint's n_ctx, checked by Model once the files are read
        raise ValueError(f"n_ctx must be a positive integer (at most the model's context: "
                         f"{PUBLISHED['124M'].n_ctx} for the published sizes), got {n_ctx!r}")
    if not is_int(n_slots) or n_slots < 1:
        raise ValueError(f"n_slots must be a positive integer, got {n_slots!r}")
    path = resolve(path_or_name, download=download, offline=offline)
    weights = load_weights(path)
    return Model(weights, threads=threads, path=path, n_ctx=n_ctx, n_slots=n_slots,
                 dtype=default_dtype(weights) if dtype is None else dtype, max_rows=max_rows)


def export_gguf(path_or_name, output, dtype=None, threads=None, download=True, offline=None, name=None) -> dict:
    """Write a model (a name, a model directory or a GGUF file) as a GGUF v3 file llama.cpp and ollama run:
    GPT-2's architecture and tokenizer metadata as llama.cpp's converter writes them, and the weights in
    `dtype` (f32, bf16, q8_0, q4_0; default: as `load` would run them), converted by the same compiled
    quantizers as `load(..., dtype=)`, so the file's bytes are the ones gpt2cy multiplies by.
    Returns {"path", "dtype", "tensors", "bytes"}. Raises as `load` does."""
    from .engine.weights import IN_OUT
    from .formats.gguf import gguf_names, gguf_ne
    from .formats.gguf_write import GGUFTensor, gpt2_metadata, write_gguf
    from .model import engine_weights
    from .tensors import tensor_specs
    threads = check_threads(threads)
    if dtype is not None:
        dtype = check_dtype(dtype)
    path = resolve(path_or_name, download=download, offline=offline)
    if os.path.exists(output) and os.path.samefile(path, output):
        raise ValueError(f"{output}: the output would overwrite the model it is converted from")
    weights = load_weights(path)
    dtype = default_dtype(weights) if dtype is None else dtype
    config = weights.config
    try:
        described = engine_weights(config, weights, dtype, threads)
    except ValueError as e:
        from .errors import CheckpointError
        raise CheckpointError(f"{path}: {e}") from None
    encoder, merges = _vocabulary(path, weights)
    names = gguf_names(config)
    tensors = []
    for spec in tensor_specs(config):
        wt = described[spec.name]
        data = wt.data.reshape(wt.shape) if wt.dtype in ("f32", "bf16") else wt.data
        if wt.layout == IN_OUT and data.ndim == 2:
            data = data.T                             # OpenAI's [in, out] -> ggml's [out, in] (ne = [in, out])
        tensors.append(GGUFTensor(names[spec.name], wt.dtype, gguf_ne(spec.name, spec.shape, spec.role), data))
    label = name or _source_name(path, weights) or "GPT-2"
    size = write_gguf(output, gpt2_metadata(config, dtype, encoder, merges, label), tensors)
    return {"path": os.fspath(output), "dtype": dtype, "tensors": len(tensors), "bytes": size}


def _source_name(path: str, weights) -> str:
    """general.name of a GGUF source, else the model's name (its directory's)."""
    if getattr(weights, "format", None) == GGUF:
        from .formats.gguf import STRING, GGUFFile
        v = GGUFFile(path).metadata.get("general.name")
        return v.value if v is not None and v.type == STRING else ""
    return weights.config.name


def _vocabulary(path: str, weights):
    """(encoder, merges) of a model: a GGUF file's own, else its directory's vocabulary files (checked)."""
    if getattr(weights, "vocab", None) is not None:
        return weights.vocab.encoder, weights.vocab.merges
    from .errors import TokenizerError
    from .formats.layout import find_vocab
    from .text.tokenizer import load_encoder, load_merges
    found = find_vocab(path) if os.path.isdir(path) else None
    if found is None:
        raise TokenizerError(f"{path}: no vocabulary files (encoder.json + vocab.bpe, or vocab.json + "
                             f"merges.txt) to write into the GGUF file")
    encoder = load_encoder(found[0])
    return encoder, load_merges(found[1], encoder)
