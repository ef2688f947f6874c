"""GGUF files: the reader against gguf-py's writer and reader (an independent implementation), every header
rule (the CVE classes: counts, lengths, sizes, offsets, alignment), every flipped header byte and every
truncation raising CheckpointError (never another exception), the GPT-2 mapping, and round trips through
`gpt2cy convert` whose logits equal the same model loaded in that dtype (np.array_equal: the file holds the
bytes the engine multiplies by)."""
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gpt2cy
from gpt2cy import CheckpointError
from gpt2cy.cli.main import main
from gpt2cy.config import Config
from gpt2cy.formats import gguf as G
from gpt2cy.formats.gguf import GGUFFile, gguf_names, gguf_ne, load_gguf, parse_header
from gpt2cy.formats.gguf_write import GGUFTensor, gpt2_metadata, header_bytes, size_label, write_gguf
from gpt2cy.formats.layout import GGUF, find_layout
from gpt2cy.loading import export_gguf
from gpt2cy.tensors import MATMUL, tensor_specs

gguf = pytest.importorskip("gguf")

# a toy vocabulary: enough for the reader's tokenizer checks (ids, merges naming tokens)
TOY_TOKENS = ["a", "b", "c", "ab", "abc", "Ġ", "Ġa", "<|endoftext|>"]
TOY_MERGES = [("a", "b"), ("ab", "c"), ("Ġ", "a")]
TOY = Config(n_vocab=len(TOY_TOKENS), n_ctx=4, n_embd=32, n_head=2, n_layer=1, name="toy")


def toy_tensors(config=TOY, seed=0, wte_type="f32"):
    """GGUFTensors of a random GPT-2 in llama.cpp's names and orientation (matmul weights as [out, in])."""
    rng = np.random.default_rng(seed)
    names = gguf_names(config)
    out = []
    for spec in tensor_specs(config):
        a = (rng.standard_normal(spec.shape) * 0.02).astype(np.float32)
        data = a.T if spec.role == MATMUL else a
        kind = "f32"
        if spec.name == "wte" and wte_type != "f32":
            data = gguf.quants.quantize(a, getattr(gguf.GGMLQuantizationType, wte_type.upper()))
            kind = wte_type
        out.append(GGUFTensor(names[spec.name], kind, gguf_ne(spec.name, spec.shape, spec.role), data))
    return out


def toy_gguf(path, config=TOY, wte_type="f32", metadata=None):
    md = gpt2_metadata(config, "f32", {t: i for i, t in enumerate(TOY_TOKENS)}, TOY_MERGES, "toy")
    write_gguf(path, metadata if metadata is not None else md, toy_tensors(config, wte_type=wte_type))
    return str(path)


@pytest.fixture
def toy_file(tmp_path):
    return toy_gguf(tmp_path / "toy.gguf", wte_type="q8_0")


# --- the container against gguf-py -------------------------------------------------------------------

def test_reader_reads_what_gguf_py_writes(tmp_path):
    path = str(tmp_path / "ref.gguf")
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 1 << 60)
    w.add_int64("t.i64", -(1 << 60))
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_str", ["x", "", "zz"])
    w.add_array("t.nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("f", a)
    w.add_tensor("q", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("h", a.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(path)
    md = f.metadata
    assert md["general.architecture"] == (G.STRING, "gpt2", None)
    scalars = {"t.u8": (G.UINT8, 200), "t.i8": (G.INT8, -100), "t.u16": (G.UINT16, 60000),
               "t.i16": (G.INT16, -30000), "t.u32": (G.UINT32, 4_000_000_000), "t.i32": (G.INT32, -2_000_000_000),
               "t.f32": (G.FLOAT32, 0.25), "t.u64": (G.UINT64, 1 << 60), "t.i64": (G.INT64, -(1 << 60)),
               "t.f64": (G.FLOAT64, 1e-300), "t.bool": (G.BOOL, True), "t.str": (G.STRING, "héllo ✓")}
    for k, (t, v) in scalars.items():
        assert (md[k].type, md[k].value) == (t, v), k
    assert md["t.arr_i32"].elem_type == G.INT32 and md["t.arr_i32"].value.tolist() == [1, -2, 3]
    assert md["t.arr_str"].value == ["x", "", "zz"]
    nested = md["t.nested"]
    assert nested.elem_type == G.ARRAY and [v.value.tolist() for v in nested.value] == [[1, 2], [3]]
    assert f.tensors["f"].ne == (64, 3) and f.tensors["q"].type.name == "q8_0"
    np.testing.assert_array_equal(f.array("f"), a)
    np.testing.assert_array_equal(f.array("q"), q)
    np.testing.assert_array_equal(f.array("h"), a.astype(np.float16))
    assert not f.array("f").flags.writeable and not f.array("f").flags.owndata    # a view of the mapping


def test_ggml_type_table_matches_gguf_py():
    for t, (block, size) in gguf.GGML_QUANT_SIZES.items():
        ours = G.GGML_TYPES.get(int(t))
        assert ours is not None and (ours.block, ours.type_size) == (block, size), t.name
        assert ours.name.lower() == t.name.lower()


def test_gguf_py_reads_what_we_write(tmp_path):
    tensors = toy_tensors(wte_type="q8_0")
    md = [("a.str", G.STRING, "ü"), ("a.u32", G.UINT32, 7), ("a.f32", G.FLOAT32, 1.5), ("a.bool", G.BOOL, False),
          ("a.arr", G.ARRAY, [3, 4, 5], G.INT32), ("a.strs", G.ARRAY, ["p", "q"], G.STRING),
          ("a.i64", G.INT64, -5), ("a.f64", G.FLOAT64, 2.5)]
    path = str(tmp_path / "ours.gguf")
    size = write_gguf(path, md, tensors)
    assert size == os.path.getsize(path)
    r = gguf.GGUFReader(path)
    assert r.fields["a.str"].contents() == "ü" and r.fields["a.u32"].contents() == 7
    assert r.fields["a.f32"].contents() == 1.5 and r.fields["a.bool"].contents() is False
    assert r.fields["a.arr"].contents() == [3, 4, 5] and r.fields["a.strs"].contents() == ["p", "q"]
    assert r.fields["a.i64"].contents() == -5 and r.fields["a.f64"].contents() == 2.5
    got = {t.name: t for t in r.tensors}
    for t in tensors:
        g = got[t.name]
        assert g.tensor_type.name.lower() == t.type and tuple(int(d) for d in g.shape) == t.ne
        assert g.data_offset % 32 == 0
        np.testing.assert_array_equal(np.asarray(g.data).reshape(-1).view(np.uint8),
                                      np.ascontiguousarray(t.data).reshape(-1).view(np.uint8))


def test_writer_rejects_inconsistent_tensors(tmp_path):
    with pytest.raises(ValueError, match="bytes of data"):
        write_gguf(tmp_path / "x.gguf", [], [GGUFTensor("t", "f32", (4,), np.zeros(3, np.float32))])
    with pytest.raises(ValueError, match="unknown ggml type"):
        write_gguf(tmp_path / "x.gguf", [], [GGUFTensor("t", "f99", (4,), np.zeros(4, np.float32))])
    assert not os.path.exists(tmp_path / "x.gguf") and not os.path.exists(tmp_path / "x.gguf.partial")


def test_size_label_notation():
    assert [size_label(n) for n in (3_320_000, 124_439_808, 354_823_168, 1_557_611_200, 999)] == \
        ["3.3M", "124M", "355M", "1.6B", "1.0K"]


# --- header rules, one by one ----------------------------------------------------------------------

def _s(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _hdr(kvs=b"", n_kv=0, infos=b"", n_t=0, version=3, magic=b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, n_t, n_kv) + kvs + infos


def _info(name="t", ne=(32,), code=0, offset=0) -> bytes:
    return _s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", code, offset)


def _padded(head: bytes, data: bytes = bytes(256), alignment=32) -> bytes:
    return head + bytes(-len(head) % alignment) + data


BAD_HEADERS = [
    (b"GGUX" + bytes(20), "not a GGUF file"),
    (_hdr(version=1), "version 1 is not supported"),
    (_hdr(version=4), "unknown GGUF version 4"),
    (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    (_hdr(n_kv=1 << 62), "metadata count 4611686018427387904 is impossible"),
    (_hdr(n_t=1 << 40), "tensor count 1099511627776 is impossible"),
    (_hdr(_s("k") + struct.pack("<I", 8) + struct.pack("<Q", 1 << 63), 1), "truncated: metadata 'k'"),
    (_hdr(struct.pack("<Q", 1 << 40) + b"x" * 20, 1), "more than the 65535 allowed"),
    (_hdr(_s("") + struct.pack("<IB", 0, 1) + bytes(8), 1), "key #0 is empty"),
    (_hdr(_s(b"\xff\xfe") + struct.pack("<IB", 0, 1), 1), "key #0 is not UTF-8"),
    (_hdr(_s("k") + struct.pack("<IB", 0, 1) + _s("k") + struct.pack("<IB", 0, 1), 2), "'k' appears twice"),
    (_hdr(_s("k") + struct.pack("<IB", 13, 0), 1), "unknown value type 13"),
    (_hdr(_s("k") + struct.pack("<IB", 7, 2), 1), "bool with byte value 2"),
    (_hdr(_s("k") + struct.pack("<IIQ", 9, 99, 1) + bytes(8), 1), "array of unknown value type 99"),
    (_hdr(_s("k") + struct.pack("<IIQ", 9, 4, 1 << 61) + bytes(8), 1), "array length 2305843009213693952"),
    (_hdr(_s("k") + struct.pack("<IIQ", 9, 8, 1 << 58) + bytes(16), 1), "array length"),
    (_hdr(_s("k") + struct.pack("<IIQ", 9, 8, 1) + struct.pack("<Q", 1 << 50), 1), "truncated: metadata 'k'[0]"),
    (_hdr(_s("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0), 1),
     "nested more than 8 deep"),
    (_hdr(_s("general.alignment") + struct.pack("<IQ", 10, 32), 1), "general.alignment is uint64, must be uint32"),
    (_hdr(_s("general.alignment") + struct.pack("<II", 4, 48), 1), "48 is not a power of two"),
    (_hdr(_s("general.alignment") + struct.pack("<II", 4, 0), 1), "0 is not a power of two"),
    (_padded(_hdr(infos=_info(name="x" * 64), n_t=1)), "more than the 63 allowed"),
    (_padded(_hdr(infos=_info(name=""), n_t=1)), "tensor #0 has an empty name"),
    (_padded(_hdr(infos=_info() + _info(offset=128), n_t=2)), "tensor 't' appears twice"),
    (_padded(_hdr(infos=_info(ne=(1,) * 5), n_t=1)), "5 dimensions (1 to 4 allowed)"),
    (_padded(_hdr(infos=_s("t") + struct.pack("<IIQ", 0, 0, 0), n_t=1)), "0 dimensions"),
    (_padded(_hdr(infos=_info(ne=(32, 0)), n_t=1)), "zero dimension"),
    (_padded(_hdr(infos=_info(ne=(1 << 62, 1 << 62)), n_t=1)), "more than ggml can count"),
    (_padded(_hdr(infos=_info(ne=(1 << 40, 1 << 21)), n_t=1)), "truncated: tensor 't' needs bytes"),
    (_padded(_hdr(infos=_info(code=5), n_t=1)), "unknown ggml type 5"),
    (_padded(_hdr(infos=_info(code=8, ne=(48,)), n_t=1)), "ne0 48, not a multiple of its block of 32"),
    (_padded(_hdr(infos=_info(offset=16), n_t=1)), "offset 16, not a multiple of the alignment 32"),
    (_padded(_hdr(infos=_info(offset=1 << 63), n_t=1)), "truncated: tensor 't'"),
    (_padded(_hdr(infos=_info(ne=(64,)) + _info("u", offset=128), n_t=2)), "overlaps"),
    (_hdr(infos=_info(offset=0), n_t=1) + bytes(1), "tensor data would start at offset"),
]


@pytest.mark.parametrize("data, match", BAD_HEADERS, ids=[m for _, m in BAD_HEADERS])
def test_bad_headers(data, match):
    with pytest.raises(CheckpointError, match="^bad.gguf: ") as e:
        parse_header(data, "bad.gguf")
    assert match in str(e.value)


def test_good_minimal_header_and_alignment():
    h = parse_header(_padded(_hdr(infos=_info(ne=(8, 2)) + _info("u", ne=(32,), offset=64), n_t=2)), "ok.gguf")
    assert h.version == 3 and h.alignment == 32 and h.data_start == 128
    assert h.tensors["t"].shape == (2, 8) and h.tensors["u"].nbytes == 128
    kv = _s("general.alignment") + struct.pack("<II", 4, 64)
    h = parse_header(_padded(_hdr(kv, 1, _info(offset=64), 1), alignment=64), "ok.gguf")
    assert h.alignment == 64 and h.data_start % 64 == 0
    assert parse_header(_hdr(version=2), "v2.gguf").version == 2


def test_gguffile_errors(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        GGUFFile(tmp_path / "none.gguf")
    with pytest.raises(CheckpointError, match="is a directory"):
        GGUFFile(tmp_path)
    (tmp_path / "short.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="too short"):
        GGUFFile(tmp_path / "short.gguf")
    os.mkfifo(tmp_path / "fifo.gguf")
    with pytest.raises(CheckpointError, match="not a regular file"):
        GGUFFile(tmp_path / "fifo.gguf")


# --- corruption: every byte, every truncation ------------------------------------------------------

def test_every_flipped_header_byte_is_caught_or_harmless(toy_file):
    data = open(toy_file, "rb").read()
    end = GGUFFile(toy_file).header.data_start
    path = toy_file + ".bad"
    for i in range(end):
        for flip in (0x01, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            with open(path, "wb") as f:
                f.write(bad)
            try:
                load_gguf(path)
            except CheckpointError as e:
                assert str(e).startswith(path + ": ")
    # the data section: a sample of bytes (values change; the structure cannot break)
    for i in range(end, len(data), 97):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        with open(path, "wb") as f:
            f.write(bad)
        load_gguf(path)


def test_every_truncation_is_caught(toy_file):
    data = open(toy_file, "rb").read()
    f = GGUFFile(toy_file)
    data_end = f.header.data_start + max(t.offset + t.nbytes for t in f.tensors.values())
    for n in list(range(f.header.data_start + 64)) + list(range(f.header.data_start + 64, len(data), 61)):
        try:
            parse_header(data[:n], "cut.gguf")
        except CheckpointError as e:
            assert str(e).startswith("cut.gguf: ")
        else:
            assert n >= data_end                      # only the last tensor's zero padding was cut


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_never_crash(data, with_magic):
    if with_magic:
        data = b"GGUF" + struct.pack("<I", 3) + data
    try:
        parse_header(data, "r.gguf")
    except CheckpointError:
        pass


# --- GPT-2 files ------------------------------------------------------------------------------------

def _md(**changes):
    md = gpt2_metadata(TOY, "f32", {t: i for i, t in enumerate(TOY_TOKENS)}, TOY_MERGES, "toy")
    out = []
    for item in md:
        if item[0] in changes:
            new = changes.pop(item[0])
            if new is not None:
                out.append((item[0], *new))
        else:
            out.append(item)
    out.extend((k, *v) for k, v in changes.items() if v is not None)
    return out


@pytest.mark.parametrize("changes, match", [
    ({"general.architecture": (G.STRING, "llama")}, "architecture 'llama'; gpt2cy runs GPT-2"),
    ({"general.architecture": None}, "no general.architecture"),
    ({"gpt2.block_count": None}, "no 'gpt2.block_count'"),
    ({"gpt2.block_count": (G.FLOAT32, 1.0)}, "'gpt2.block_count' is float32, expected an integer"),
    ({"gpt2.block_count": (G.UINT32, 2)}, "missing tensor(s) blk.1."),
    ({"gpt2.context_length": (G.UINT32, 8)}, "position_embd.weight' has ne [32, 4]"),
    ({"gpt2.attention.head_count": (G.UINT32, 5)}, "not divisible by n_head 5"),
    ({"gpt2.feed_forward_length": (G.UINT32, 100)}, "feed_forward_length 100"),
    ({"gpt2.attention.layer_norm_epsilon": (G.FLOAT32, 1e-6)}, "runs GPT-2's 1e-5"),
    ({"tokenizer.ggml.model": (G.STRING, "llama")}, "tokenizer.ggml.model is 'llama'"),
    ({"tokenizer.ggml.tokens": (G.ARRAY, TOY_TOKENS[:-1], G.STRING)}, "has 7 tokens, but token_embd.weight has 8"),
    ({"tokenizer.ggml.tokens": (G.ARRAY, ["a"] * 8, G.STRING)}, "holds 'a' twice"),
    ({"tokenizer.ggml.tokens": (G.ARRAY, [1] * 8, G.INT32)}, "array[int32], not array[string]"),
    ({"tokenizer.ggml.merges": (G.ARRAY, ["a  b"], G.STRING)}, "not two tokens separated by one space"),
    ({"tokenizer.ggml.merges": (G.ARRAY, ["b c"], G.STRING)}, "names a token that is not in"),
    ({"tokenizer.ggml.token_type": (G.ARRAY, [1] * 3, G.INT32)}, "token_type must be 8 integers"),
    ({"tokenizer.ggml.eos_token_id": (G.UINT32, 8)}, "eos_token_id must be a token id below 8"),
])
def test_gpt2_metadata_is_checked(tmp_path, changes, match):
    path = toy_gguf(tmp_path / "m.gguf", metadata=_md(**changes))
    with pytest.raises(CheckpointError) as e:
        load_gguf(path)
    assert str(e.value).startswith(path + ": ") and match in str(e.value)


def test_gpt2_tensors_are_checked(tmp_path):
    md = _md()
    good = toy_tensors()
    cases = [
        (good[:-1], "missing tensor(s) output_norm.bias"),
        (good + [GGUFTensor("blk.0.extra", "f32", (4,), np.zeros(4, np.float32))], "unexpected tensor(s) blk.0.extra"),
        ([t if t.name != "blk.0.attn_qkv.weight" else GGUFTensor(t.name, "f32", (96, 32), t.data.T) for t in good],
         "attn_qkv.weight' has ne [96, 32], but"),
        ([t if t.name != "blk.0.ffn_up.weight" else GGUFTensor(t.name, "q4_1", t.ne, np.zeros((128, 20), np.uint8))
          for t in good], "is q4_1; gpt2cy reads GGUF tensors of types f32, f16, bf16, q8_0, q4_0"),
        (good + [GGUFTensor("output.weight", "f32", good[0].ne, np.zeros((8, 32), np.float32))], None),
    ]
    for tensors, match in cases:
        path = str(tmp_path / "t.gguf")
        write_gguf(path, md, tensors)
        if match is None:
            load_gguf(path)                       # an untied output.weight: a notice, wte is used
            continue
        with pytest.raises(CheckpointError) as e:
            load_gguf(path)
        assert match in str(e.value), str(e.value)


def test_output_weight_copy_is_skipped_quietly(tmp_path):
    seen = []
    gpt2cy.set_notice_handler(seen.append)
    try:
        good = toy_tensors()
        path = str(tmp_path / "o.gguf")
        write_gguf(path, _md(), good + [GGUFTensor("output.weight", "f32", good[0].ne, good[0].data)])
        load_gguf(path)
        assert seen == []
        write_gguf(path, _md(), good + [GGUFTensor("output.weight", "f32", good[0].ne, good[0].data * 2)])
        load_gguf(path)
        assert len(seen) == 1 and "uses token_embd.weight as the output projection" in seen[0]
    finally:
        gpt2cy.set_notice_handler(None)


def test_q6_k_dequantizes_as_gguf_py_does(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (8, 210), dtype=np.uint8)          # any bytes, finite fp16 scales
    raw[:, 208:210] = (rng.standard_normal((8, 1)) * 0.01).astype(np.float16).view(np.uint8)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q6_K).reshape(-1)
    assert np.array_equal(G.dequantize_q6_k(raw.reshape(-1), 8 * 256).view(np.uint32), want.view(np.uint32))
    # a file whose wte is q6_K (llama-quantize's default for a tied embedding): read as f32, with a notice
    cfg = Config(n_vocab=8, n_ctx=4, n_embd=256, n_head=2, n_layer=1)
    tensors = [t if t.name != "token_embd.weight" else GGUFTensor(t.name, "q6_K", t.ne, raw)
               for t in toy_tensors(cfg)]
    path = str(tmp_path / "k.gguf")
    write_gguf(path, gpt2_metadata(cfg, "f32", {t: i for i, t in enumerate(TOY_TOKENS)}, TOY_MERGES), tensors)
    seen = []
    gpt2cy.set_notice_handler(seen.append)
    try:
        w = load_gguf(path)
    finally:
        gpt2cy.set_notice_handler(None)
    assert w.dtypes["wte"] == "f32" and np.array_equal(w.tensors["wte"], want.reshape(8, 256))
    assert len(seen) == 1 and "token_embd.weight' is q6_K" in seen[0] and "dequantized to f32" in seen[0]


def test_layout_detects_gguf_files(toy_file, tmp_path):
    lay = find_layout(toy_file)
    assert lay.kind == GGUF and lay.complete and lay.missing() == []
    plain = tmp_path / "model.bin"                # no .gguf suffix: the magic decides
    plain.write_bytes(open(toy_file, "rb").read())
    assert find_layout(str(plain)).kind == GGUF
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a directory"):
        find_layout(str(tmp_path / "x.txt"))


def test_get_tokenizer_takes_a_gguf_file(tmp_path, tiny_model_dir):
    """gpt2cy.get_tokenizer reads a GGUF file's own vocabulary, as `load` and `gpt2cy tokenize` do."""
    path = str(tmp_path / "m.bin")                                  # no .gguf suffix: the magic decides
    export_gguf(tiny_model_dir, path, dtype="q8_0", threads=1)
    tok = gpt2cy.get_tokenizer(path)
    assert tok.n_vocab == 50257 and tok.encode("Hello world") == [15496, 995]
    assert gpt2cy.get_tokenizer(path) is tok                                      # loaded once
    with pytest.raises(gpt2cy.ModelNotFound, match="no such file"):
        gpt2cy.get_tokenizer(str(tmp_path / "missing.gguf"))


def test_verify_finds_nonfinite_values(tmp_path):
    from gpt2cy.formats.checkpoint import verify
    path = toy_gguf(tmp_path / "v.gguf", wte_type="q8_0")
    res = verify(path)
    assert res.format == GGUF and res.n_tensors == 16 and not res.checksummed
    f = GGUFFile(path)
    data = bytearray(open(path, "rb").read())
    wte = f.tensors["token_embd.weight"]
    data[f.header.data_start + wte.offset + 34: f.header.data_start + wte.offset + 36] = b"\x00\x7c"  # scale +inf
    bias = f.tensors["blk.0.attn_qkv.bias"]
    open(path, "wb").write(data)
    with pytest.raises(CheckpointError, match="token_embd.weight' holds 1 NaN/inf block scales"):
        verify(path)
    data[f.header.data_start + wte.offset + 34: f.header.data_start + wte.offset + 36] = b"\x00\x3c"
    data[f.header.data_start + bias.offset: f.header.data_start + bias.offset + 4] = struct.pack("<f", np.nan)
    open(path, "wb").write(data)
    with pytest.raises(CheckpointError, match="attn_qkv.bias' holds 1 NaN/inf values"):
        verify(path)


# --- round trips: gpt2cy convert, then load -----------------------------------------------------------

IDS = [464, 3290, 286, 1204, 318, 11, 50256, 1212, 3797, 13, 0, 50000]


@pytest.fixture(scope="module")
def source_logits(tiny_model_dir):
    out = {}
    for dtype in ("f32", "bf16", "q8_0", "q4_0"):
        m = gpt2cy.load(tiny_model_dir, threads=1, dtype=dtype)
        out[dtype] = (m.logits(IDS), m.dequantized())
    return out


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0", "q4_0"])
def test_round_trip_logits_equal(tmp_path, tiny_model_dir, source_logits, dtype):
    out = str(tmp_path / f"m-{dtype}.gguf")
    res = export_gguf(tiny_model_dir, out, dtype=dtype, threads=1)
    assert res["dtype"] == dtype and res["tensors"] == 4 + 12 * 2
    m = gpt2cy.load(out, threads=1)                 # no dtype: the file's own
    assert m.dtype == dtype
    want_logits, want_weights = source_logits[dtype]
    assert np.array_equal(m.logits(IDS), want_logits)
    got = m.dequantized()
    assert all(np.array_equal(got[k], want_weights[k]) for k in want_weights)
    if dtype in ("q8_0", "q4_0"):                   # the blocks are used where they lie in the mapped file
        wt = m._described["h0.attn.c_attn.w"]
        assert wt.transposed and not wt.data.flags.owndata and not wt.data.flags.writeable
    tok = gpt2cy.Tokenizer.from_dir(tiny_model_dir)
    text = "Hello, GGUF world! ünïcödé 123 <|endoftext|>"
    assert m.tokenizer.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert m.tokenizer.eot_token == 50256


def test_our_blocks_equal_gguf_py_quantize(tmp_path, tiny_model_dir):
    src = gpt2cy.formats.checkpoint.load_weights(tiny_model_dir)
    names = gguf_names(src.config)
    for dtype, qt in (("q8_0", gguf.GGMLQuantizationType.Q8_0), ("q4_0", gguf.GGMLQuantizationType.Q4_0),
                      ("bf16", gguf.GGMLQuantizationType.BF16)):
        out = str(tmp_path / f"{dtype}.gguf")
        export_gguf(tiny_model_dir, out, dtype=dtype, threads=2)
        r = {t.name: t for t in gguf.GGUFReader(out).tensors}
        for spec in tensor_specs(src.config):
            if spec.role not in (MATMUL, "embedding"):
                continue
            a = np.asarray(src.tensors[spec.name], dtype=np.float32)
            a = np.ascontiguousarray(a.T) if spec.role == MATMUL else a[:4096]     # ggml's [out, in]; wte:
            want = gguf.quants.quantize(a, qt).reshape(-1).view(np.uint8)         # a slab of rows (speed)
            got = r[names[spec.name]]
            assert got.tensor_type == qt
            assert np.array_equal(np.asarray(got.data).reshape(-1).view(np.uint8)[:want.size], want)


# The keys, types and values llama.cpp's convert_hf_to_gguf.py writes for GPT-2 (checked against the converter
# itself in tests/test_gguf_llamacpp.py when it can be fetched); general.name is the model's own.
CONVERTER_KEYS = [
    ("general.architecture", ["STRING"]), ("general.type", ["STRING"]), ("general.name", ["STRING"]),
    ("general.size_label", ["STRING"]), ("gpt2.block_count", ["UINT32"]), ("gpt2.context_length", ["UINT32"]),
    ("gpt2.embedding_length", ["UINT32"]), ("gpt2.feed_forward_length", ["UINT32"]),
    ("gpt2.attention.head_count", ["UINT32"]), ("gpt2.attention.layer_norm_epsilon", ["FLOAT32"]),
    ("general.file_type", ["UINT32"]), ("general.quantization_version", ["UINT32"]),
    ("tokenizer.ggml.model", ["STRING"]), ("tokenizer.ggml.pre", ["STRING"]),
    ("tokenizer.ggml.tokens", ["ARRAY", "STRING"]), ("tokenizer.ggml.token_type", ["ARRAY", "INT32"]),
    ("tokenizer.ggml.merges", ["ARRAY", "STRING"]), ("tokenizer.ggml.bos_token_id", ["UINT32"]),
    ("tokenizer.ggml.eos_token_id", ["UINT32"])]


def test_metadata_as_gguf_py_reads_it(tmp_path, tiny_model_dir, vocab_dir):
    import json
    out = str(tmp_path / "m.gguf")
    export_gguf(tiny_model_dir, out, dtype="q8_0", threads=1)
    r = gguf.GGUFReader(out)
    fields = [(k, [gguf.GGUFValueType(t).name for t in f.types]) for k, f in r.fields.items()
              if not k.startswith("GGUF.")]
    assert fields == CONVERTER_KEYS
    v = {k: r.fields[k].contents() for k, _ in CONVERTER_KEYS}
    assert (v["general.architecture"], v["general.type"], v["general.file_type"]) == ("gpt2", "model", 7)
    assert (v["gpt2.block_count"], v["gpt2.context_length"], v["gpt2.embedding_length"],
            v["gpt2.feed_forward_length"], v["gpt2.attention.head_count"]) == (2, 256, 32, 128, 2)
    assert abs(v["gpt2.attention.layer_norm_epsilon"] - 1e-5) < 1e-12
    assert (v["tokenizer.ggml.model"], v["tokenizer.ggml.pre"], v["general.quantization_version"]) == \
        ("gpt2", "gpt-2", 2)
    encoder = json.load(open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8"))
    assert v["tokenizer.ggml.tokens"] == sorted(encoder, key=encoder.get)
    merges = open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:]
    assert v["tokenizer.ggml.merges"] == [m for m in merges if m]
    types = v["tokenizer.ggml.token_type"]
    assert types[50256] == 3 and set(types[:50256]) == {1}
    assert v["tokenizer.ggml.bos_token_id"] == v["tokenizer.ggml.eos_token_id"] == 50256


def test_gguf_to_gguf_and_explicit_dtypes(tmp_path, tiny_model_dir, source_logits):
    q8 = str(tmp_path / "a.gguf")
    export_gguf(tiny_model_dir, q8, dtype="q8_0", threads=1)
    again = str(tmp_path / "b.gguf")
    export_gguf(q8, again, threads=1)               # a GGUF source keeps its type and its bytes
    assert open(again, "rb").read() == open(q8, "rb").read()
    # loaded as f32: the q8_0 values widened exactly (the reference's dequantized weights)
    m = gpt2cy.load(q8, threads=1, dtype="f32")
    assert m.dtype == "f32"
    want = source_logits["q8_0"][1]
    got = m.dequantized()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="would overwrite"):
        export_gguf(q8, q8)


def test_f16_gguf_is_widened_with_a_notice(tmp_path, tiny_model_dir, source_logits):
    src = gpt2cy.formats.checkpoint.load_weights(tiny_model_dir)
    names = gguf_names(src.config)
    tensors, rounded = [], {}
    for spec in tensor_specs(src.config):
        a = np.asarray(src.tensors[spec.name])
        kind = "f16" if spec.role in (MATMUL, "embedding") else "f32"
        if kind == "f16":
            a = a.astype(np.float16)
        rounded[spec.name] = a.astype(np.float32)
        tensors.append(GGUFTensor(names[spec.name], kind, gguf_ne(spec.name, spec.shape, spec.role),
                                  a.T if spec.role == MATMUL else a))
    tok = gpt2cy.Tokenizer.from_dir(tiny_model_dir)
    from gpt2cy.text.tokenizer import load_encoder, load_merges
    enc = load_encoder(os.path.join(tiny_model_dir, "encoder.json"))
    path = str(tmp_path / "h.gguf")
    write_gguf(path, gpt2_metadata(src.config, "f16", enc, load_merges(os.path.join(tiny_model_dir, "vocab.bpe"),
                                                                         enc)), tensors)
    seen = []
    gpt2cy.set_notice_handler(seen.append)
    try:
        m = gpt2cy.load(path, threads=1)
    finally:
        gpt2cy.set_notice_handler(None)
    assert m.dtype == "f32" and any("f16 tensor(s) to f32" in s for s in seen)
    want = gpt2cy.Model.from_tensors(src.config, rounded, threads=1)
    assert np.array_equal(m.logits(IDS), want.logits(IDS))
    assert m.tokenizer.encode("a test") == tok.encode("a test")


# --- the command --------------------------------------------------------------------------------------

def test_convert_command(tmp_path, tiny_model_dir, capsys, source_logits):
    out = str(tmp_path / "cli.gguf")
    assert main(["convert", tiny_model_dir, "-o", out, "--dtype", "q8_0", "-t", "1"]) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}: GPT-2 as q8_0, 28 tensors" in err
    assert np.array_equal(gpt2cy.load(out, threads=1).logits(IDS), source_logits["q8_0"][0])
    assert main(["convert", "-m", tiny_model_dir, "-o", str(tmp_path / "f.gguf"), "--name", "my model"]) == 0
    assert GGUFFile(tmp_path / "f.gguf").metadata["general.name"].value == "my model"
    capsys.readouterr()
    assert main(["generate", "-m", out, "-p", "Hello", "-n", "3", "--temp", "0", "-t", "1"]) == 0
    assert capsys.readouterr().out


@pytest.mark.parametrize("argv, code, match", [
    (["convert", "SRC", "-m", "OTHER", "-o", "X"], 2, "two models given"),
    (["convert", "SRC", "--dtype", "q5_0", "-o", "X"], 2, "invalid choice"),
    (["convert", "SRC"], 2, "-o/--output"),
    (["convert", "NOPE.gguf", "-o", "X"], 3, "no such file: NOPE.gguf"),
    (["convert", "BAD", "-o", "X"], 1, "not a GGUF file"),
    (["generate", "-m", "BAD", "-p", "x"], 1, "not a GGUF file"),
    (["convert", "SRC", "-o", "NODIR/x.gguf"], 1, "No such file or directory"),
])
def test_convert_errors_are_one_line(tmp_path, tiny_model_dir, capsys, argv, code, match):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUX" + bytes(40))
    subs = {"SRC": tiny_model_dir, "X": str(tmp_path / "x.gguf"), "BAD": str(bad),
            "NOPE.gguf": "NOPE.gguf", "NODIR/x.gguf": str(tmp_path / "nodir" / "x.gguf"), "OTHER": "124M"}
    rc = main([subs.get(a, a) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert match in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "x.gguf")
