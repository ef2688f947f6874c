"""Write TensorFlow tensor-bundle checkpoints (P.index + P.data-00000-of-00001) without TensorFlow.

Byte-compatible with TF's BundleWriter (tensorflow/core/util/tensor_bundle): the index is a LevelDB-style
table with no compression, 16-entry restarts in data blocks, 256 KiB target block size, shortest separators
in the index block, and a 48-byte footer; tensor bytes are dense (alignment 1) in the order they are added.
Used by tests and benchmarks to make random-weight checkpoints of any size. The format is TensorFlow's
tensorflow/core/protobuf/tensor_bundle.proto and tensorflow/core/util/tensor_bundle/tensor_bundle.cc, over the
LevelDB table format (leveldb doc/table_format.md).
"""
from __future__ import annotations

import os
import struct
from typing import Iterable, Mapping, Sequence

import numpy as np

from ._crc32c import crc32c

TABLE_MAGIC = 0xDB4775248B80FB57
BLOCK_SIZE = 256 * 1024          # table_options.h block_size
RESTART_INTERVAL = 16            # table_options.h block_restart_interval (the index block uses 1)
MASK_DELTA = 0xA282EAD8

# DataType enum values (types.proto) of the dtypes we write.
DTYPES = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3, np.dtype("int64"): 9,
          np.dtype("float16"): 19}


def mask_crc(crc: int) -> int:
    """TF's stored form of a CRC-32C: rotate right by 15 and add a constant (crc32c.h Mask)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def data_filename(prefix: str, shard: int = 0, num_shards: int = 1) -> str:
    """P.data-00000-of-00001 (naming.cc DataFilename)."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


# --- protobuf encoding ----------------------------------------------------------------------------

def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64                 # proto int32/int64: negative values are 10-byte two's complement
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field_varint(field: int, v: int) -> bytes:
    return b"" if v == 0 else _varint(field << 3) + _varint(v)    # proto3 omits defaults


def _field_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_header(num_shards: int = 1, producer: int = 1, min_consumer: int = 0) -> bytes:
    """BundleHeaderProto{num_shards, endianness=LITTLE, version{producer, min_consumer}}."""
    version = _field_varint(1, producer) + _field_varint(2, min_consumer)
    return _field_varint(1, num_shards) + _field_bytes(3, version)


def encode_entry(dtype: int, shape: Sequence[int], offset: int, size: int, crc: int,
                 shard_id: int = 0) -> bytes:
    """BundleEntryProto for one tensor; `crc` is the unmasked CRC-32C of its bytes."""
    dims = b"".join(_field_bytes(2, _field_varint(1, d)) for d in shape)
    return (_field_varint(1, dtype) + _field_bytes(2, dims) + _field_varint(3, shard_id)
            + _field_varint(4, offset) + _field_varint(5, size)
            + bytes([6 << 3 | 5]) + struct.pack("<I", mask_crc(crc)))


# --- table (the .index file) ----------------------------------------------------------------------

class _BlockBuilder:
    """Prefix-compressed entries + restart array (block_builder.cc)."""

    def __init__(self, restart_interval: int):
        self.restart_interval = restart_interval
        self.reset()

    def reset(self):
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def empty(self) -> bool:
        return not self.buf

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def add(self, key: bytes, value: bytes):
        shared = 0
        if self.counter < self.restart_interval:
            n = min(len(key), len(self.last_key))
            while shared < n and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        self.buf += key[shared:] + value
        self.last_key = key
        self.counter += 1

    def finish(self) -> bytes:
        return bytes(self.buf) + b"".join(struct.pack("<I", r) for r in self.restarts) \
            + struct.pack("<I", len(self.restarts))


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """A short key in [start, limit) (leveldb BytewiseComparator::FindShortestSeparator)."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n and start[i] < 0xFF and start[i] + 1 < limit[i]:
        return start[:i] + bytes([start[i] + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    """A short key >= key (FindShortSuccessor)."""
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def build_table(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The complete .index file for (key, value) pairs in strictly increasing key order (table_builder.cc)."""
    out = bytearray()
    data, index = _BlockBuilder(RESTART_INTERVAL), _BlockBuilder(1)

    def write_block(block: _BlockBuilder) -> bytes:
        raw = block.finish()
        handle = _varint(len(out)) + _varint(len(raw))
        out.extend(raw)
        out.extend(b"\x00" + struct.pack("<I", mask_crc(crc32c(raw + b"\x00"))))
        block.reset()
        return handle

    pending = None                   # handle of the last flushed data block, waiting for its separator
    last_key = None
    for key, value in items:
        if last_key is not None and key <= last_key:
            raise ValueError(f"keys must be strictly increasing: {key!r} after {last_key!r}")
        if pending is not None:
            index.add(_shortest_separator(last_key, key), pending)
            pending = None
        last_key = key
        data.add(key, value)
        if data.size_estimate() >= BLOCK_SIZE:
            pending = write_block(data)
    if not data.empty():
        pending = write_block(data)
    metaindex = write_block(_BlockBuilder(RESTART_INTERVAL))
    if pending is not None:
        index.add(_short_successor(last_key), pending)
    index_handle = write_block(index)
    footer = (metaindex + index_handle).ljust(40, b"\x00")
    out.extend(footer + struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32))
    return bytes(out)


def build_index(entries: Iterable[tuple[str, np.dtype, Sequence[int], int, int, int]]) -> bytes:
    """Index bytes for (name, dtype, shape, offset, size, crc) tuples, in any order."""
    items = [(b"", encode_header())]
    for name, dtype, shape, offset, size, crc in entries:
        key = name.encode("utf-8")
        if not key:
            raise ValueError("the empty tensor name is reserved for the bundle header")
        items.append((key, encode_entry(DTYPES[np.dtype(dtype)], shape, offset, size, crc)))
    items.sort(key=lambda kv: kv[0])
    return build_table(items)


# --- streaming writer -----------------------------------------------------------------------------

class BundleWriter:
    """Stream tensors into P.data-00000-of-00001, then write P.index on `finish()`.

        with BundleWriter("dir/model.ckpt") as w:
            w.add("model/wte", array)                  # or w.add_chunks(name, shape, dtype, chunks)

    Files are written under temporary names and renamed into place on success.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._data_path = data_filename(prefix)
        self._tmp_data = self._data_path + ".tmp"
        self._file = open(self._tmp_data, "wb")
        self._offset = 0
        self._entries: dict[str, tuple] = {}

    def add(self, name: str, array) -> None:
        """Append one tensor (any array-like of a supported dtype), C order."""
        a = np.asarray(array)
        a = a if a.flags.c_contiguous else a.copy(order="C")   # (ascontiguousarray would make 0-d 1-d)
        self.add_chunks(name, a.shape, a.dtype, [a.reshape(-1)])

    def add_chunks(self, name: str, shape: Sequence[int], dtype, chunks: Iterable[np.ndarray]) -> None:
        """Append one tensor whose C-order values arrive as a sequence of 1-D chunks (for big tensors)."""
        dtype = np.dtype(dtype)
        if dtype not in DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dtype}")
        if not name or name in self._entries:
            raise ValueError(f"tensor name {name!r} is empty or already written")
        shape = tuple(int(d) for d in shape)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        crc, written = 0, 0
        le = dtype.newbyteorder("<")
        for chunk in chunks:
            b = np.ascontiguousarray(chunk, dtype=le).reshape(-1).view(np.uint8)
            crc = crc32c(b, crc)
            self._file.write(b)
            written += b.size
        if written != size:
            raise ValueError(f"{name}: got {written} bytes for shape {list(shape)} ({size} expected)")
        self._entries[name] = (name, dtype, shape, self._offset, size, crc)
        self._offset += size

    def finish(self) -> None:
        """Close the data file and write the index next to it."""
        self._file.close()
        index = build_index(self._entries.values())
        with open(self.prefix + ".index.tmp", "wb") as f:
            f.write(index)
        os.replace(self._tmp_data, self._data_path)
        os.replace(self.prefix + ".index.tmp", self.prefix + ".index")

    def abort(self) -> None:
        self._file.close()
        for p in (self._tmp_data, self.prefix + ".index.tmp"):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def write_bundle(prefix: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Write `tensors` as a checkpoint at `prefix`, data in sorted-name order (as TF's Saver does)."""
    with BundleWriter(prefix) as w:
        for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
            w.add(name, tensors[name])


def write_checkpoint_file(directory: str, prefix_name: str = "model.ckpt") -> None:
    """The small `checkpoint` text file TF's Saver keeps beside the bundle (readers ignore it)."""
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "{prefix_name}"\nall_model_checkpoint_paths: "{prefix_name}"\n')
