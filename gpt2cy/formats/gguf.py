"""Read GGUF files (ggml's and llama.cpp's format, versions 2 and 3) without the gguf package, and map a GPT-2
GGUF file onto gpt2cy's tensor table.

    f = GGUFFile("gpt2.q8_0.gguf")     # the header checked; tensor data mapped read-only, never read here
    f.metadata["gpt2.block_count"]     # Value(type, value)
    f.tensors["blk.0.attn_qkv.weight"] # TensorInfo(name, ggml type, ne, offset, nbytes)
    load_gguf("gpt2.q8_0.gguf")        # Weights in gpt2cy's canonical names (formats/checkpoint.py)

The file (ggml's docs/gguf.md): "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
key/value pairs, one info per tensor (name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset), padding to
`general.alignment` (default 32), then the tensor data, each tensor at an aligned offset into it. Everything is
little-endian; a string is a u64 byte length and UTF-8 bytes (no NUL).

GGUF parsers have had a run of CVEs (integer overflow in sizes and counts, string lengths, offsets past the
file), so nothing read is trusted before it is checked: every count against the bytes left before anything is
allocated, every string length, value type, array length and nesting depth, every tensor's n_dims (1..4), dims
(> 0), type, byte size (Python integers: no overflow), offset (aligned, inside the data, not overlapping
another tensor), the alignment (a power of two) and duplicate keys and names. Each violation is one
CheckpointError "<file>: <what is wrong>".

Layout: ggml's ne0 is the fastest-varying dimension, so a tensor with ne = [in, out] is the numpy array
[out, in]. llama.cpp's converter writes GPT-2's four matmul weights transposed from OpenAI's [in, out]
(ne = [in, out]: blocks of q8_0/q4_0 run along the input, as ggml's mul_mat reads them), wte as ne = [C, V].
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ..config import Config
from ..errors import CheckpointError
from ..notices import notice
from ..tensors import EMBEDDING, MATMUL, tensor_specs
from . import dtypes as st_types

MAGIC = b"GGUF"
VERSIONS = (2, 3)                # version 1 (2023) used 32-bit counts and is read by nobody any more
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                     # GGML_MAX_DIMS
MAX_NAME = 63                    # GGML_MAX_NAME is 64 bytes with the NUL
MAX_ARRAY_DEPTH = 8              # arrays of arrays: deeper nesting than any writer produces is an error
MAX_INT64 = (1 << 63) - 1        # ggml counts elements and bytes in int64_t/size_t

# Metadata value types: code -> (name, struct format or None, fixed size in bytes or None)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VALUE_TYPES = {
    UINT8: ("uint8", "<B", 1), INT8: ("int8", "<b", 1), UINT16: ("uint16", "<H", 2), INT16: ("int16", "<h", 2),
    UINT32: ("uint32", "<I", 4), INT32: ("int32", "<i", 4), FLOAT32: ("float32", "<f", 4),
    BOOL: ("bool", "<B", 1), STRING: ("string", None, None), ARRAY: ("array", None, None),
    UINT64: ("uint64", "<Q", 8), INT64: ("int64", "<q", 8), FLOAT64: ("float64", "<d", 8),
}
_NUMPY_VALUE = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
                FLOAT32: "<f4", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}
INTEGER_TYPES = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)
_MIN_VALUE_BYTES = {STRING: 8, ARRAY: 12}   # a string's length field; an array's type and count


@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: `block` values take `type_size` bytes."""
    name: str
    code: int
    block: int
    type_size: int


# ggml.h's enum ggml_type (codes 4, 5 and 31..33 were removed from the format and are invalid in a file)
GGML_TYPES: Dict[int, GGMLType] = {t.code: t for t in (
    GGMLType("f32", 0, 1, 4), GGMLType("f16", 1, 1, 2), GGMLType("q4_0", 2, 32, 18),
    GGMLType("q4_1", 3, 32, 20), GGMLType("q5_0", 6, 32, 22), GGMLType("q5_1", 7, 32, 24),
    GGMLType("q8_0", 8, 32, 34), GGMLType("q8_1", 9, 32, 40), GGMLType("q2_K", 10, 256, 84),
    GGMLType("q3_K", 11, 256, 110), GGMLType("q4_K", 12, 256, 144), GGMLType("q5_K", 13, 256, 176),
    GGMLType("q6_K", 14, 256, 210), GGMLType("q8_K", 15, 256, 292), GGMLType("iq2_xxs", 16, 256, 66),
    GGMLType("iq2_xs", 17, 256, 74), GGMLType("iq3_xxs", 18, 256, 98), GGMLType("iq1_s", 19, 256, 50),
    GGMLType("iq4_nl", 20, 32, 18), GGMLType("iq3_s", 21, 256, 110), GGMLType("iq2_s", 22, 256, 82),
    GGMLType("iq4_xs", 23, 256, 136), GGMLType("i8", 24, 1, 1), GGMLType("i16", 25, 1, 2),
    GGMLType("i32", 26, 1, 4), GGMLType("i64", 27, 1, 8), GGMLType("f64", 28, 1, 8),
    GGMLType("iq1_m", 29, 256, 56), GGMLType("bf16", 30, 1, 2), GGMLType("tq1_0", 34, 256, 54),
    GGMLType("tq2_0", 35, 256, 66), GGMLType("mxfp4", 39, 32, 17), GGMLType("nvfp4", 40, 64, 36),
    GGMLType("q1_0", 41, 128, 18))}
GGML_BY_NAME = {t.name: t for t in GGML_TYPES.values()}

# The ggml types gpt2cy reads: their stored-type names in Weights.dtypes. f16 has no kernels and is widened at
# load (gpt2cy.model); the others run as they lie.
READ_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
BLOCK_TYPES = ("q8_0", "q4_0")
# ggml types gpt2cy has no kernels for but reads by dequantizing them to f32 at load (with a notice):
# llama-quantize keeps token_embd in q6_K when it quantizes a tied model to q4_0
DEQUANTIZED = ("q6_K",)
_FLOAT_NUMPY = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2")}

# llama.cpp's general.file_type (enum llama_ftype) for the types a GPT-2 file's weights may have
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}

ARCH = "gpt2"
GGUF_FORMAT = "gguf"             # Weights.format of a GGUF file


class Value(NamedTuple):
    """One metadata value: its type code, the value (int, float, bool, str, or for an array a list, or a
    read-only numpy array when the elements are numbers), and for arrays the element type code."""
    type: int
    value: Any
    elem_type: Optional[int] = None

    @property
    def type_name(self) -> str:
        name = VALUE_TYPES[self.type][0]
        return f"array[{VALUE_TYPES[self.elem_type][0]}]" if self.type == ARRAY else name


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: ggml type, ne (ne0 first: the fastest dimension), offset into the data section,
    and byte size."""
    name: str
    type: GGMLType
    ne: Tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def shape(self) -> Tuple[int, ...]:
        """The numpy shape of its values (ne reversed)."""
        return tuple(reversed(self.ne))


@dataclass(frozen=True)
class Header:
    """A parsed, checked GGUF header."""
    version: int
    metadata: Dict[str, Value]
    tensors: Dict[str, TensorInfo]      # in file order
    alignment: int
    data_start: int                     # file offset of the data section


# --- the header ----------------------------------------------------------------------------------

class _Reader:
    """A cursor over the file's bytes; every read is bounds-checked and fails with the file's name."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has "
                            f"{max(self.size - self.pos, 0)} left")

    def unpack(self, fmt: str, n: int, what: str):
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str, limit: Optional[int] = None) -> str:
        n = self.u64(f"the length of {what}")
        if limit is not None and n > limit:
            raise self.fail(f"{what} is {n} bytes long, more than the {limit} allowed")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 ({raw[:40]!r})") from None

    def count(self, n: int, min_bytes: int, what: str) -> None:
        """Check that n items of at least min_bytes each fit in the bytes left, before looping over them."""
        left = self.size - self.pos
        if n * min_bytes > left:
            raise self.fail(f"{what} {n} is impossible: {n} x {min_bytes} bytes at least, the file has {left} "
                            f"bytes left")

    def value(self, vtype: int, what: str, depth: int = 0) -> Value:
        if vtype not in VALUE_TYPES:
            raise self.fail(f"{what} has unknown value type {vtype}")
        if vtype == STRING:
            return Value(STRING, self.string(what))
        if vtype == ARRAY:
            return self._array(what, depth + 1)
        _, fmt, size = VALUE_TYPES[vtype]
        v = self.unpack(fmt, size, what)
        if vtype == BOOL:
            if v > 1:
                raise self.fail(f"{what} is a bool with byte value {v} (must be 0 or 1)")
            v = bool(v)
        return Value(vtype, v)

    def _array(self, what: str, depth: int) -> Value:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
        etype = self.u32(f"the element type of {what}")
        if etype not in VALUE_TYPES:
            raise self.fail(f"{what} is an array of unknown value type {etype}")
        n = self.u64(f"the length of {what}")
        size = VALUE_TYPES[etype][2]
        self.count(n, size or _MIN_VALUE_BYTES[etype], f"{what}: array length")
        if etype in _NUMPY_VALUE:
            a = np.frombuffer(self.buf, dtype=_NUMPY_VALUE[etype], count=n, offset=self.pos).copy()
            a.flags.writeable = False
            self.pos += n * size
            return Value(ARRAY, a, etype)
        if etype == BOOL:
            raw = np.frombuffer(self.buf, dtype=np.uint8, count=n, offset=self.pos)
            if n and int(raw.max()) > 1:
                raise self.fail(f"{what} holds a bool with byte value {int(raw.max())} (must be 0 or 1)")
            self.pos += n
            a = raw.astype(bool)
            a.flags.writeable = False
            return Value(ARRAY, a, etype)
        if etype == STRING:
            return Value(ARRAY, self._strings(n, what), etype)
        return Value(ARRAY, [self._array(f"{what}[{i}]", depth + 1) for i in range(n)], etype)

    def _strings(self, n: int, what: str) -> List[str]:
        # the tokenizer's 50257 tokens and 50000 merges: one tight loop, each length checked before use
        buf, pos, size, out = self.buf, self.pos, self.size, []
        unpack = struct.Struct("<Q").unpack_from
        append = out.append
        for i in range(n):
            if size - pos < 8:
                self.pos = pos
                raise self.fail(f"truncated: the length of {what}[{i}] at offset {pos}")
            ln = unpack(buf, pos)[0]
            pos += 8
            if ln > size - pos:
                self.pos = pos
                raise self.fail(f"truncated: {what}[{i}] is {ln} bytes long at offset {pos}, the file has "
                                f"{size - pos} left")
            try:
                append(str(buf[pos:pos + ln], "utf-8"))
            except UnicodeDecodeError:
                raise self.fail(f"{what}[{i}] is not UTF-8") from None
            pos += ln
        self.pos = pos
        return out


def parse_header(buf, path: str = "<gguf>") -> Header:
    """Parse and check a GGUF header from `buf` (bytes, or the mapped file): the metadata, every tensor's info
    against the file's size. Raises CheckpointError("<path>: <what is wrong>")."""
    r = _Reader(buf, path)
    if r.size < 4 or bytes(buf[:4]) != MAGIC:
        head = bytes(buf[:4])
        raise r.fail(f"not a GGUF file (starts with {head!r}, not {MAGIC!r})")
    r.pos = 4
    version = r.u32("the version")
    if version not in VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in VERSIONS:
            raise r.fail(f"a big-endian GGUF file (version {version >> 24}); gpt2cy reads little-endian GGUF")
        if version == 1:
            raise r.fail("GGUF version 1 is not supported (versions 2 and 3 are); convert the model again")
        raise r.fail(f"unknown GGUF version {version} (gpt2cy reads versions 2 and 3)")
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the metadata count")
    # every pair: key length (8) + a 1-byte key + value type (4) + a 1-byte value at least
    r.count(n_kv, 14, "metadata count")
    metadata: Dict[str, Value] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}", limit=65535)
        if not key:
            raise r.fail(f"metadata key #{i} is empty")
        if key in metadata:
            raise r.fail(f"metadata key '{key}' appears twice")
        vtype = r.u32(f"the value type of '{key}'")
        metadata[key] = r.value(vtype, f"metadata '{key}'")
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        v = metadata["general.alignment"]
        if v.type != UINT32:
            raise r.fail(f"general.alignment is {v.type_name}, must be uint32")
        if v.value == 0 or v.value & (v.value - 1):
            raise r.fail(f"general.alignment {v.value} is not a power of two")
        alignment = v.value
    # every info: name length (8) + 1-byte name + n_dims (4) + one dim (8) + type (4) + offset (8)
    r.count(n_tensors, 33, "tensor count")
    infos = []
    names = set()
    for i in range(n_tensors):
        name = r.string(f"the name of tensor #{i}", limit=MAX_NAME)
        if not name:
            raise r.fail(f"tensor #{i} has an empty name")
        if name in names:
            raise r.fail(f"tensor '{name}' appears twice")
        names.add(name)
        n_dims = r.u32(f"n_dims of tensor '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        ne = tuple(r.u64(f"the dimensions of tensor '{name}'") for _ in range(n_dims))
        code = r.u32(f"the type of tensor '{name}'")
        offset = r.u64(f"the offset of tensor '{name}'")
        infos.append((name, ne, code, offset))
    data_start = -(-r.pos // alignment) * alignment
    data_size = r.size - data_start
    if infos and data_size < 0:
        raise r.fail(f"truncated: the tensor data would start at offset {data_start}, past the end of the "
                     f"{r.size}-byte file")
    tensors: Dict[str, TensorInfo] = {}
    for name, ne, code, offset in infos:
        t = GGML_TYPES.get(code)
        if t is None:
            raise r.fail(f"tensor '{name}' has unknown ggml type {code}")
        if any(d == 0 for d in ne):
            raise r.fail(f"tensor '{name}' has a zero dimension (ne {list(ne)})")
        numel = 1
        for d in ne:
            numel *= d
        if numel > MAX_INT64:
            raise r.fail(f"tensor '{name}' has {numel} elements (ne {list(ne)}), more than ggml can count")
        if ne[0] % t.block:
            raise r.fail(f"tensor '{name}' is {t.name} with ne0 {ne[0]}, not a multiple of its block of "
                         f"{t.block}")
        nbytes = numel // t.block * t.type_size
        if offset % alignment:
            raise r.fail(f"tensor '{name}' has offset {offset}, not a multiple of the alignment {alignment}")
        if offset > data_size or nbytes > data_size - offset:
            raise r.fail(f"truncated: tensor '{name}' needs bytes [{offset}, {offset + nbytes}) of the data, "
                         f"which has {max(data_size, 0)}")
        tensors[name] = TensorInfo(name, t, ne, offset, nbytes)
    end, last = 0, None
    for t in sorted(tensors.values(), key=lambda t: t.offset):
        if t.offset < end:
            raise r.fail(f"tensor '{t.name}' overlaps tensor '{last}' in the data section")
        end, last = t.offset + t.nbytes, t.name
    return Header(version, metadata, tensors, alignment, data_start)


class GGUFFile:
    """A GGUF file opened read-only: the checked header, and the file mapped for the tensors' bytes."""

    def __init__(self, path):
        path = os.fspath(path)
        self.path = path
        try:
            if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
                raise CheckpointError(f"{path}: not a regular file")      # a FIFO would block open() forever
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 24:
                    raise CheckpointError(f"{path}: file is {size} bytes, too short for a GGUF file")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise CheckpointError(f"{path}: is a directory, not a GGUF file") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        self.header = parse_header(self._map, path)

    @property
    def metadata(self) -> Dict[str, Value]:
        return self.header.metadata

    @property
    def tensors(self) -> Dict[str, TensorInfo]:
        return self.header.tensors

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes: a read-only uint8 view of the mapped file."""
        t = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=self.header.data_start + t.offset)

    def array(self, name: str) -> np.ndarray:
        """The tensor in its stored type, numpy shape (ne reversed): f32 as float32, f16 as float16, bf16 as
        uint16; a block type as uint8 rows of blocks, [ne1 * ne2 * ne3, ne0 / block * type_size]. A read-only
        view of the mapped file (an aligned copy if the alignment is too small for the type)."""
        t = self.tensors[name]
        raw = self.raw(name)
        if t.type.name in _FLOAT_NUMPY:
            return st_types.aligned(raw.view(_FLOAT_NUMPY[t.type.name]).reshape(t.shape))
        if t.type.block == 1:
            raise CheckpointError(f"{self.path}: tensor '{name}' is {t.type.name}, which gpt2cy does not read")
        return raw.reshape(-1, t.ne[0] // t.type.block * t.type.type_size)


# --- GPT-2 -----------------------------------------------------------------------------------------

def gguf_names(config: Config) -> Dict[str, str]:
    """Canonical name -> llama.cpp's GPT-2 tensor name (gguf-py's tensor_mapping for GPT2LMHeadModel)."""
    leaf = {"ln_1.g": "attn_norm.weight", "ln_1.b": "attn_norm.bias",
            "attn.c_attn.w": "attn_qkv.weight", "attn.c_attn.b": "attn_qkv.bias",
            "attn.c_proj.w": "attn_output.weight", "attn.c_proj.b": "attn_output.bias",
            "ln_2.g": "ffn_norm.weight", "ln_2.b": "ffn_norm.bias",
            "mlp.c_fc.w": "ffn_up.weight", "mlp.c_fc.b": "ffn_up.bias",
            "mlp.c_proj.w": "ffn_down.weight", "mlp.c_proj.b": "ffn_down.bias"}
    glob = {"wte": "token_embd.weight", "wpe": "position_embd.weight",
            "ln_f.g": "output_norm.weight", "ln_f.b": "output_norm.bias"}
    return {s.name: (glob[s.name] if s.layer is None else f"blk.{s.layer}.{leaf[s.leaf]}")
            for s in tensor_specs(config)}


OUTPUT = "output.weight"         # an untied output projection; GPT-2's is wte (llama.cpp falls back to it too)


def gguf_ne(spec_name: str, shape: Tuple[int, ...], role: str) -> Tuple[int, ...]:
    """ggml's ne of a canonical tensor as llama.cpp's converter writes it: matmul weights transposed from
    OpenAI's [in, out] to numpy [out, in], i.e. ne = [in, out]; everything else is numpy shape reversed."""
    return tuple(shape) if role == MATMUL else tuple(reversed(shape))


@dataclass(frozen=True)
class Vocab:
    """The tokenizer a GGUF file carries (tokenizer.ggml.*), checked: encoder maps GPT-2's byte-alphabet
    spellings to ids, merges are in rank order."""
    encoder: Dict[str, int]
    merges: List[Tuple[str, str]]
    source: str


def _int_key(f: GGUFFile, key: str, required: bool = True) -> Optional[int]:
    v = f.metadata.get(key)
    if v is None:
        if required:
            raise CheckpointError(f"{f.path}: no '{key}' in the metadata (a GPT-2 GGUF file has it)")
        return None
    if v.type not in INTEGER_TYPES:
        raise CheckpointError(f"{f.path}: '{key}' is {v.type_name}, expected an integer")
    if not 0 < v.value <= 1 << 20:
        raise CheckpointError(f"{f.path}: '{key}' = {v.value} is out of range")
    return int(v.value)


def _string_key(f: GGUFFile, key: str) -> Optional[str]:
    v = f.metadata.get(key)
    if v is None:
        return None
    if v.type != STRING:
        raise CheckpointError(f"{f.path}: '{key}' is {v.type_name}, expected a string")
    return v.value


def gguf_config(f: GGUFFile) -> Config:
    """The model's Config from a GPT-2 GGUF file's metadata (gpt2.*) and its embedding's shape (n_vocab)."""
    arch = _string_key(f, "general.architecture")
    if arch != ARCH:
        what = "no general.architecture" if arch is None else f"architecture '{arch}'"
        raise CheckpointError(f"{f.path}: {what}; gpt2cy runs GPT-2 (general.architecture 'gpt2')")
    wte = f.tensors.get("token_embd.weight")
    if wte is None or len(wte.ne) != 2:
        raise CheckpointError(f"{f.path}: no 2-D tensor 'token_embd.weight' (GPT-2's token embedding)")
    raw = {"n_vocab": wte.ne[1], "n_ctx": _int_key(f, "gpt2.context_length"),
           "n_embd": _int_key(f, "gpt2.embedding_length"), "n_head": _int_key(f, "gpt2.attention.head_count"),
           "n_layer": _int_key(f, "gpt2.block_count")}
    name = re.sub(r"\.gguf$", "", os.path.basename(f.path), flags=re.I)
    config = Config.from_dict(raw, source=f.path, name=name)
    ff = _int_key(f, "gpt2.feed_forward_length", required=False)
    if ff is not None and ff != 4 * config.n_embd:
        raise CheckpointError(f"{f.path}: gpt2.feed_forward_length {ff} is not 4 x embedding_length "
                              f"{config.n_embd} (GPT-2's MLP)")
    kv = _int_key(f, "gpt2.attention.head_count_kv", required=False)
    if kv is not None and kv != config.n_head:
        raise CheckpointError(f"{f.path}: gpt2.attention.head_count_kv {kv} differs from head_count "
                              f"{config.n_head}; GPT-2 has no grouped-query attention")
    eps = f.metadata.get("gpt2.attention.layer_norm_epsilon")
    if eps is not None:
        if eps.type not in (FLOAT32, FLOAT64):
            raise CheckpointError(f"{f.path}: gpt2.attention.layer_norm_epsilon is {eps.type_name}, expected "
                                  f"float32")
        if not abs(eps.value - 1e-5) <= 1e-9:
            raise CheckpointError(f"{f.path}: gpt2.attention.layer_norm_epsilon is {eps.value}; gpt2cy runs "
                                  f"GPT-2's 1e-5")
    return config


def gguf_vocab(f: GGUFFile, n_vocab: int) -> Optional[Vocab]:
    """The file's tokenizer (tokenizer.ggml.model 'gpt2', tokens, merges), checked; None if it has none."""
    model = _string_key(f, "tokenizer.ggml.model")
    tokens_v, merges_v = f.metadata.get("tokenizer.ggml.tokens"), f.metadata.get("tokenizer.ggml.merges")
    if model is None and tokens_v is None:
        return None
    where = f.path
    if model != "gpt2":
        raise CheckpointError(f"{where}: tokenizer.ggml.model is {model!r}; gpt2cy reads GPT-2's byte-level BPE "
                              f"('gpt2')")
    for key, v in (("tokenizer.ggml.tokens", tokens_v), ("tokenizer.ggml.merges", merges_v)):
        if v is None or v.type != ARRAY or v.elem_type != STRING:
            what = "missing" if v is None else f"{v.type_name}, not array[string]"
            raise CheckpointError(f"{where}: {key} is {what}")
    tokens, lines = tokens_v.value, merges_v.value
    if len(tokens) != n_vocab:
        raise CheckpointError(f"{where}: tokenizer.ggml.tokens has {len(tokens)} tokens, but token_embd.weight "
                              f"has {n_vocab} rows")
    encoder = {t: i for i, t in enumerate(tokens)}
    if len(encoder) != len(tokens):
        seen = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise CheckpointError(f"{where}: tokenizer.ggml.tokens holds {dup!r} twice")
    types = f.metadata.get("tokenizer.ggml.token_type")
    if types is not None:
        if types.type != ARRAY or types.elem_type not in INTEGER_TYPES or len(types.value) != n_vocab:
            raise CheckpointError(f"{where}: tokenizer.ggml.token_type must be {n_vocab} integers")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        v = f.metadata.get(key)
        if v is not None and (v.type not in INTEGER_TYPES or not 0 <= v.value < n_vocab):
            raise CheckpointError(f"{where}: {key} must be a token id below {n_vocab}, got {v.value!r}")
    pre = _string_key(f, "tokenizer.ggml.pre")
    if pre not in (None, "gpt-2", "default"):
        notice(f"{where}: tokenizer.ggml.pre is '{pre}'; gpt2cy splits text with GPT-2's own pattern")
    merges = []
    for i, line in enumerate(lines):
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise CheckpointError(f"{where}: tokenizer.ggml.merges[{i}] is {line!r}, not two tokens separated "
                                  f"by one space")
        if parts[0] not in encoder or parts[1] not in encoder or parts[0] + parts[1] not in encoder:
            raise CheckpointError(f"{where}: tokenizer.ggml.merges[{i}] {line!r} names a token that is not in "
                                  f"tokenizer.ggml.tokens")
        merges.append((parts[0], parts[1]))
    return Vocab(encoder, merges, where)


def _stored(f: GGUFFile, t: TensorInfo, what: str) -> str:
    if t.type.name not in READ_TYPES + DEQUANTIZED:
        raise CheckpointError(f"{f.path}: tensor '{t.name}' is {t.type.name}; gpt2cy reads GGUF tensors of "
                              f"types {', '.join(READ_TYPES)} (and {', '.join(DEQUANTIZED)}, dequantized at "
                              f"load); for another type, convert or quantize the model again, e.g. "
                              f"llama-quantize --pure ... q8_0{what}")
    return t.type.name


def dequantize_q6_k(raw: np.ndarray, n: int) -> np.ndarray:
    """ggml's q6_K blocks (256 values in 210 bytes: ql[128] low nibbles, qh[64] high 2-bit pairs, 16 int8
    sub-block scales, an fp16 d) as float32 values, d * scale * (q - 32), n values in all."""
    b = raw.reshape(-1, 210)
    nb = b.shape[0]
    ql = b[:, :128].reshape(nb, 2, 64)
    qh = b[:, 128:192].reshape(nb, 2, 1, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32).reshape(nb, 16)
    d = b[:, 208:210].copy().view("<f2").astype(np.float32)
    low = np.stack([ql[:, :, :32] & 0xF, ql[:, :, 32:] & 0xF, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4], axis=2)
    high = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).astype(np.int8).reshape(nb, 16, 16) - np.int8(32)   # 16 sub-blocks of 16
    out = (d * sc).reshape(nb, 16, 1) * q.astype(np.float32)
    return out.reshape(-1)[:n]


def load_gguf(path) -> "Weights":
    """Open a GPT-2 GGUF file: its Config (metadata), every weight in gpt2cy's canonical names, and its
    tokenizer (Weights.vocab), without reading the tensor data.

    Float types (f32, f16, bf16) are views in tensors.py's shapes: a matmul weight, stored [out, in], is its
    transposed view [in, out] (not contiguous; gpt2cy.model copies it into the f32/bf16 kernels' layout).
    Block types (q8_0, q4_0) are the stored uint8 rows of blocks: [out, in/32 x block bytes] for a matmul
    weight, [n_vocab, n_embd/32 x block bytes] for wte, which is the layout the engine's kernels read, so
    they are used where they lie. Raises CheckpointError naming the file and what is wrong.
    """
    from .checkpoint import Weights
    f = GGUFFile(path)
    config = gguf_config(f)
    names = gguf_names(config)
    specs = {s.name: s for s in tensor_specs(config)}
    known = set(names.values()) | {OUTPUT}
    extra = [n for n in f.tensors if n not in known]
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise CheckpointError(f"{f.path}: unexpected tensor(s) {', '.join(extra[:3])}{more} for GPT-2 "
                              f"(n_layer={config.n_layer})")
    missing = [n for n in names.values() if n not in f.tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{f.path}: missing tensor(s) {', '.join(missing[:3])}{more} that its metadata "
                              f"(n_layer={config.n_layer}, n_embd={config.n_embd}) requires")
    tensors, dtypes = {}, {}
    for canonical, gname in names.items():
        spec, t = specs[canonical], f.tensors[gname]
        want = gguf_ne(canonical, spec.shape, spec.role)
        if t.ne != want:
            raise CheckpointError(f"{f.path}: tensor '{gname}' has ne {list(t.ne)}, but the metadata "
                                  f"(n_vocab={config.n_vocab}, n_ctx={config.n_ctx}, n_embd={config.n_embd}) "
                                  f"implies {list(want)}")
        stored = _stored(f, t, "")
        if stored in DEQUANTIZED:
            numel = int(np.prod(t.ne))
            a = dequantize_q6_k(f.raw(gname), numel).reshape(t.shape)
            a.flags.writeable = False
            notice(f"{f.path}: tensor '{gname}' is {stored}, which gpt2cy has no kernels for: dequantized to "
                   f"f32 at load (then held in the type the model runs in)")
            stored = "f32"
        else:
            a = f.array(gname)
        if stored not in BLOCK_TYPES and spec.role == MATMUL:
            a = a.T                                       # [out, in] -> OpenAI's [in, out], a view
        tensors[canonical], dtypes[canonical] = a, stored
    if OUTPUT in f.tensors:
        _check_output(f, f.tensors[OUTPUT], f.tensors[names["wte"]])
    vocab = gguf_vocab(f, config.n_vocab)
    return Weights(config, tensors, f.path, GGUF_FORMAT, (f.path,), dtypes, vocab=vocab)


def _check_output(f: GGUFFile, out: TensorInfo, wte: TensorInfo) -> None:
    """GPT-2 ties its output projection to wte; some converters store a copy as output.weight. A copy in the
    same type is skipped silently; anything else is skipped with a notice (GPT-2 has no other projection)."""
    if out.ne != wte.ne:
        raise CheckpointError(f"{f.path}: tensor '{OUTPUT}' has ne {list(out.ne)}, expected {list(wte.ne)} "
                              f"(the tied output projection)")
    if out.type is wte.type and np.array_equal(f.raw(OUTPUT), f.raw(wte.name)):
        return
    notice(f"{f.path}: '{OUTPUT}' ({out.type.name}) is not a copy of token_embd.weight ({wte.type.name}); "
           f"gpt2cy uses token_embd.weight as the output projection, as GPT-2 ties them")


def run_dtype(weights) -> str:
    """The dtype a GGUF file's weights run in by default: the type its matmul weights are stored in when the
    engine has kernels for it (f16: f32, exactly), else f32."""
    kinds = [weights.dtypes.get(s.name, "f32") for s in tensor_specs(weights.config) if s.role == MATMUL]
    common = max(set(kinds), key=kinds.count) if kinds else "f32"
    return "f32" if common == "f16" else common


def verify_gguf(path, check_finite: bool = True) -> Tuple[int, int]:
    """Read every tensor of a GPT-2 GGUF file: no NaN/inf values (float types) or block scales (q8_0, q4_0).
    Returns (tensors, bytes). GGUF stores no checksums, so this is the only check of the data."""
    weights = load_gguf(path)
    f = GGUFFile(path)
    names = gguf_names(weights.config)
    n_bytes = 0
    for canonical, gname in names.items():
        stored = weights.dtypes[canonical]
        a = f.array(gname)                                # as stored: contiguous
        n_bytes += a.nbytes
        if not check_finite:
            continue
        if stored in BLOCK_TYPES:
            scales = a.reshape(-1, GGML_BY_NAME[stored].type_size)[:, :2].copy().view(np.uint16)
            bad = int(np.count_nonzero((scales & 0x7C00) == 0x7C00))
        else:
            bad = st_types.count_nonfinite(a, stored)
        if bad:
            what = "block scales" if stored in BLOCK_TYPES else "values"
            raise CheckpointError(f"{path}: tensor '{gname}' holds {bad} NaN/inf {what}")
    return len(names), n_bytes
