"""Read TensorFlow tensor-bundle checkpoints (P.index + P.data-*) without TensorFlow.

The .index file is a LevelDB-style table: data blocks of prefix-compressed (key, value) entries, a
metaindex block, an index block mapping separator keys to data blocks, and a 48-byte footer. Key "" holds a
BundleHeaderProto; every other key is a tensor name whose value is a BundleEntryProto (dtype, shape, shard,
offset, size, masked CRC-32C). The format is TensorFlow's: tensorflow/core/protobuf/tensor_bundle.proto
(BundleHeaderProto, BundleEntryProto), tensorflow/core/util/tensor_bundle/tensor_bundle.cc (the reader and
writer) and the LevelDB table format (leveldb doc/table_format.md; TF's copy in tensorflow/tsl/lib/io/table.cc
and block.cc). Every structural rule those imply is checked before a byte is trusted; every violation raises
CheckpointError("<file>: <what is wrong>"). Tensor bytes are dense in the data file (TF writes them with
alignment 1), so a tensor at an offset that is not a multiple of its item size is copied into an aligned array.
"""
from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ._crc32c import checksum_f32, crc32c
from . import dtypes as st_types
from ..errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48                 # two BlockHandles padded to 40 bytes + 8-byte magic
TRAILER_SIZE = 5                 # block type byte + masked CRC-32C
MASK_DELTA = 0xA282EAD8
MAX_RANK = 254                   # TensorShape::MaxDimensions()
MAX_INDEX_BYTES = 1 << 30        # an index is KBs; refuse to slurp anything absurd

# DataType enum (types.proto) -> little-endian numpy dtype, for the fixed-size types we can view.
DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
          6: np.dtype("i1"), 8: np.dtype("<c8"), 9: np.dtype("<i8"), 10: np.dtype("?"), 17: np.dtype("<u2"),
          18: np.dtype("<c16"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8")}
BFLOAT16 = 14                    # no numpy dtype; sized as 2 bytes, exposed as raw uint16
STRING = 7                       # variable-length (lengths, masked CRC, bytes): checksummed, never viewed
# DataType -> gpt2cy's stored type (formats/dtypes.py), for the types a weight may have.
STORED = {1: st_types.F32, 19: st_types.F16, BFLOAT16: st_types.BF16}
_HALF = {19: st_types.F16, BFLOAT16: st_types.BF16}   # 16-bit float types verify() checks for NaN/inf
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128",
               19: "float16", 22: "uint32", 23: "uint64"}


class _Corrupt(Exception):
    """Internal: a format violation; read_index adds the file name and raises CheckpointError."""


def unmask_crc(masked: int) -> int:
    """Undo TF's CRC masking (crc32c.h Unmask)."""
    r = (masked - MASK_DELTA) & 0xFFFFFFFF
    return ((r >> 17) | (r << 15)) & 0xFFFFFFFF


def data_filename(prefix: str, shard: int = 0, num_shards: int = 1) -> str:
    """P.data-00000-of-00001 (naming.cc DataFilename)."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


# --- primitives -----------------------------------------------------------------------------------

def _varint(buf, pos: int, end: int, max_bytes: int, what: str) -> tuple[int, int]:
    """Decode a LEB128 varint of at most `max_bytes` bytes from buf[pos:end]; return (value, next pos)."""
    value = shift = 0
    for i in range(max_bytes):
        if pos + i >= end:
            raise _Corrupt(f"truncated varint in {what}")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if value >> (32 if max_bytes == 5 else 64):
                raise _Corrupt(f"varint out of range in {what}")
            return value, pos + i + 1
        shift += 7
    raise _Corrupt(f"varint longer than {max_bytes} bytes in {what}")


def _handle(buf, pos: int, end: int, what: str) -> tuple[int, int, int]:
    """BlockHandle = varint64 offset, varint64 size -> (offset, size, next pos)."""
    offset, pos = _varint(buf, pos, end, 10, what)
    size, pos = _varint(buf, pos, end, 10, what)
    return offset, size, pos


# --- protobuf -------------------------------------------------------------------------------------

def _proto_fields(buf, what: str) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value) of a serialized message; value is an int or a memoryview."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos, end, 10, what)
        field, wire = tag >> 3, tag & 7
        if field == 0 or field >= 1 << 29:
            raise _Corrupt(f"bad protobuf field number {field} in {what}")
        if wire == 0:
            value, pos = _varint(buf, pos, end, 10, what)
        elif wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise _Corrupt(f"truncated fixed{n * 8} field in {what}")
            value = int.from_bytes(buf[pos:pos + n], "little")
            pos += n
        elif wire == 2:
            n, pos = _varint(buf, pos, end, 5, what)
            if n > end - pos:
                raise _Corrupt(f"length-delimited field runs past the end of {what}")
            value = buf[pos:pos + n]
            pos += n
        else:   # 3/4 are (deprecated) groups, 6/7 do not exist
            raise _Corrupt(f"unsupported protobuf wire type {wire} in {what}")
        yield field, wire, value


def _expect(wire: int, want: int, field: int, what: str):
    if wire != want:
        raise _Corrupt(f"field {field} of {what} has wire type {wire}, expected {want}")


def _int(value: int, bits: int, field: int, what: str) -> int:
    """A varint as a signed int32/int64 (negative numbers arrive as 64-bit two's complement)."""
    if value >= 1 << 63:
        value -= 1 << 64
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise _Corrupt(f"field {field} of {what} is out of int{bits} range")
    return value


def _parse_version(buf) -> tuple[int, int, list[int]]:
    producer = min_consumer = 0
    bad: list[int] = []
    for field, wire, value in _proto_fields(buf, "the header's version"):
        if field in (1, 2):
            _expect(wire, 0, field, "VersionDef")
            v = _int(value, 32, field, "VersionDef")
            if field == 1:
                producer = v
            else:
                min_consumer = v
        elif field == 3:
            if wire == 0:
                bad.append(_int(value, 32, field, "VersionDef"))
            elif wire == 2:                     # packed
                pos = 0
                while pos < len(value):
                    v, pos = _varint(value, pos, len(value), 10, "VersionDef.bad_consumers")
                    bad.append(_int(v, 32, field, "VersionDef"))
            else:
                _expect(wire, 0, field, "VersionDef")
    return producer, min_consumer, bad


@dataclass(frozen=True)
class Header:
    """BundleHeaderProto: shard count, byte order and format version."""
    num_shards: int
    big_endian: bool
    producer: int
    min_consumer: int


def _parse_header(buf) -> Header:
    num_shards = endianness = 0
    producer, min_consumer, bad = 0, 0, []
    for field, wire, value in _proto_fields(buf, "the bundle header"):
        if field == 1:
            _expect(wire, 0, field, "the bundle header")
            num_shards = _int(value, 32, field, "the bundle header")
        elif field == 2:
            _expect(wire, 0, field, "the bundle header")
            endianness = _int(value, 32, field, "the bundle header")
        elif field == 3:
            _expect(wire, 2, field, "the bundle header")
            producer, min_consumer, bad = _parse_version(value)
    # CheckVersions(header.version(), kTensorBundleVersion=1, kTensorBundleMinProducer=0, ...)
    if producer < 0:
        raise _Corrupt(f"bundle producer version {producer} is older than the minimum 0")
    if min_consumer > 1:
        raise _Corrupt(f"bundle needs a reader of version {min_consumer} or newer (this one is 1)")
    if 1 in bad:
        raise _Corrupt("bundle marks reader version 1 as bad")
    if endianness not in (0, 1):
        raise _Corrupt(f"unknown endianness {endianness} in the bundle header")
    if endianness == 1:
        raise _Corrupt("big-endian checkpoints are not supported")
    if num_shards != 1:
        raise _Corrupt(f"checkpoint has {num_shards} data shards; only single-shard checkpoints are supported")
    return Header(num_shards, endianness == 1, producer, min_consumer)


@dataclass(frozen=True)
class Entry:
    """One tensor of a bundle: where its bytes are and what they hold."""
    name: str
    dtype: int                   # TF DataType enum value (1 = float32)
    shape: tuple[int, ...]
    shard_id: int
    offset: int                  # byte offset in the data file
    size: int                    # byte count
    crc32c: int                  # CRC-32C of the bytes (unmasked)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"DataType {self.dtype}")

    @property
    def stored_type(self) -> str | None:
        """'f32', 'f16' or 'bf16' for a tensor of a weight type gpt2cy supports, else None."""
        return STORED.get(self.dtype)


def _parse_shape(buf, what: str) -> tuple[int, ...]:
    dims: list[int] = []
    for field, wire, value in _proto_fields(buf, what):
        if field == 2:
            _expect(wire, 2, field, what)
            size = 0
            for f2, w2, v2 in _proto_fields(value, what):
                if f2 == 1:
                    _expect(w2, 0, f2, what)
                    size = _int(v2, 64, f2, what)
            if size < 0:
                raise _Corrupt(f"{what} has a dimension of unknown size ({size})")
            dims.append(size)
            if len(dims) > MAX_RANK:
                raise _Corrupt(f"{what} has more than {MAX_RANK} dimensions")
        elif field == 3:
            _expect(wire, 0, field, what)
            if value:
                raise _Corrupt(f"{what} has unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf) -> Entry:
    what = f"the entry of tensor '{name}'"
    dtype = shard_id = offset = size = 0
    crc = None
    shapes = []
    for field, wire, value in _proto_fields(buf, what):
        if field in (1, 3, 4, 5):
            _expect(wire, 0, field, what)
            v = _int(value, 32 if field in (1, 3) else 64, field, what)
            if field == 1:
                dtype = v
            elif field == 3:
                shard_id = v
            elif field == 4:
                offset = v
            else:
                size = v
        elif field == 2:
            _expect(wire, 2, field, what)
            shapes.append(bytes(value))         # repeated occurrences of a message field merge
        elif field == 6:
            _expect(wire, 5, field, what)
            crc = value
        elif field == 7:
            raise _Corrupt(f"tensor '{name}' is stored as slices (a partitioned variable); not supported")
    shape = _parse_shape(b"".join(shapes), f"the shape of tensor '{name}'")
    if dtype in DTYPES:
        itemsize = DTYPES[dtype].itemsize
    elif dtype == BFLOAT16:
        itemsize = 2
    elif dtype == STRING:        # e.g. TF2's _CHECKPOINTABLE_OBJECT_GRAPH; its size has no fixed rule
        itemsize = None
    else:
        raise _Corrupt(f"tensor '{name}' has unsupported dtype {DTYPE_NAMES.get(dtype, dtype)}")
    if shard_id != 0:
        raise _Corrupt(f"tensor '{name}' is in shard {shard_id}, but the checkpoint has one shard")
    if offset < 0 or size < 0:
        raise _Corrupt(f"tensor '{name}' has a negative offset or size ({offset}, {size})")
    numel = 1
    for d in shape:
        numel *= d
    if itemsize is None:         # >= one varint byte per length + the 4-byte length checksum
        if size < numel + 4:
            raise _Corrupt(f"string tensor '{name}' has {size} bytes, too few for {numel} elements")
    elif numel * itemsize != size:   # Python ints: a huge product simply mismatches
        raise _Corrupt(f"tensor '{name}' has {size} bytes, but shape {list(shape)} of "
                       f"{DTYPE_NAMES[dtype]} needs {numel * itemsize}")
    if crc is None:
        raise _Corrupt(f"tensor '{name}' has no checksum")
    return Entry(name, dtype, shape, shard_id, offset, size, unmask_crc(crc))


# --- table ----------------------------------------------------------------------------------------

def _read_block(buf, offset: int, size: int, limit: int, what: str):
    """The `size` bytes of a block at `offset`, after checking its trailer (type byte + masked CRC)."""
    if offset + size + TRAILER_SIZE > limit:
        raise _Corrupt(f"{what} (offset {offset}, {size} bytes) runs past the end of the table")
    block = buf[offset:offset + size]
    block_type = buf[offset + size]
    stored = int.from_bytes(buf[offset + size + 1:offset + size + 5], "little")
    if unmask_crc(stored) != crc32c(buf[offset:offset + size + 1]):
        raise _Corrupt(f"checksum mismatch in {what} at offset {offset}")
    if block_type != 0:
        kind = "Snappy-compressed" if block_type == 1 else f"bad block type {block_type} in"
        raise _Corrupt(f"{kind} {what} is not supported" if block_type == 1 else f"{kind} {what}")
    return block


def _block_entries(block, what: str) -> list[tuple[bytes, memoryview]]:
    """Decode a block into (key, value) pairs, checking restarts, varints, lengths and key order."""
    n = len(block)
    if n < 4:
        raise _Corrupt(f"{what} is {n} bytes, too short for a restart count")
    num_restarts = int.from_bytes(block[n - 4:], "little")
    if num_restarts == 0 or num_restarts > (n - 4) // 4:
        raise _Corrupt(f"{what} has an impossible restart count {num_restarts}")
    limit = n - 4 - 4 * num_restarts                   # end of the entry region
    restarts = [int.from_bytes(block[limit + 4 * i:limit + 4 * i + 4], "little") for i in range(num_restarts)]
    if restarts[0] != 0:
        raise _Corrupt(f"{what}: first restart point is {restarts[0]}, not 0")
    for a, b in zip(restarts, restarts[1:]):
        if b <= a:
            raise _Corrupt(f"{what}: restart points are not increasing")
    if restarts[-1] >= limit and not (limit == 0 and num_restarts == 1):
        raise _Corrupt(f"{what}: restart point {restarts[-1]} is outside the entries")
    entries = []
    starts = set()
    key = b""
    pos = 0
    restart_set = set(restarts)
    while pos < limit:
        start = pos
        shared, pos = _varint(block, pos, limit, 5, what)
        non_shared, pos = _varint(block, pos, limit, 5, what)
        value_len, pos = _varint(block, pos, limit, 5, what)
        if shared > len(key):
            raise _Corrupt(f"{what}: entry at {start} shares {shared} bytes of a {len(key)}-byte key")
        if start in restart_set and shared != 0:
            raise _Corrupt(f"{what}: restart point {start} does not hold a full key")
        if non_shared + value_len > limit - pos:
            raise _Corrupt(f"{what}: entry at {start} runs past the entries")
        new_key = key[:shared] + bytes(block[pos:pos + non_shared])
        if entries and new_key <= key:
            raise _Corrupt(f"{what}: keys are not strictly increasing at {new_key!r}")
        key = new_key
        pos += non_shared
        entries.append((key, block[pos:pos + value_len]))
        starts.add(start)
        pos += value_len
    if limit and not restart_set <= starts:
        raise _Corrupt(f"{what}: a restart point is not at an entry")
    return entries


def _table_items(buf) -> list[tuple[bytes, memoryview]]:
    """All (key, value) pairs of a table, in order, with every structural rule checked."""
    size = len(buf)
    if size < FOOTER_SIZE:
        raise _Corrupt(f"file is {size} bytes, too short for a checkpoint index (footer is {FOOTER_SIZE})")
    footer = size - FOOTER_SIZE
    magic = int.from_bytes(buf[size - 8:], "little")
    if magic != TABLE_MAGIC:
        raise _Corrupt("not a TensorFlow checkpoint index (bad magic number)")
    meta_off, meta_size, pos = _handle(buf, footer, size - 8, "the footer")
    index_off, index_size, pos = _handle(buf, pos, size - 8, "the footer")
    if pos > footer + 40:
        raise _Corrupt("block handles overrun the footer")
    _read_block(buf, meta_off, meta_size, footer, "the metaindex block")   # empty today; CRC only
    index = _block_entries(_read_block(buf, index_off, index_size, footer, "the index block"), "the index block")
    items: list[tuple[bytes, memoryview]] = []
    for i, (separator, handle) in enumerate(index):
        off, n, _ = _handle(handle, 0, len(handle), "an index block entry")
        what = f"data block {i}"
        entries = _block_entries(_read_block(buf, off, n, footer, what), what)
        if entries:
            if items and entries[0][0] <= items[-1][0]:
                raise _Corrupt(f"{what}: keys are not increasing across blocks")
            if entries[-1][0] > separator:
                raise _Corrupt(f"{what}: key {entries[-1][0]!r} is past its index separator {separator!r}")
        items.extend(entries)
    return items


# --- bundle ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BundleIndex:
    """A parsed and validated .index file."""
    path: str
    header: Header
    entries: dict[str, Entry]    # by tensor name, in key order


def parse_index(data: bytes, path: str = "<index>") -> BundleIndex:
    """Parse and validate index bytes; raise CheckpointError naming `path` on any problem."""
    buf = memoryview(data)
    try:
        items = _table_items(buf)
        if not items or items[0][0] != b"":
            raise _Corrupt("the bundle header (empty key) is missing")
        header = _parse_header(items[0][1])
        entries = {}
        for key, value in items[1:]:
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise _Corrupt(f"tensor name {key!r} is not UTF-8") from None
            entries[name] = _parse_entry(name, value)
    except _Corrupt as e:
        raise CheckpointError(f"{path}: {e}") from None
    return BundleIndex(path, header, entries)


def read_index(path: str) -> BundleIndex:
    """Read, parse and validate a checkpoint's .index file."""
    try:
        if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
            raise CheckpointError(f"{path}: not a regular file")     # a FIFO would block open() forever
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_INDEX_BYTES:
                raise CheckpointError(f"{path}: {size} bytes is far too large for a checkpoint index")
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint index") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    return parse_index(data, path)


def check_data_ranges(index: BundleIndex, data_path: str, data_size: int) -> None:
    """Every tensor lies inside the data file, and no two tensors share bytes."""
    spans = sorted((e.offset, e.offset + e.size, e.name) for e in index.entries.values() if e.size)
    for begin, end, name in spans:
        if end > data_size:
            raise CheckpointError(
                f"{data_path}: file is {data_size} bytes, but tensor '{name}' needs bytes [{begin}, {end}) "
                f"(truncated or from another checkpoint)")
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{index.path}: tensors '{a}' and '{b}' overlap in the data file")


class TensorBundle:
    """A checkpoint opened for reading: validated index + the data file mapped read-only.

        b = TensorBundle("dir/model.ckpt")
        wte = b.tensor("model/wte")        # numpy view of the mapped file, no copy
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.index = read_index(prefix + ".index")
        self.data_path = data_filename(prefix, 0, self.index.header.num_shards)
        try:
            fd = os.open(self.data_path, os.O_RDONLY)
        except FileNotFoundError:
            raise CheckpointError(f"{self.data_path}: file not found (the index names one data shard)") from None
        except OSError as e:
            raise CheckpointError(f"{self.data_path}: cannot open ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{self.data_path}: not a regular file")
            self.data_size = st.st_size
            check_data_ranges(self.index, self.data_path, self.data_size)
            # mmap cannot map an empty file; a bundle of empty tensors needs no mapping.
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if self.data_size else None
        except OSError as e:
            raise CheckpointError(f"{self.data_path}: cannot map ({e.strerror})") from None
        finally:
            os.close(fd)

    @property
    def entries(self) -> dict[str, Entry]:
        return self.index.entries

    def raw(self, name: str) -> memoryview:
        """The tensor's bytes in the data file (read-only, no copy)."""
        e = self.index.entries[name]
        if e.size == 0:
            return memoryview(b"")
        return memoryview(self._map)[e.offset:e.offset + e.size]

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy array in its stored dtype (bfloat16 appears as uint16): a view of the
        mapped file, or an aligned copy when its offset is not a multiple of the item size (C code reads a
        float32 tensor through a float*, which must be aligned)."""
        e = self.index.entries[name]
        if e.dtype == STRING:
            raise CheckpointError(f"{self.index.path}: tensor '{name}' holds strings, which cannot be viewed")
        dtype = DTYPES.get(e.dtype, np.dtype("<u2"))
        return st_types.aligned(np.frombuffer(self.raw(name), dtype=dtype).reshape(e.shape))

    def verify(self, names=None, check_finite: bool = True) -> int:
        """Check the CRC-32C of every tensor (or of `names`); return the number of bytes checked.

        With `check_finite`, float32, float16 and bfloat16 tensors must also hold no NaN or infinity (float32's
        counted in the CRC pass, the 16-bit types' in a second pass over the tensor).
        """
        total = 0
        for name in (self.index.entries if names is None else names):
            e = self.index.entries[name]
            raw = self.raw(name)
            if e.dtype == STRING:
                crc, nonfinite = self._string_crc(e, raw), 0
            elif check_finite and e.dtype == 1:
                crc, nonfinite = checksum_f32(raw)
            else:
                crc, nonfinite = crc32c(raw), 0
                if check_finite and e.dtype in _HALF:
                    nonfinite = st_types.count_nonfinite(self.tensor(name), _HALF[e.dtype])
            if crc != e.crc32c:
                raise CheckpointError(f"{self.data_path}: checksum mismatch in tensor '{name}' "
                                      f"(bytes [{e.offset}, {e.offset + e.size}) are corrupt)")
            if nonfinite:
                raise CheckpointError(f"{self.data_path}: tensor '{name}' holds {nonfinite} NaN/inf values")
            total += e.size
        return total

    def _string_crc(self, e: Entry, raw: memoryview) -> int:
        """CRC of a string tensor as TF computes it (tensor_bundle.cc WriteStringTensor): over each length
        as a u32 (u64 if >= 2**32), then the 4 stored length-checksum bytes, then the string bytes."""
        numel = 1
        for d in e.shape:
            numel *= d
        crc = pos = total = 0
        try:
            for _ in range(numel):
                n, pos = _varint(raw, pos, len(raw), 10, f"the lengths of string tensor '{e.name}'")
                crc = crc32c(struct.pack("<I" if n < 1 << 32 else "<Q", n), crc)
                total += n
        except _Corrupt as err:
            raise CheckpointError(f"{self.data_path}: {err}") from None
        if pos + 4 + total != len(raw):
            raise CheckpointError(f"{self.data_path}: string tensor '{e.name}' lengths do not add up to its size")
        if unmask_crc(int.from_bytes(raw[pos:pos + 4], "little")) != crc:
            raise CheckpointError(f"{self.data_path}: checksum mismatch in the lengths of string tensor '{e.name}'")
        return crc32c(raw[pos + 4:], crc32c(raw[pos:pos + 4], crc))
