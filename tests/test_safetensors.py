"""HuggingFace layout: config.json + model.safetensors, read without the safetensors library, cross-checked
with it (and with transformers' own save_pretrained when installed), and every malformed header rejected."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

from gpt2cy import CheckpointError
from gpt2cy.formats.checkpoint import load_weights, verify
from gpt2cy.formats.names import hf_name
from gpt2cy.tensors import expected_shapes
from gpt2cy.config import Config
from gpt2cy.formats.dtypes import to_float32
from gpt2cy.formats.safetensors import SafetensorsFile
from gpt2cy.testing import hf_config_json, write_random_model

TINY = Config(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2)
SMALL = Config(n_vocab=97, n_ctx=16, n_embd=8, n_head=2, n_layer=2)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory):
    return write_random_model(str(tmp_path_factory.mktemp("st")), TINY, seed=5, fmt="safetensors")


@pytest.fixture(scope="module")
def tf_dir(tmp_path_factory):
    return write_random_model(str(tmp_path_factory.mktemp("tf")), TINY, seed=5)


def _write(path, tensors, header_extra=None, raw_header=None, pad=True):
    """A safetensors file from {name: array}, or with a hand-made header."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.uint8: "U8"}[a.dtype.type]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    header.update(header_extra or {})
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _small_model(tmp_path, transform=None, prefix=""):
    rng = np.random.default_rng(0)
    tensors = {prefix + hf_name(c): rng.standard_normal(s).astype(np.float32)
               for c, s in expected_shapes(SMALL).items()}
    if transform:
        transform(tensors)
    d = tmp_path / "hf"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf_config_json(SMALL)))
    _write(d / "model.safetensors", tensors)
    return str(d), tensors


# --- loading --------------------------------------------------------------------------------------

def test_same_values_as_tf_layout(st_dir, tf_dir):
    a, b = load_weights(st_dir), load_weights(tf_dir)
    assert a.format == "safetensors" and a.config.n_ctx == 64 and a.config.n_vocab == 50257
    assert list(a.tensors) == list(b.tensors)
    for k in a.tensors:
        assert a.tensors[k].dtype == np.float32 and a.tensors[k].flags.c_contiguous
        assert not a.tensors[k].flags.writeable and not a.tensors[k].flags.owndata
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k])


def test_hf_files_present(st_dir):
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(os.listdir(st_dir))


def test_safetensors_library_reads_ours(st_dir):
    sn = pytest.importorskip("safetensors.numpy")
    theirs = sn.load_file(os.path.join(st_dir, "model.safetensors"))
    ours = load_weights(st_dir).tensors
    assert set(theirs) == {hf_name(c) for c in ours}
    for c, a in ours.items():
        np.testing.assert_array_equal(theirs[hf_name(c)], a)


def test_we_read_safetensors_library_output(tmp_path):
    sn = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(1)
    tensors = {"transformer." + hf_name(c): rng.standard_normal(s).astype(np.float32)
               for c, s in expected_shapes(SMALL).items()}
    for i in range(SMALL.n_layer):     # causal-mask buffers some exports carry: not weights
        tensors[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), np.float32))
        tensors[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()
    (tmp_path / "config.json").write_text(json.dumps(hf_config_json(SMALL)))
    sn.save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    w = load_weights(str(tmp_path))
    for c, a in w.tensors.items():
        np.testing.assert_array_equal(a, tensors["transformer." + hf_name(c)])


def test_transformers_save_pretrained(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=16, n_embd=8, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    w = load_weights(str(tmp_path))
    assert w.config.n_vocab == 97 and w.config.n_ctx == 16
    sd = model.transformer.state_dict()
    for c, a in w.tensors.items():
        np.testing.assert_array_equal(a, sd[hf_name(c)].numpy())


def test_float16_and_bfloat16_keep_their_stored_type(tmp_path):
    def to_half(t):
        t["wte.weight"] = t["wte.weight"].astype(np.float16)
    d, tensors = _small_model(tmp_path, to_half)
    w = load_weights(d)
    assert w.dtypes["wte"] == "f16" and w.dtypes["wpe"] == "f32" and set(w.dtypes) == set(w.tensors)
    assert w.tensors["wte"].dtype == np.float16 and not w.tensors["wte"].flags.writeable
    assert not w.tensors["wte"].flags.owndata                   # a view of the file, not a widened copy
    np.testing.assert_array_equal(w.tensors["wte"], tensors["wte.weight"])
    wide = to_float32(w.tensors["wte"], w.dtypes["wte"])
    assert wide.dtype == np.float32 and not wide.flags.writeable
    np.testing.assert_array_equal(wide, tensors["wte.weight"].astype(np.float32))
    assert to_float32(w.tensors["wpe"], "f32") is w.tensors["wpe"]       # f32 is never copied
    # bfloat16 = the top half of a float32, exposed as its uint16 bit patterns
    f32 = np.array([1.0, -2.5, 3.140625], np.float32)
    bf = (f32.view(np.uint32) >> 16).astype(np.uint16)
    raw = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bf.tobytes())
    st = SafetensorsFile(str(tmp_path / "bf.safetensors"))
    assert st.stored_type("x") == "bf16"
    np.testing.assert_array_equal(st.tensor("x"), bf)
    np.testing.assert_array_equal(to_float32(st.tensor("x"), "bf16"), f32)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_whole_model_in_16_bits(tmp_path, dtype):
    d = write_random_model(str(tmp_path / dtype), SMALL, seed=2, fmt="safetensors", dtype=dtype)
    w = load_weights(d)
    assert set(w.dtypes.values()) == {dtype}
    assert w.nbytes == 2 * SMALL.n_params
    f32 = load_weights(write_random_model(str(tmp_path / "f32"), SMALL, seed=2, fmt="safetensors")).tensors
    for c, a in w.tensors.items():                      # the same draws, rounded to 16 bits
        np.testing.assert_allclose(to_float32(a, dtype), f32[c], rtol=1e-2, atol=1e-3)
    assert verify(d).n_bytes == 2 * SMALL.n_params


def test_verify_finds_nan_in_16_bit_weights(tmp_path):
    def poison(t):
        t["h.0.mlp.c_fc.weight"] = t["h.0.mlp.c_fc.weight"].astype(np.float16)
        t["h.0.mlp.c_fc.weight"][1, 2] = np.nan
    d, _ = _small_model(tmp_path, poison)
    load_weights(d)                                     # loading never reads the data
    with pytest.raises(CheckpointError, match="'h.0.mlp.c_fc.weight' holds 1 NaN/inf"):
        verify(d)
    assert verify(d, check_finite=False).n_tensors == 4 + 12 * SMALL.n_layer


def test_unaligned_data_is_copied_aligned(tmp_path):
    a = np.arange(6, dtype=np.float32)
    raw = json.dumps({"x": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}).encode()
    raw += b" " * ((1 - 8 - len(raw)) % 4)          # the data starts 1 byte past a multiple of 4
    _write(tmp_path / "u.safetensors", {"x": a}, raw_header=raw, pad=False)
    st = SafetensorsFile(str(tmp_path / "u.safetensors"))
    assert st.data_start % 4 == 1
    got = st.tensor("x")
    assert got.flags.aligned and got.flags.c_contiguous and not got.flags.writeable
    np.testing.assert_array_equal(got, a)


def test_verify_safetensors(st_dir, tmp_path):
    r = verify(st_dir)
    assert r.format == "safetensors" and not r.checksummed and r.n_bytes == 4 * TINY.n_params

    def poison(t):
        t["h.1.ln_2.bias"][3] = np.inf
    d, _ = _small_model(tmp_path, poison)
    with pytest.raises(CheckpointError, match="'h.1.ln_2.bias' holds 1 NaN/inf"):
        verify(d)


# --- malformed files ------------------------------------------------------------------------------

def _st_err(tmp_path, content, match):
    p = tmp_path / "x.safetensors"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        SafetensorsFile(str(p))
    assert str(e.value).startswith(str(p))


def _hdr(obj_or_bytes, data=b"", n=None):
    raw = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("content,match", [
    (b"", "0 bytes, too short"),
    (b"\x01\x00", "too short"),
    (struct.pack("<Q", 200_000_000) + b"{}", "header length 200000000 is impossible"),
    (struct.pack("<Q", 50) + b"{}", "header length 50 is impossible"),
    (_hdr(b"\xff\xfe{}"), "not UTF-8"),
    (_hdr(b"{not json"), "not valid JSON"),
    (_hdr(b"[1, 2]"), "not a JSON object"),
    (_hdr(b"[" * 100_000), "nested too deeply"),
    (_hdr(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
          b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(8)), "duplicate key"),
    (_hdr({"a": {**T, "dtype": "Q7"}}, bytes(8)), "unknown dtype 'Q7'"),
    (_hdr({"a": {**T, "shape": [-2]}}, bytes(8)), "bad shape"),
    (_hdr({"a": {**T, "shape": [2.0]}}, bytes(8)), "bad shape"),
    (_hdr({"a": {**T, "shape": [True]}}, bytes(8)), "bad shape"),
    (_hdr({"a": {**T, "data_offsets": [8, 0]}}, bytes(8)), "bad data_offsets"),
    (_hdr({"a": {**T, "data_offsets": [0]}}, bytes(8)), "bad data_offsets"),
    (_hdr({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)), "needs exactly"),
    (_hdr({"a": [1]}, bytes(8)), "needs exactly"),
    (_hdr({"a": {**T, "shape": [3]}}, bytes(8)), "has 8 bytes, but shape \\[3\\] of F32 needs 12"),
    (_hdr({"a": {**T, "shape": [2 ** 62, 2 ** 62]}}, bytes(8)), "needs"),
    (_hdr({"a": T, "b": {**T, "data_offsets": [4, 12]}}, bytes(12)), "overlaps"),
    (_hdr({"a": T, "b": {**T, "data_offsets": [12, 20]}}, bytes(20)), "leaves bytes \\[8, 12\\) unused"),
    (_hdr({"a": {**T, "data_offsets": [4, 12]}}, bytes(12)), "leaves bytes \\[0, 4\\) unused"),
    (_hdr({"a": T}, bytes(7)), "truncated"),
    (_hdr({"a": T}, bytes(9)), "unused bytes at the end"),
    (_hdr({"a": T, "__metadata__": {"k": 1}}, bytes(8)), "__metadata__"),
    (_hdr({"a": T, "__metadata__": [1]}, bytes(8)), "__metadata__"),
])
def test_malformed_files(tmp_path, content, match):
    _st_err(tmp_path, content, match)


def test_header_mutations_never_crash(tmp_path):
    good = _hdr({"a": T, "b": {**T, "data_offsets": [8, 16]}, "__metadata__": {"x": "y"}}, bytes(16))
    SafetensorsFile(_tmp(tmp_path, good))
    for i in range(len(good)):
        for flip in (0x01, 0x20, 0x80):
            bad = bytearray(good)
            bad[i] ^= flip
            try:
                SafetensorsFile(_tmp(tmp_path, bytes(bad)))
            except CheckpointError:
                pass


def _tmp(tmp_path, content):
    p = tmp_path / "m.safetensors"
    p.write_bytes(content)
    return str(p)


def test_empty_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        SafetensorsFile(str(tmp_path / "none.safetensors"))
    with pytest.raises(CheckpointError, match="is a directory"):
        SafetensorsFile(str(tmp_path))


def test_missing_tensor(tmp_path):
    d, _ = _small_model(tmp_path, lambda t: t.pop("h.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing tensor\(s\) h.1.mlp.c_fc.weight"):
        load_weights(d)


def test_wrong_shape_vs_config(tmp_path):
    d, _ = _small_model(tmp_path)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["n_positions"] = 32
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"'wpe.weight' has shape \[16, 8\], but .*config.json .* implies \[32, 8\]"):
        load_weights(d)


def test_unexpected_tensor(tmp_path):
    def extra(t):
        t["h.2.ln_1.weight"] = np.ones(8, np.float32)
    d, _ = _small_model(tmp_path, extra)
    with pytest.raises(CheckpointError, match="unexpected tensor 'h.2.ln_1.weight'"):
        load_weights(d)


def test_non_float_weight(tmp_path):
    def as_int(t):
        t["ln_f.bias"] = np.zeros(8, np.int64)
    d, _ = _small_model(tmp_path, as_int)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'ln_f.bias' is stored as I64; supported "
                                              r"weight types are f32, f16, bf16$"):
        load_weights(d)


@pytest.mark.parametrize("cfg,match", [
    ({"vocab_size": 97, "n_embd": 8, "n_head": 2, "n_layer": 2}, "'n_ctx' must be an integer"),
    ({"vocab_size": 97, "n_ctx": 16, "n_embd": 8, "n_head": 3, "n_layer": 2}, "not divisible"),
    ("[]", "expected a JSON object"),
    ("{", "not valid JSON"),
    ("[" * 100_000, r"config\.json: not valid JSON \(nested too deeply\)"),
])
def test_bad_config_json(tmp_path, cfg, match):
    d, _ = _small_model(tmp_path)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(cfg if isinstance(cfg, str) else json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        load_weights(d)


def test_n_ctx_fallback_and_tf_layout_wins(tmp_path, tf_dir):
    d, _ = _small_model(tmp_path)
    cfg = hf_config_json(SMALL)
    del cfg["n_positions"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    assert load_weights(d).config.n_ctx == 16
    both = tmp_path / "both"
    shutil.copytree(tf_dir, both)
    shutil.copy(os.path.join(d, "model.safetensors"), both)
    assert load_weights(str(both)).format == "tf"


def test_no_config_json_infers_a_published_shape(tmp_path):
    """HF's layout is model.safetensors + vocab.json + merges.txt; config.json may be absent."""
    cfg = Config(n_vocab=11, n_ctx=5, n_embd=768, n_head=12, n_layer=2)   # 124M's width, tiny otherwise
    for prefix in ("", "transformer."):
        tensors = {prefix + hf_name(c): np.full(s, i, np.float32)
                   for i, (c, s) in enumerate(expected_shapes(cfg).items())}
        d = tmp_path / f"hf{prefix}"
        d.mkdir()
        _write(d / "model.safetensors", tensors)
        w = load_weights(str(d))
        assert w.config.to_json() == cfg.to_json()
        assert all(w.tensors[c][(0,) * len(s)] == i for i, (c, s) in enumerate(expected_shapes(cfg).items()))
        assert verify(str(d)).n_tensors == len(tensors)


def test_no_config_json_and_an_unpublished_width_names_the_problem(tmp_path):
    d, _ = _small_model(tmp_path)
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: no config\.json beside it, and n_embd 8 is "
                                              r"not a published GPT-2 size"):
        load_weights(d)
    _write(os.path.join(d, "model.safetensors"), {"x": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"no 2-D wte\.weight/wpe\.weight"):
        load_weights(d)


def test_hparams_json_serves_an_hf_directory_without_config_json(tmp_path):
    d, _ = _small_model(tmp_path)
    os.remove(os.path.join(d, "config.json"))
    with open(os.path.join(d, "hparams.json"), "w") as f:
        json.dump(SMALL.to_json(), f)
    assert load_weights(d).config.to_json() == SMALL.to_json()


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_16_bit_model_loads_through_gpt2cy_load(tmp_path, vocab_dir, dtype):
    """The reader hands out the stored type; the model widens what the engine has no kernels for, so the
    logits are those of the same weights widened to float32 by hand."""
    from types import SimpleNamespace
    from gpt2cy.loading import load
    from gpt2cy.model import Model
    d = write_random_model(str(tmp_path / dtype), TINY, seed=4, fmt="safetensors", dtype=dtype,
                           vocab_dir=vocab_dir)
    model = load(d, threads=1)
    w = load_weights(d)
    wide = SimpleNamespace(config=w.config, tensors={c: to_float32(a, w.dtypes[c]) for c, a in w.tensors.items()})
    ids = model.tokenizer.encode("Hello world")
    assert np.array_equal(model.logits(ids), Model(wide, threads=1).logits(ids))
