"""The tensor-bundle reader and writer: CRC-32C, encodings against the spec's real bytes, round trips,
and every kind of corruption raising CheckpointError (never IndexError, struct.error or a numpy error)."""
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gpt2cy import CheckpointError
from gpt2cy.formats._crc32c import checksum_f32, crc32c, hardware_accelerated
from gpt2cy.formats.tfbundle import (TensorBundle, check_data_ranges, data_filename, parse_index, read_index,
                             unmask_crc)
from gpt2cy.formats.tfbundle_writer import (BundleWriter, _BlockBuilder, _field_bytes, _field_varint, _varint,
                                    build_index, build_table, encode_entry, encode_header, mask_crc,
                                    write_bundle)


def crc32c_reference(data: bytes) -> int:
    """Bit-at-a-time CRC-32C, the definition the fast paths must match."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


# --- CRC-32C --------------------------------------------------------------------------------------

@pytest.mark.parametrize("hardware", [True, False])
def test_crc32c_check_value(hardware):
    assert crc32c(b"123456789", hardware=hardware) == 0xE3069283
    assert crc32c(b"", hardware=hardware) == 0
    assert crc32c(bytes(32), hardware=hardware) == 0x8A9136AA       # RFC 3720 B.4 test vector
    assert crc32c(b"\xff" * 32, hardware=hardware) == 0x62A8AB43


def test_crc32c_is_not_zlib():
    assert crc32c(b"123456789") != zlib.crc32(b"123456789")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 7), st.integers(0, 300))
def test_crc32c_paths_agree_with_reference(data, skip, cut):
    data = data[skip:]                                  # unaligned starts exercise the head loops
    want = crc32c_reference(data)
    assert crc32c(data) == want
    assert crc32c(data, hardware=False) == want
    cut = min(cut, len(data))
    assert crc32c(data[cut:], crc32c(data[:cut])) == want  # continuation


def test_crc32c_accepts_numpy_and_memoryview(rng):
    a = rng.standard_normal(1001).astype(np.float32)
    raw = a.tobytes()
    assert crc32c(a.view(np.uint8)) == crc32c(memoryview(raw)) == crc32c_reference(raw)


def test_hardware_flag_is_bool():
    assert hardware_accelerated() in (True, False)


@pytest.mark.parametrize("hardware", [True, False])
def test_checksum_f32_counts_nonfinite(rng, hardware):
    a = rng.standard_normal(1003).astype(np.float32)
    assert checksum_f32(a.view(np.uint8), hardware=hardware) == (crc32c(a.view(np.uint8)), 0)
    for i, v in [(0, np.inf), (7, -np.inf), (500, np.nan), (1002, np.nan)]:    # head, word, tail
        a[i] = v
    a[9] = np.finfo(np.float32).max                      # large but finite
    a[10] = -0.0
    crc, bad = checksum_f32(a.view(np.uint8), hardware=hardware)
    assert bad == 4 and crc == crc32c(a.view(np.uint8))


def test_mask_roundtrip_and_spec_example():
    for c in (0, 1, 0xE3069283, 0xFFFFFFFF, 0x12345678):
        assert unmask_crc(mask_crc(c)) == c
    assert mask_crc(0) == 0xA282EAD8


# --- encodings against the spec's bytes written by TensorFlow -------------------------------------

def test_header_bytes_match_tensorflow():
    assert encode_header() == bytes.fromhex("08011a020801")


def test_entry_bytes_match_tensorflow():
    real = bytes.fromhex("08 01 12 08 12 02 08 08 12 02 08 64 28 80 19 35 3e ff c5 23")
    assert encode_entry(1, (8, 100), 0, 3200, unmask_crc(0x23C5FF3E)) == real


def test_varint_encoding():
    assert _varint(0) == b"\x00"
    assert _varint(300) == b"\xac\x02"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"           # negative int64: ten bytes


def test_footer_handles_match_tensorflow():
    assert _varint(961) + _varint(8) + _varint(974) + _varint(15) == bytes.fromhex("c10708ce070f")


# --- round trips ----------------------------------------------------------------------------------

def test_roundtrip_dtypes_and_shapes(tmp_path, rng):
    tensors = {
        "model/wte": rng.standard_normal((5, 3)).astype(np.float32),
        "a/f64": rng.standard_normal(4),
        "a/i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "a/i64": np.array([2 ** 40, -1], dtype=np.int64),
        "a/f16": np.array([1.5, -2.0], dtype=np.float16),
        "a/scalar": np.float32(3.25),
        "a/empty": np.zeros((0, 4), np.float32),
        "model/h0/attn/c_attn/w": rng.standard_normal((1, 3, 9)).astype(np.float32),
    }
    prefix = str(tmp_path / "model.ckpt")
    write_bundle(prefix, tensors)
    b = TensorBundle(prefix)
    assert list(b.entries) == sorted(tensors)
    for name, want in tensors.items():
        got = b.tensor(name)
        assert got.dtype == np.asarray(want).dtype and got.shape == np.shape(want)
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable
    assert b.verify() == sum(np.asarray(t).nbytes for t in tensors.values())
    # dense data, in sorted-name order, as TF's Saver writes it
    offsets = [b.entries[n].offset for n in sorted(tensors)]
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_streamed_chunks_equal_one_shot(tmp_path, rng):
    a = rng.standard_normal((7, 11)).astype(np.float32)
    with BundleWriter(str(tmp_path / "x")) as w:
        w.add_chunks("t", a.shape, np.float32, [a.reshape(-1)[:20], a.reshape(-1)[20:]])
    np.testing.assert_array_equal(TensorBundle(str(tmp_path / "x")).tensor("t"), a)


def test_writer_rejects_misuse(tmp_path):
    w = BundleWriter(str(tmp_path / "x"))
    w.add("t", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="already written"):
        w.add("t", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="bytes for shape"):
        w.add_chunks("u", (4,), np.float32, [np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="dtype"):
        w.add("s", np.array(["x"]))
    w.abort()
    assert not list(tmp_path.iterdir())


def test_many_tensors_span_several_data_blocks(tmp_path):
    # ~400 KB of entries: more than the 256 KiB target block, so the index block has several separators.
    names = [f"layer{i:05d}/{'w' * 40}{i % 7}" for i in range(6000)]
    entries = [(n, np.float32, (2,), 8 * i, 8, i) for i, n in enumerate(names)]
    data = build_index(entries)
    index = parse_index(data, "big.index")
    assert list(index.entries) == sorted(names)
    assert index.entries[names[1234]].offset == 8 * 1234 and index.entries[names[1234]].crc32c == 1234
    # count the index block's entries: one per data block
    footer = data[-48:]
    _, p = _read_varint(footer, 0)
    _, p = _read_varint(footer, p)
    index_off, p = _read_varint(footer, p)
    index_size, _ = _read_varint(footer, p)
    block = data[index_off:index_off + index_size]
    assert struct.unpack("<I", block[-4:])[0] >= 2          # restart interval 1 -> restarts == entries


def _read_varint(buf, pos):
    v = shift = 0
    while True:
        b = buf[pos]
        v |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return v, pos
        shift += 7


# --- corruption: whole-file mutations -------------------------------------------------------------

@pytest.fixture
def small_bundle(tmp_path, rng):
    tensors = {"model/wte": rng.standard_normal((4, 3)).astype(np.float32),
               "model/wpe": rng.standard_normal((2, 3)).astype(np.float32),
               "model/ln_f/g": np.ones(3, np.float32), "global_step": np.array(7, np.int64)}
    prefix = str(tmp_path / "model.ckpt")
    write_bundle(prefix, tensors)
    return prefix, tensors


def test_every_flipped_index_byte_is_caught_or_harmless(small_bundle):
    prefix, _ = small_bundle
    data = open(prefix + ".index", "rb").read()
    original = parse_index(data).entries
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            try:
                index = parse_index(bytes(bad), "x.index")
            except CheckpointError as e:
                assert str(e).startswith("x.index: ")
            else:   # only the footer's zero padding is unchecked (TensorFlow ignores it too)
                assert len(data) - 48 <= i < len(data) - 8 and index.entries == original


def test_every_truncation_is_caught(small_bundle):
    prefix, _ = small_bundle
    data = open(prefix + ".index", "rb").read()
    for n in range(len(data)):
        with pytest.raises(CheckpointError):
            parse_index(data[:n], "x.index")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_never_crash(data, with_magic):
    if with_magic:
        data = data + struct.pack("<Q", 0xDB4775248B80FB57)
    with pytest.raises(CheckpointError):
        parse_index(data, "r.index")


def _reseal(data: bytes, offset: int, size: int) -> bytes:
    """Recompute the CRC of the block at `offset`, so that structural checks (not the CRC) must catch damage."""
    out = bytearray(data)
    out[offset + size + 1:offset + size + 5] = struct.pack("<I", mask_crc(crc32c(bytes(out[offset:offset + size + 1]))))
    return bytes(out)


def _blocks(data: bytes):
    """(offset, size) of the single data block and of the index block of a small one-block index."""
    footer = data[-48:]
    meta_off, p = _read_varint(footer, 0)
    _, p = _read_varint(footer, p)
    index_off, p = _read_varint(footer, p)
    index_size, _ = _read_varint(footer, p)
    return [(0, meta_off - 5), (index_off, index_size)]     # the data block ends where the metaindex starts


def test_every_mutated_block_byte_with_valid_crc_is_caught_or_parsed(small_bundle):
    prefix, _ = small_bundle
    data = open(prefix + ".index", "rb").read()
    outcomes = {"error": 0, "parsed": 0}
    for blk_off, blk_size in _blocks(data):
        for i in range(blk_off, blk_off + blk_size):
            for flip in (0x01, 0x40, 0x80, 0xFF):
                bad = bytearray(data)
                bad[i] ^= flip
                try:
                    parse_index(_reseal(bytes(bad), blk_off, blk_size), "x.index")
                    outcomes["parsed"] += 1      # e.g. a changed digit of a size or a crc: still well-formed
                except CheckpointError:
                    outcomes["error"] += 1
    assert outcomes["error"] > outcomes["parsed"] > 0


SMALL_INDEX = build_index([("model/wte", np.float32, (4, 3), 0, 48, 1), ("model/wpe", np.float32, (2, 3), 48, 24, 2),
                           ("model/h0/ln_1/g", np.float32, (3,), 72, 12, 3), ("global_step", np.int64, (), 84, 8, 4)])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=8))
def test_random_block_mutations_with_valid_crc_never_crash(mutations):
    """Several bytes changed at once, CRC recomputed: structural checks alone must stand between the
    damage and an IndexError/struct.error."""
    data = bytearray(SMALL_INDEX)
    blocks = _blocks(SMALL_INDEX)
    for in_index_block, pos, xor in mutations:
        off, size = blocks[in_index_block]
        data[off + pos % size] ^= xor
    for off, size in blocks:
        data = bytearray(_reseal(bytes(data), off, size))
    try:
        parse_index(bytes(data), "x.index")
    except CheckpointError:
        pass


# --- corruption: the rules tensor_bundle.proto and LevelDB's table format imply -------------------

def _table(items, restart_interval=16) -> bytes:
    """A table with one data block holding `items` exactly as given (no ordering checks)."""
    blk = _BlockBuilder(restart_interval)
    for k, v in items:
        blk.add(k, v)
    return _table_from_blocks([blk.finish()], [items[-1][0] + b"\xff" if items else b"\x00"])


def _table_from_blocks(blocks, separators, block_type=0) -> bytes:
    out = bytearray()

    def put(raw, t=block_type):
        h = _varint(len(out)) + _varint(len(raw))
        out.extend(raw + bytes([t]) + struct.pack("<I", mask_crc(crc32c(raw + bytes([t])))))
        return h
    handles = [put(b) for b in blocks]
    meta = put(_BlockBuilder(1).finish(), 0)
    index = _BlockBuilder(1)
    for sep, h in zip(separators, handles):
        index.add(sep, h)
    ih = put(index.finish(), 0)
    out.extend((meta + ih).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57))
    return bytes(out)


HEADER = (b"", encode_header())
WTE = (b"model/wte", encode_entry(1, (4, 3), 0, 48, 0))


def _expect_error(data, match):
    with pytest.raises(CheckpointError, match=match):
        parse_index(data, "t.index")


def test_table_helper_builds_valid_tables():
    assert list(parse_index(_table([HEADER, WTE])).entries) == ["model/wte"]


@pytest.mark.parametrize("header,match", [
    (encode_header(num_shards=2), "2 data shards"),
    (encode_header(num_shards=0), "0 data shards"),
    (_field_varint(1, 1) + _field_varint(2, 1), "big-endian"),
    (_field_varint(1, 1) + _field_varint(2, 5), "unknown endianness"),
    (encode_header(min_consumer=2), "reader of version 2"),
    (encode_header(producer=-1), "producer version -1"),
    (encode_header() + _field_bytes(3, _field_varint(1, 1) + _field_varint(3, 1)), "version 1 as bad"),
    (encode_header() + _field_bytes(3, _field_varint(1, 1) + _field_bytes(3, b"\x00\x01")), "version 1 as bad"),
    (b"\x08", "truncated varint"),
    (b"\x0b\x00", "wire type 3"),                                # a group
    (b"\x1a\x05\x08", "past the end"),
    (b"\x10\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "longer than 10"),
    (b"\x08\xff\xff\xff\xff\x7f", "out of int32"),
    (b"\x09" + bytes(8), "wire type 1, expected 0"),
])
def test_bad_headers(header, match):
    _expect_error(_table([(b"", header), WTE]), match)


def test_missing_header():
    _expect_error(_table([WTE]), "header .* is missing")
    _expect_error(_table([]), "header .* is missing")


def _shape(*dims, unknown_rank=False):
    return b"".join(_field_bytes(2, _field_varint(1, d)) for d in dims) + _field_varint(3, int(unknown_rank))


@pytest.mark.parametrize("entry,match", [
    (encode_entry(20, (2,), 0, 2, 0), "unsupported dtype 20"),
    (encode_entry(7, (5,), 0, 8, 0), "string tensor 'model/wte' has 8 bytes, too few for 5 elements"),
    (encode_entry(99, (2,), 0, 2, 0), "unsupported dtype 99"),
    (encode_entry(1, (4, 3), 0, 47, 0), "has 47 bytes, but shape \\[4, 3\\] of float32 needs 48"),
    (encode_entry(1, (4, 3), 0, 48, 0, shard_id=1), "in shard 1"),
    (encode_entry(1, (4, 3), -8, 48, 0), "negative offset"),
    (encode_entry(1, (-1, 3), 0, 48, 0), "unknown size"),
    (_field_varint(1, 1) + _field_bytes(2, _shape(2, unknown_rank=True)) + _field_varint(5, 8)
     + b"\x35" + bytes(4), "unknown rank"),
    (encode_entry(1, (4, 3), 0, 48, 0) + _field_bytes(7, b""), "slices"),
    (encode_entry(1, (4, 3), 0, 48, 0)[:-1], "truncated fixed32"),
    (encode_entry(1, (4, 3), 0, 48, 0)[:-5], "has no checksum"),
    (encode_entry(1, (2 ** 31, 2 ** 31, 2 ** 31), 0, 48, 0), "needs"),  # numel overflow: just a mismatch
    (_field_varint(1, 1) + _field_bytes(2, b"".join(_field_bytes(2, b"") for _ in range(300))), "more than 254"),
    (b"\x2d\x00\x00", "truncated fixed32"),
    (b"\x00\x00", "field number 0"),
])
def test_bad_entries(entry, match):
    _expect_error(_table([HEADER, (b"model/wte", entry)]), match)


def test_repeated_shape_fields_merge_like_protobuf():
    entry = (_field_varint(1, 1) + _field_bytes(2, _shape(4)) + _field_bytes(2, _shape(3))
             + _field_varint(5, 48) + b"\x35" + struct.pack("<I", mask_crc(5)))
    e = parse_index(_table([HEADER, (b"model/wte", entry)])).entries["model/wte"]
    assert e.shape == (4, 3) and e.crc32c == 5


def test_unknown_fields_are_skipped():
    entry = encode_entry(1, (4, 3), 0, 48, 0) + _field_varint(15, 3) + _field_bytes(16, b"xyz") + b"\x8d\x01" + bytes(4)
    assert parse_index(_table([HEADER, (b"model/wte", entry)])).entries["model/wte"].shape == (4, 3)


def test_keys_must_strictly_increase():
    _expect_error(_table([HEADER, (b"model/wte", WTE[1]), (b"model/wpe", WTE[1])]), "not strictly increasing")
    _expect_error(_table([HEADER, WTE, WTE]), "not strictly increasing")


def test_keys_must_increase_across_blocks_and_respect_separators():
    b1, b2 = _BlockBuilder(16), _BlockBuilder(16)
    b1.add(*HEADER)
    b1.add(*WTE)
    b2.add(b"model/a", WTE[1])
    _expect_error(_table_from_blocks([b1.finish(), b2.finish()], [b"model/x", b"model/z"]), "across blocks")
    b1.reset()
    b1.add(*HEADER)
    b1.add(*WTE)
    _expect_error(_table_from_blocks([b1.finish()], [b"model/a"]), "past its index separator")


def test_block_structure_rules():
    good = _BlockBuilder(16)
    good.add(*HEADER)
    good.add(*WTE)
    raw = good.finish()
    entries_len = len(raw) - 8
    _expect_error(_table_from_blocks([b"\x01\x00"], [b"z"]), "too short")
    _expect_error(_table_from_blocks([raw[:-4] + struct.pack("<I", 1000)], [b"z"]), "impossible restart count")
    _expect_error(_table_from_blocks([raw[:-8] + struct.pack("<I", 0)], [b"z"]), "impossible restart count 0")
    _expect_error(_table_from_blocks([raw[:-8] + struct.pack("<II", 3, 1)], [b"z"]), "first restart point is 3")
    # restart points: [0, entries_len] -> the second points past the entries
    _expect_error(_table_from_blocks([raw[:-8] + struct.pack("<III", 0, entries_len, 2)], [b"z"]),
                  "restart point .* is outside the entries")
    # restart at offset 1 (inside the first entry)
    _expect_error(_table_from_blocks([raw[:-8] + struct.pack("<III", 0, 1, 2)], [b"z"]), "a restart point is not at an entry")
    # decreasing restarts
    _expect_error(_table_from_blocks([raw[:-8] + struct.pack("<IIII", 0, 6, 5, 3)], [b"z"]), "restart points are not increasing")
    # a restart at the second entry, which shares a prefix with the first
    b = _BlockBuilder(16)
    b.add(b"model/a", WTE[1])
    b.add(b"model/b", WTE[1])
    raw2 = b.finish()
    second = 3 + len(b"model/a") + len(WTE[1])
    _expect_error(_table_from_blocks([raw2[:-8] + struct.pack("<III", 0, second, 2)], [b"z"]),
                  "does not hold a full key")


def test_entry_lengths_and_varints_in_blocks():
    # shared larger than the previous key
    blk = b"\x00\x01\x00a" + b"\x05\x01\x00b"
    _expect_error(_table_from_blocks([blk + struct.pack("<II", 0, 1)], [b"z"]), "shares 5 bytes")
    # value length past the entries
    blk = b"\x00\x00\x09" + b"x"
    _expect_error(_table_from_blocks([blk + struct.pack("<II", 0, 1)], [b"z"]), "runs past the entries")
    # unterminated varint
    blk = b"\x80\x80"
    _expect_error(_table_from_blocks([blk + struct.pack("<II", 0, 1)], [b"z"]), "truncated varint")
    # varint32 over 32 bits
    blk = b"\xff\xff\xff\xff\x7f\x00\x00"
    _expect_error(_table_from_blocks([blk + struct.pack("<II", 0, 1)], [b"z"]), "out of range")


def test_block_type_and_checksum():
    raw = _BlockBuilder(16)
    raw.add(*HEADER)
    _expect_error(_table_from_blocks([raw.finish()], [b"z"], block_type=1), "Snappy")
    _expect_error(_table_from_blocks([raw.finish()], [b"z"], block_type=7), "bad block type 7")
    good = _table([HEADER, WTE])
    bad = bytearray(good)
    bad[5] ^= 1
    _expect_error(bytes(bad), "checksum mismatch in data block 0")


def test_footer_rules():
    good = _table([HEADER, WTE])
    _expect_error(good[:-1] + b"\x00", "bad magic")
    _expect_error(good[:47], "too short")
    _expect_error(b"", "0 bytes")
    # index handle pointing past the footer
    meta_off, p = _read_varint(good[-48:], 0)
    meta_size, _ = _read_varint(good[-48:], p)
    footer = _varint(meta_off) + _varint(meta_size) + _varint(len(good)) + _varint(10)
    _expect_error(good[:-48] + footer.ljust(40, b"\0") + good[-8:], "runs past the end")
    # a handle with an 11-byte varint
    footer = b"\x80" * 11
    _expect_error(good[:-48] + footer.ljust(40, b"\0") + good[-8:], "longer than 10")
    # handles whose varints run into the magic
    footer = b"\x80" * 9 + b"\x01" + b"\x80" * 9 + b"\x01" + b"\x80" * 9 + b"\x01" + b"\x80" * 9 + b"\x01"
    _expect_error(good[:-48] + footer + good[-8:], "overrun|runs past")


def test_non_utf8_tensor_name():
    _expect_error(_table([HEADER, (b"model/\xff", WTE[1])]), "not UTF-8")


# --- data file ------------------------------------------------------------------------------------

def test_data_file_checks(small_bundle):
    prefix, tensors = small_bundle
    data_path = data_filename(prefix)
    raw = open(data_path, "rb").read()
    # truncated by one byte
    open(data_path, "wb").write(raw[:-1])
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001: file is \d+ bytes, but tensor"):
        TensorBundle(prefix)
    # empty
    open(data_path, "wb").write(b"")
    with pytest.raises(CheckpointError, match="file is 0 bytes"):
        TensorBundle(prefix)
    # a directory
    import os
    os.remove(data_path)
    os.mkdir(data_path)
    with pytest.raises(CheckpointError, match="not a regular file"):
        TensorBundle(prefix)
    os.rmdir(data_path)
    # missing
    with pytest.raises(CheckpointError, match="file not found"):
        TensorBundle(prefix)
    # a flipped data byte: opening works (no data read), verify names the tensor
    bad = bytearray(raw)
    bad[-1] ^= 0x10
    open(data_path, "wb").write(bad)
    b = TensorBundle(prefix)
    last = max(b.entries.values(), key=lambda e: e.offset).name
    with pytest.raises(CheckpointError, match=f"checksum mismatch in tensor '{last}'"):
        b.verify()


def test_verify_reports_nonfinite(tmp_path):
    a = np.ones(10, np.float32)
    a[3] = np.nan
    write_bundle(str(tmp_path / "m"), {"t": a})
    b = TensorBundle(str(tmp_path / "m"))
    with pytest.raises(CheckpointError, match="1 NaN/inf"):
        b.verify()
    assert b.verify(check_finite=False) == 40


def test_verify_reports_nonfinite_16_bit_floats(tmp_path):
    half = np.array([1, np.inf, 2, np.nan], np.float16)
    bf16 = (np.array([1, -np.inf, 3], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    write_bundle(str(tmp_path / "h"), {"h": half})
    with pytest.raises(CheckpointError, match="'h' holds 2 NaN/inf"):
        TensorBundle(str(tmp_path / "h")).verify()
    # bfloat16 (DataType 14): the writer has no numpy dtype for it, so write the entry by hand
    data = bf16.tobytes()
    (tmp_path / "b.data-00000-of-00001").write_bytes(data)
    (tmp_path / "b.index").write_bytes(build_table([(b"", encode_header()),
                                                    (b"b", encode_entry(14, (3,), 0, len(data), crc32c(data)))]))
    b = TensorBundle(str(tmp_path / "b"))
    assert b.entries["b"].dtype_name == "bfloat16"
    np.testing.assert_array_equal(b.tensor("b"), bf16)
    with pytest.raises(CheckpointError, match="'b' holds 1 NaN/inf"):
        b.verify()
    assert b.verify(check_finite=False) == 6


def test_unaligned_tensors_are_copied_aligned(tmp_path, rng):
    """TF writes tensor bytes densely: after a 3-element float16 every offset is 6 mod 8, so the float32 data
    (and everything after it) is misaligned for a float*; the reader hands out aligned copies of those."""
    tensors = {"a/half": np.array([1, 2, 3], np.float16), "b/f32": rng.standard_normal((3, 5)).astype(np.float32),
               "c/f64": rng.standard_normal(3), "d/f32": np.arange(7, dtype=np.float32)}
    write_bundle(str(tmp_path / "m"), tensors)
    b = TensorBundle(str(tmp_path / "m"))
    assert [b.entries[n].offset % 4 for n in sorted(tensors)] == [0, 2, 2, 2]
    for name, want in tensors.items():
        got = b.tensor(name)
        assert got.flags.aligned and got.flags.c_contiguous and not got.flags.writeable
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert not b.tensor("a/half").flags.owndata          # an aligned tensor stays a view of the mapped file
    assert b.tensor("b/f32").flags.owndata
    assert b.verify() == sum(t.nbytes for t in tensors.values())


def test_overlapping_tensors_rejected(tmp_path):
    data = build_index([("a", np.float32, (4,), 0, 16, 0), ("b", np.float32, (4,), 8, 16, 0)])
    index = parse_index(data, "o.index")
    with pytest.raises(CheckpointError, match="'a' and 'b' overlap"):
        check_data_ranges(index, "o.data", 24)
    check_data_ranges(parse_index(build_index([("a", np.float32, (4,), 0, 16, 0)])), "o.data", 16)


def test_read_index_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        read_index(str(tmp_path / "nope.index"))
    with pytest.raises(CheckpointError, match="is a directory"):
        read_index(str(tmp_path))
    (tmp_path / "text.index").write_text("this is not a checkpoint, just some text " * 10)
    with pytest.raises(CheckpointError, match="text.index: not a TensorFlow checkpoint index"):
        read_index(str(tmp_path / "text.index"))
