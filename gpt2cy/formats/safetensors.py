"""Read HuggingFace .safetensors files (u64le header length, JSON header, raw tensor bytes) without the library.

The format is the one specified in huggingface/safetensors (README.md, "Format"; docs/source/index.mdx). Every
rule is checked before a byte is trusted: header size and encoding, one JSON object without duplicate keys,
known dtypes, shapes, offsets contiguous from 0 and covering the data exactly. Tensors are numpy views of a
read-only mmap in their stored type (`stored_type`); `match_hf_names` maps GPT-2's HF names to gpt2cy's
canonical ones (formats/names.py) and rejects weights of a type gpt2cy cannot use.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from . import dtypes as st_types
from .names import HF_IGNORED, HF_PREFIX, hf_name

MAX_HEADER = 100_000_000

DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
          "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
          "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
          "BOOL": np.dtype("?"), "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1")}

# Safetensors dtype -> gpt2cy's stored type, for the types a weight may have (formats/dtypes.py).
STORED = {"F32": st_types.F32, "F16": st_types.F16, "BF16": st_types.BF16}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: dtype name, shape, and its byte range [begin, end) in the file."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header(raw: bytes, data_size: int, path: str) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Validate a header against the number of data bytes after it; return (metadata, tensors)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: header is not UTF-8") from None
    except ValueError as e:   # JSONDecodeError or a duplicate key
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map names to strings")
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: tensor '{name}' needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{path}: tensor '{name}' has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor '{name}' has bad data_offsets {offsets!r}")
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * DTYPES[dtype].itemsize:
            raise CheckpointError(f"{path}: tensor '{name}' has {offsets[1] - offsets[0]} bytes, but shape "
                                  f"{shape} of {dtype} needs {numel * DTYPES[dtype].itemsize}")
        tensors[name] = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    pos = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != pos:
            what = "overlaps another tensor" if t.begin < pos else f"leaves bytes [{pos}, {t.begin}) unused"
            raise CheckpointError(f"{path}: tensor '{t.name}' {what}")
        pos = t.end
    if pos != data_size:
        what = "is truncated" if pos > data_size else "has unused bytes at the end"
        raise CheckpointError(f"{path}: file {what} (tensors cover {pos} data bytes, the file has {data_size})")
    return metadata, tensors


class SafetensorsFile:
    """A .safetensors file opened read-only: validated header + the data mapped into memory."""

    def __init__(self, path: str):
        self.path = path
        try:
            if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
                raise CheckpointError(f"{path}: not a regular file")  # a FIFO would block open() forever
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise CheckpointError(f"{path}: file is {size} bytes, too short for a safetensors file")
                n = int.from_bytes(f.read(8), "little")
                if n > MAX_HEADER or 8 + n > size:
                    raise CheckpointError(f"{path}: header length {n} is impossible for a {size}-byte file "
                                          f"(not a safetensors file, or truncated)")
                raw = f.read(n)
                self.data_start = 8 + n
                self.metadata, self.tensors = parse_header(raw, size - self.data_start, path)
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise CheckpointError(f"{path}: is a directory, not a safetensors file") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy array in its stored dtype (BF16 appears as uint16): a view of the
        mapped file, or an aligned copy when its bytes are not aligned for the dtype (an odd header length)."""
        t = self.tensors[name]
        dtype = DTYPES[t.dtype]
        a = np.frombuffer(self._map, dtype=dtype, count=(t.end - t.begin) // dtype.itemsize,
                          offset=self.data_start + t.begin)
        return st_types.aligned(a.reshape(t.shape))

    def stored_type(self, name: str) -> str | None:
        """'f32', 'f16' or 'bf16' for a tensor of a weight type gpt2cy supports, else None."""
        return STORED.get(self.tensors[name].dtype)


def match_hf_names(st: SafetensorsFile, shapes: dict[str, tuple[int, ...]], config_path: str,
                   described: str) -> dict[str, str]:
    """Check a GPT-2 safetensors file against the expected shapes: canonical name -> name in the file."""
    prefix = HF_PREFIX if any(n.startswith(HF_PREFIX) for n in st.tensors) else ""
    wanted = {prefix + hf_name(c): c for c in shapes}
    missing = [n for n in wanted if n not in st.tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{st.path}: missing tensor(s) {', '.join(missing[:3])}{more} "
                              f"that {config_path} ({described}) requires")
    for name in st.tensors:
        if name not in wanted and not HF_IGNORED.match(name[len(prefix):] if name.startswith(prefix) else name):
            raise CheckpointError(f"{st.path}: unexpected tensor '{name}' for {config_path} ({described})")
    out = {}
    for name, canonical in wanted.items():
        t = st.tensors[name]
        if t.dtype not in STORED:
            raise st_types.unsupported(st.path, name, t.dtype)
        if t.shape != shapes[canonical]:
            raise CheckpointError(f"{st.path}: tensor '{name}' has shape {list(t.shape)}, but "
                                  f"{config_path} ({described}) implies {list(shapes[canonical])}")
        out[canonical] = name
    return out
