"""Write GGUF v3 files (the format formats/gguf.py reads), and GPT-2's metadata as llama.cpp's converter
writes it, so llama.cpp and ollama run the file.

    write_gguf(path, metadata, tensors)            # any GGUF: [(key, type code, value)], [GGUFTensor]
    gpt2_metadata(config, "q8_0", encoder, merges) # GPT-2's keys, in convert_hf_to_gguf.py's order and types

Tensors are written in the order given, each at an offset aligned to 32 bytes (GGUF's default, which the
converter uses), from numpy arrays in ggml's orientation (numpy shape = ne reversed); a non-contiguous view
(a transposed matmul weight) is written in C order, a slab at a time, so no full copy is made. The file is
written next to its final name and renamed into place, so a failure never leaves a half-written FILE.gguf.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from ..config import Config
from .gguf import (ARRAY, ARCH, BOOL, DEFAULT_ALIGNMENT, FILE_TYPES, FLOAT32, FLOAT64, GGML_BY_NAME, INT8, INT16,
                   INT32, INT64, MAGIC, STRING, UINT8, UINT16, UINT32, UINT64, VALUE_TYPES)

VERSION = 3
SLAB = 16 << 20                  # bytes per write of a tensor's data
_NUMPY_VALUE = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
                FLOAT32: "<f4", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8", BOOL: "<u1"}

# llama.cpp's token types (llama_token_type / gguf-py's TokenType)
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3
QUANTIZATION_VERSION = 2         # ggml's GGML_QNT_VERSION: the block layouts of q4_0/q8_0 since 2023


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor to write: its name, ggml type name ("f32", "bf16", "q8_0", ...), ne (ne0 first) and data: a
    numpy array whose bytes in C order are the tensor's (numpy shape: ne reversed, block types as uint8 rows)."""
    name: str
    type: str
    ne: Tuple[int, ...]
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        t = GGML_BY_NAME[self.type]
        n = 1
        for d in self.ne:
            n *= d
        return n // t.block * t.type_size


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: int, value: Any, elem_type: int | None = None) -> bytes:
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        if elem_type is None:
            raise ValueError("an array value needs its element type")
        head = struct.pack("<IQ", elem_type, len(value))
        if elem_type == STRING:
            return head + b"".join(_string(s) for s in value)
        if elem_type == ARRAY:
            raise ValueError("nested arrays are not written (llama.cpp does not read them)")
        return head + np.asarray(value, dtype=_NUMPY_VALUE[elem_type]).tobytes()
    if vtype not in VALUE_TYPES:
        raise ValueError(f"unknown GGUF value type {vtype}")
    if vtype == BOOL:
        return struct.pack("<B", 1 if value else 0)
    return struct.pack(VALUE_TYPES[vtype][1], value)


def _check_tensor(t: GGUFTensor) -> None:
    if t.type not in GGML_BY_NAME:
        raise ValueError(f"tensor '{t.name}': unknown ggml type {t.type!r}")
    want = t.nbytes
    if t.data.nbytes != want:
        raise ValueError(f"tensor '{t.name}': {t.data.nbytes} bytes of data, but {t.type} ne {list(t.ne)} takes "
                         f"{want}")
    if not 1 <= len(t.ne) <= 4 or not all(d > 0 for d in t.ne):
        raise ValueError(f"tensor '{t.name}': bad ne {list(t.ne)}")


def _write_data(f, a: np.ndarray) -> None:
    """Write an array's bytes in C order, a slab of rows at a time (views are never copied whole)."""
    if a.flags.c_contiguous:
        flat = a.reshape(-1).view(np.uint8)
        for i in range(0, flat.size, SLAB):
            f.write(flat[i:i + SLAB].data)
        return
    rows = max(1, SLAB // max(1, a[0].nbytes)) if a.ndim > 1 else a.size
    for i in range(0, a.shape[0], rows):
        f.write(np.ascontiguousarray(a[i:i + rows]).reshape(-1).view(np.uint8).data)


def header_bytes(metadata: Sequence[Tuple[str, int, Any]] | Sequence[Tuple[str, int, Any, int]],
                 tensors: Sequence[GGUFTensor], alignment: int = DEFAULT_ALIGNMENT) -> Tuple[bytes, List[int]]:
    """The header (magic to the end of the tensor infos, padded to `alignment`) and each tensor's offset."""
    out = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(metadata))]
    for item in metadata:
        key, vtype, value = item[0], item[1], item[2]
        out.append(_string(key) + struct.pack("<I", vtype) + _value(vtype, value, *item[3:]))
    offsets, pos = [], 0
    for t in tensors:
        _check_tensor(t)
        offsets.append(pos)
        out.append(_string(t.name) + struct.pack("<I", len(t.ne)) + struct.pack(f"<{len(t.ne)}Q", *t.ne)
                   + struct.pack("<IQ", GGML_BY_NAME[t.type].code, pos))
        pos += -(-t.nbytes // alignment) * alignment
    raw = b"".join(out)
    return raw + bytes(-len(raw) % alignment), offsets


def write_gguf(path, metadata, tensors: Sequence[GGUFTensor], alignment: int = DEFAULT_ALIGNMENT) -> int:
    """Write a GGUF v3 file; returns its size in bytes. metadata: [(key, value type code, value[, element
    type code for arrays])] in file order. The file appears under `path` only when complete."""
    path = os.fspath(path)
    header, _ = header_bytes(metadata, tensors, alignment)
    tmp = path + ".partial"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            for t in tensors:
                _write_data(f, t.data)
                f.write(bytes(-t.nbytes % alignment))
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size


def size_label(n_params: int) -> str:
    """A parameter count as the converter's general.size_label shows it: at least two significant digits and
    a K/M/B/T suffix ('3.3M', '124M', '1.6B')."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n_params > scale or suffix == "K":
            x = n_params / scale
            break
    whole = len(str(round(x)).lstrip("0"))
    return f"{x:.{max(2 - whole, 0)}f}{suffix}"


def gpt2_metadata(config: Config, dtype: str, encoder: Mapping[str, int], merges: Iterable[Tuple[str, str]],
                  name: str = "") -> list:
    """GPT-2's GGUF metadata, the keys, types and order llama.cpp's convert_hf_to_gguf.py writes: general.*,
    gpt2.* hyperparameters, the tokenizer (tokenizer.ggml.*: model "gpt2", pre "gpt-2", tokens by id, token
    types with <|endoftext|> as control, merges as "left right", bos/eos = <|endoftext|>)."""
    tokens = sorted(encoder, key=encoder.__getitem__)
    if [encoder[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("the encoder's ids are not 0..n-1")
    eot = encoder.get("<|endoftext|>")
    types = [TOKEN_NORMAL] * len(tokens)
    if eot is not None:
        types[eot] = TOKEN_CONTROL
    C = config.n_embd
    md = [("general.architecture", STRING, ARCH), ("general.type", STRING, "model"),
          ("general.name", STRING, name or config.name or "GPT-2"),
          ("general.size_label", STRING, size_label(config.n_params)),
          ("gpt2.block_count", UINT32, config.n_layer), ("gpt2.context_length", UINT32, config.n_ctx),
          ("gpt2.embedding_length", UINT32, C), ("gpt2.feed_forward_length", UINT32, 4 * C),
          ("gpt2.attention.head_count", UINT32, config.n_head),
          ("gpt2.attention.layer_norm_epsilon", FLOAT32, 1e-5),
          ("general.file_type", UINT32, FILE_TYPES[dtype]),
          ("general.quantization_version", UINT32, QUANTIZATION_VERSION),
          ("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.pre", STRING, "gpt-2"),
          ("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
          ("tokenizer.ggml.token_type", ARRAY, types, INT32),
          ("tokenizer.ggml.merges", ARRAY, [f"{a} {b}" for a, b in merges], STRING)]
    if eot is not None:
        md += [("tokenizer.ggml.bos_token_id", UINT32, eot), ("tokenizer.ggml.eos_token_id", UINT32, eot)]
    return md
