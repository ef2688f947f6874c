"""Model-directory loading: layout detection, hparams, key set and shapes, zero-copy views, verify, and a
one-line CheckpointError for every broken model directory."""
import json
import os
import shutil

import numpy as np
import pytest

import gpt2cy
from gpt2cy import CheckpointError
from gpt2cy.formats.checkpoint import find_layout, load_config, load_weights, match_tf_entries, verify
from gpt2cy.formats.names import hf_name, tf_name, tf_shapes
from gpt2cy.tensors import LAYER_PARAMS, expected_shapes
from gpt2cy.config import PUBLISHED, Config
from gpt2cy.testing import random_tensors, write_random_model
from gpt2cy.formats.tfbundle import check_data_ranges, data_filename, parse_index, read_index
from gpt2cy.formats.tfbundle_writer import build_index, write_bundle

TINY = Config(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2)
SMALL_VOCAB = Config(n_vocab=97, n_ctx=16, n_embd=8, n_head=2, n_layer=3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_random_model(str(tmp_path_factory.mktemp("tiny")), TINY, seed=3)


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    """A private copy of the tiny model to damage."""
    dst = tmp_path / "m"
    shutil.copytree(tiny_dir, dst)
    return str(dst)


def _tensors(config, seed):
    return {name: np.concatenate(list(chunks)).reshape(shape) for name, shape, chunks in random_tensors(config, seed)}


# --- names and shapes -----------------------------------------------------------------------------

def test_names():
    assert tf_name("wte") == "model/wte"
    assert tf_name("h11.attn.c_attn.w") == "model/h11/attn/c_attn/w"
    assert tf_name("ln_f.g") == "model/ln_f/g"
    assert hf_name("h11.attn.c_attn.w") == "h.11.attn.c_attn.weight"
    assert hf_name("h0.ln_1.g") == "h.0.ln_1.weight"
    assert hf_name("h0.mlp.c_proj.b") == "h.0.mlp.c_proj.bias"
    assert hf_name("wpe") == "wpe.weight" and hf_name("ln_f.b") == "ln_f.bias"


def test_expected_shapes_cover_gpt2():
    shapes = expected_shapes(PUBLISHED["124M"])
    assert len(shapes) == 4 + 12 * 12 == 148
    assert shapes["h3.attn.c_attn.w"] == (768, 2304) and shapes["h3.mlp.c_proj.w"] == (3072, 768)
    assert sum(int(np.prod(s)) for s in shapes.values()) == PUBLISHED["124M"].n_params == 124_439_808
    assert tf_shapes(PUBLISHED["124M"])["model/h0/mlp/c_fc/w"] == (1, 768, 3072)
    assert len(LAYER_PARAMS) == 12


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_published_sizes_accepted_from_index_alone(size):
    """An index with each published size's shapes (no data file) passes every check against its hparams."""
    config = PUBLISHED[size]
    offset, entries = 0, []
    for name, shape in tf_shapes(config).items():
        n = 4 * int(np.prod(shape))
        entries.append((name, np.float32, shape, offset, n, 0))
        offset += n
    index = parse_index(build_index(entries), f"{size}.index")
    names = match_tf_entries(index, config)
    assert len(names) == 4 + 12 * config.n_layer
    assert offset == 4 * config.n_params
    published = {"124M": 497_759_232, "355M": 1_419_292_672, "774M": 3_096_120_320, "1558M": 6_230_444_800}
    assert offset == published[size]
    check_data_ranges(index, "x.data", offset)
    with pytest.raises(CheckpointError, match="file is"):
        check_data_ranges(index, "x.data", offset - 1)
    other = PUBLISHED["355M" if size != "355M" else "124M"]
    with pytest.raises(CheckpointError):
        match_tf_entries(index, other)


def test_real_124m_index_size():
    """OpenAI's 124M model.ckpt.index is 5,215 bytes; our writer produces the same table size."""
    config = PUBLISHED["124M"]
    entries, offset = [], 0
    for name, shape in sorted(tf_shapes(config).items()):         # data in key order, as TF's Saver writes
        n = 4 * int(np.prod(shape))
        entries.append((name, np.float32, shape, offset, n, 0x12345678))
        offset += n
    assert len(build_index(entries)) == 5215


# --- loading --------------------------------------------------------------------------------------

def test_load_tiny(tiny_dir):
    w = load_weights(tiny_dir)
    assert w.config == Config(50257, 64, 32, 4, 2, name=os.path.basename(tiny_dir))
    assert w.format == "tf"
    shapes = expected_shapes(TINY)
    assert list(w.tensors) == list(shapes)
    want = _tensors(TINY, seed=3)
    for name, a in w.tensors.items():
        assert a.shape == shapes[name] and a.dtype == np.float32
        assert a.flags.c_contiguous and not a.flags.writeable and not a.flags.owndata
        np.testing.assert_array_equal(a, want[name])
    assert w.nbytes == 4 * TINY.n_params


def test_views_share_one_mapping(tiny_dir):
    w = load_weights(tiny_dir)
    bases = set()
    for a in w.tensors.values():
        b = a
        while isinstance(b, np.ndarray) and b.base is not None:
            b = b.base
        bases.add(id(b.obj if isinstance(b, memoryview) else b))
    assert len(bases) == 1                       # every tensor is a view of the same mmap, no copies
    with pytest.raises(ValueError):
        w.tensors["wte"][0, 0] = 1.0


def test_random_weights_are_sane_and_seeded(tiny_dir, tmp_path):
    w = load_weights(tiny_dir).tensors
    assert abs(float(w["wte"].std()) - 0.02) < 0.001
    assert abs(float(w["h0.ln_1.g"].mean()) - 1.0) < 0.02
    assert float(np.abs(w["h1.mlp.c_fc.b"]).max()) < 0.1
    again = load_weights(write_random_model(str(tmp_path / "again"), TINY, seed=3)).tensors
    other = load_weights(write_random_model(str(tmp_path / "other"), TINY, seed=4)).tensors
    assert all(np.array_equal(w[k], again[k]) for k in w)
    assert not np.array_equal(w["wte"], other["wte"])


def test_model_dir_has_openai_files(tiny_dir, vocab_dir):
    files = set(os.listdir(tiny_dir))
    assert {"hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001", "checkpoint",
            "encoder.json", "vocab.bpe"} <= files
    assert json.load(open(os.path.join(tiny_dir, "hparams.json"))) == TINY.to_json()
    assert open(os.path.join(tiny_dir, "checkpoint")).read().startswith('model_checkpoint_path: "model.ckpt"')
    for f in ("encoder.json", "vocab.bpe"):
        assert open(os.path.join(tiny_dir, f), "rb").read() == open(os.path.join(vocab_dir, f), "rb").read()


def test_verify(tiny_dir):
    r = verify(tiny_dir)
    assert (r.format, r.n_tensors, r.n_bytes, r.checksummed) == ("tf", 28, 4 * TINY.n_params, True)
    assert gpt2cy.verify(tiny_dir) == r


def test_load_accepts_pathlike_and_other_prefixes(tiny_dir, tmp_path):
    """gpt-2-simple style: the `checkpoint` file names the prefix (model-1000)."""
    from pathlib import Path
    assert load_weights(Path(tiny_dir)).config.n_layer == 2
    d = tmp_path / "run1"
    d.mkdir()
    shutil.copy(os.path.join(tiny_dir, "hparams.json"), d)
    shutil.copy(os.path.join(tiny_dir, "model.ckpt.index"), d / "model-1000.index")
    shutil.copy(os.path.join(tiny_dir, "model.ckpt.data-00000-of-00001"), d / "model-1000.data-00000-of-00001")
    (d / "model-500.index").write_bytes(b"")        # an older, broken save the checkpoint file no longer names
    (d / "checkpoint").write_text('model_checkpoint_path: "model-1000"\nall_model_checkpoint_paths: "model-1000"\n')
    layout = find_layout(str(d))
    assert (layout.kind, layout.weights) == ("tf", str(d / "model-1000"))
    assert load_weights(str(d)).tensors["wte"].shape == (50257, 32)


def _gpt2_simple_dir(tiny_dir, d):
    """tiny_dir's files saved as gpt-2-simple does: prefix model-1000, named by the `checkpoint` file."""
    d.mkdir()
    for f in ("hparams.json", "encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(tiny_dir, f), d)
    shutil.copy(os.path.join(tiny_dir, "model.ckpt.index"), d / "model-1000.index")
    shutil.copy(os.path.join(tiny_dir, "model.ckpt.data-00000-of-00001"), d / "model-1000.data-00000-of-00001")
    (d / "model-500.index").write_bytes(b"")        # an older, broken save the checkpoint file no longer names
    (d / "checkpoint").write_text('model_checkpoint_path: "model-1000"\nall_model_checkpoint_paths: "model-1000"\n')
    return str(d)


def test_checkpoint_file_prefix_loads_through_gpt2cy_load(tiny_dir, tmp_path):
    """One layout detector: what load_weights reads, gpt2cy.load (through the hub's path rules) reads too."""
    from gpt2cy.hub import models as hub
    from gpt2cy.loading import load
    d = _gpt2_simple_dir(tiny_dir, tmp_path / "run1")
    assert hub.model_layout(d) == "openai" and hub.resolve_model(d) == d
    model = load(d, threads=1)
    assert model.path == d and model.config.n_layer == 2
    ref = load(tiny_dir, threads=1)
    ids = model.tokenizer.encode("Hello world")
    assert np.array_equal(model.logits(ids), ref.logits(ids))


def test_layout_detector_rules(tiny_dir, tmp_path, vocab_dir):
    from gpt2cy.hub import models as hub
    layout = find_layout(tiny_dir)
    assert (layout.kind, layout.weights, layout.config) == ("tf", os.path.join(tiny_dir, "model.ckpt"),
                                                           os.path.join(tiny_dir, "hparams.json"))
    assert layout.weight_files == (os.path.join(tiny_dir, "model.ckpt.index"),
                                   os.path.join(tiny_dir, "model.ckpt.data-00000-of-00001"))
    assert layout.vocab == (os.path.join(tiny_dir, "encoder.json"), os.path.join(tiny_dir, "vocab.bpe"))
    assert layout.complete and layout.missing() == []
    hf = write_random_model(str(tmp_path / "hf"), SMALL_VOCAB, fmt="safetensors", vocab_dir=vocab_dir)
    layout = find_layout(hf)
    assert (layout.kind, layout.config, layout.vocab[0]) == ("safetensors", os.path.join(hf, "config.json"),
                                                             os.path.join(hf, "vocab.json"))
    os.remove(os.path.join(hf, "merges.txt"))              # weights without a vocabulary: loadable, not a model
    assert find_layout(hf).vocab is None and not find_layout(hf).complete
    assert find_layout(hf).missing() == ["merges.txt"] and hub.model_layout(hf) is None
    load_weights(hf)
    shutil.copy(os.path.join(vocab_dir, "vocab.bpe"), os.path.join(hf, "merges.txt"))
    os.remove(os.path.join(hf, "config.json"))             # optional for HF: the shapes give the config
    assert find_layout(hf).config is None and find_layout(hf).complete and hub.model_layout(hf) == "hf"
    half = tmp_path / "half"                                # a bundle without its data file
    half.mkdir()
    for f in ("hparams.json", "model.ckpt.index", "encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(tiny_dir, f), half)
    assert find_layout(str(half)).missing() == ["model.ckpt.data-00000-of-00001"]
    assert hub.model_layout(str(half)) is None
    with pytest.raises(CheckpointError, match="no GPT-2 checkpoint here"):
        find_layout(str(tmp_path))


def test_float16_bundle_keeps_its_type(tmp_path):
    d = write_random_model(str(tmp_path / "f16"), SMALL_VOCAB, seed=1, dtype="f16")
    w = load_weights(d)
    assert set(w.dtypes) == set(w.tensors) and set(w.dtypes.values()) == {"f16"}
    want = _tensors(SMALL_VOCAB, 1)
    for c, a in w.tensors.items():
        assert a.dtype == np.float16 and a.shape == want[c].shape and not a.flags.writeable
        np.testing.assert_array_equal(a, want[c].astype(np.float16))
    assert verify(d).n_bytes == 2 * SMALL_VOCAB.n_params


def test_f32_weights_at_unaligned_offsets_are_copied_and_run(tmp_path):
    """TF packs tensor bytes densely, so one 2-byte tensor sorted first puts every weight at offset 2 mod 4:
    the loader must hand the engine aligned copies, and the model must compute the same logits."""
    from gpt2cy.model import Model
    t = {tf_name(k): v.reshape((1, *v.shape)) if k.endswith(".w") else v
         for k, v in _tensors(SMALL_VOCAB, 0).items()}
    for name, extra in (("aligned", {}), ("odd", {"a_note": np.array([1.0], np.float16)})):
        d = tmp_path / name
        d.mkdir()
        write_bundle(str(d / "model.ckpt"), {**t, **extra})
        (d / "hparams.json").write_text(json.dumps(SMALL_VOCAB.to_json()))
    idx = read_index(str(tmp_path / "odd" / "model.ckpt.index"))
    assert all(e.offset % 4 == 2 for n, e in idx.entries.items() if n.startswith("model/"))
    odd, aligned = load_weights(str(tmp_path / "odd")), load_weights(str(tmp_path / "aligned"))
    for c, a in odd.tensors.items():
        assert a.flags.aligned and a.flags.c_contiguous and a.dtype == np.float32 and not a.flags.writeable
        np.testing.assert_array_equal(a, aligned.tensors[c])
    ids = [1, 5, 9, 96, 0]
    assert np.array_equal(Model(odd, threads=1).logits(ids), Model(aligned, threads=1).logits(ids))


@pytest.mark.parametrize("dtype,name", [(np.int32, "int32"), (np.float64, "float64"), (np.int64, "int64")])
def test_unsupported_weight_type_is_one_clear_error(tmp_path, dtype, name):
    t = {tf_name(k): v.reshape((1, *v.shape)) if k.endswith(".w") else v
         for k, v in _tensors(SMALL_VOCAB, 0).items()}
    t["model/h1/attn/c_proj/b"] = t["model/h1/attn/c_proj/b"].astype(dtype)
    write_bundle(str(tmp_path / "model.ckpt"), t)
    (tmp_path / "hparams.json").write_text(json.dumps(SMALL_VOCAB.to_json()))
    msg = _err(str(tmp_path), rf"tensor 'model/h1/attn/c_proj/b' is stored as {name}; supported weight types "
                              rf"are f32, f16, bf16$")
    assert msg.startswith(str(tmp_path / "model.ckpt.index"))


def test_optimizer_slots_and_global_step_ignored(tmp_path):
    d = tmp_path / "ft"
    d.mkdir()
    t = {tf_name(k): v.reshape((1, *v.shape)) if k.endswith(".w") else v
         for k, v in _tensors(SMALL_VOCAB, 0).items()}
    t["model/wte/Adam"] = np.zeros((97, 8), np.float32)
    t["global_step"] = np.array(1000, np.int64)
    t["beta1_power"] = np.float32(0.9)
    write_bundle(str(d / "model.ckpt"), t)
    (d / "hparams.json").write_text(json.dumps(SMALL_VOCAB.to_json()))
    w = load_weights(str(d))
    assert set(w.tensors) == set(expected_shapes(SMALL_VOCAB))
    assert verify(str(d)).n_tensors == len(t)


# --- broken model directories ---------------------------------------------------------------------

def _err(model_dir, match):
    with pytest.raises(CheckpointError, match=match) as e:
        load_weights(model_dir)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_truncated_data_file(model_copy):
    p = data_filename(os.path.join(model_copy, "model.ckpt"))
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 1000)
    msg = _err(model_copy, "but tensor .* needs bytes")
    assert msg.startswith(p)


def test_flipped_index_byte(model_copy):
    p = os.path.join(model_copy, "model.ckpt.index")
    data = bytearray(open(p, "rb").read())
    data[len(data) // 2] ^= 0x04
    open(p, "wb").write(data)
    assert _err(model_copy, "checksum mismatch").startswith(p)


def test_flipped_data_byte_is_found_by_verify_only(model_copy):
    p = data_filename(os.path.join(model_copy, "model.ckpt"))
    with open(p, "r+b") as f:
        f.seek(12345)
        b = f.read(1)
        f.seek(12345)
        f.write(bytes([b[0] ^ 1]))
    load_weights(model_copy)                       # loading never reads the data
    with pytest.raises(CheckpointError, match=r"checksum mismatch in tensor 'model/h0/attn/c_attn/w' \(bytes \[384, 12672\)"):
        verify(model_copy)


@pytest.mark.parametrize("key,value,match", [
    ("n_embd", 64, r"'model/wte' has shape \[50257, 32\], but .*hparams.json \(.*n_embd=64.* implies \[50257, 64\]"),
    ("n_ctx", 128, r"'model/wpe' has shape \[64, 32\].* implies \[128, 32\]"),
    ("n_vocab", 50000, r"'model/wte' has shape \[50257, 32\]"),
    ("n_layer", 3, r"missing tensor\(s\) model/h2/"),
    ("n_layer", 1, r"unexpected tensor 'model/h1/"),
])
def test_wrong_shape_in_hparams(model_copy, key, value, match):
    p = os.path.join(model_copy, "hparams.json")
    h = json.load(open(p))
    h[key] = value
    json.dump(h, open(p, "w"))
    _err(model_copy, match)


def test_missing_tensor(tmp_path):
    t = {tf_name(k): v.reshape((1, *v.shape)) if k.endswith(".w") else v
         for k, v in _tensors(SMALL_VOCAB, 0).items()}
    del t["model/h1/ln_2/b"]
    write_bundle(str(tmp_path / "model.ckpt"), t)
    (tmp_path / "hparams.json").write_text(json.dumps(SMALL_VOCAB.to_json()))
    _err(str(tmp_path), r"missing tensor\(s\) model/h1/ln_2/b that .*hparams.json")


def test_wrong_dtype(tmp_path):
    t = {tf_name(k): v.reshape((1, *v.shape)) if k.endswith(".w") else v
         for k, v in _tensors(SMALL_VOCAB, 0).items()}
    t["model/ln_f/g"] = t["model/ln_f/g"].astype(np.float64)
    write_bundle(str(tmp_path / "model.ckpt"), t)
    (tmp_path / "hparams.json").write_text(json.dumps(SMALL_VOCAB.to_json()))
    _err(str(tmp_path), r"'model/ln_f/g' is stored as float64; supported weight types are f32, f16, bf16")


@pytest.mark.parametrize("content,match", [
    (b"", "too short for a checkpoint index"),
    (b"\x00" * 100, "bad magic"),
    ("encoder", "bad magic"),
])
def test_non_checkpoint_index(model_copy, content, match):
    p = os.path.join(model_copy, "model.ckpt.index")
    if content == "encoder":
        content = open(os.path.join(model_copy, "encoder.json"), "rb").read()
    open(p, "wb").write(content)
    assert _err(model_copy, match).startswith(p)


def test_empty_data_file(model_copy):
    open(data_filename(os.path.join(model_copy, "model.ckpt")), "wb").close()
    _err(model_copy, "file is 0 bytes")


def test_missing_data_file(model_copy):
    os.remove(data_filename(os.path.join(model_copy, "model.ckpt")))
    _err(model_copy, "data-00000-of-00001: file not found")


@pytest.mark.parametrize("content,match", [
    (None, "hparams.json: file not found"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4}', "'n_layer' must be an integer"),
    (b'{"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 5, "n_layer": 2}', "not divisible"),
    (b'{"n_vocab": 50257, "n_ctx": 64, "n_embd": "32", "n_head": 4, "n_layer": 2}', "'n_embd' must be"),
    (b'{"n_vocab": 50257, "n_ctx": -64, "n_embd": 32, "n_head": 4, "n_layer": 2}', "out of range"),
])
def test_bad_hparams(model_copy, content, match):
    p = os.path.join(model_copy, "hparams.json")
    if content is None:
        os.remove(p)
    else:
        open(p, "wb").write(content)
    _err(model_copy, match)


def test_not_a_model_directory(tmp_path):
    _err(str(tmp_path / "nope"), "no such directory")
    (tmp_path / "file").write_text("x")
    _err(str(tmp_path / "file"), "not a directory")
    (tmp_path / "empty").mkdir()
    _err(str(tmp_path / "empty"), "no GPT-2 checkpoint here")
    with pytest.raises(CheckpointError, match="no GPT-2 checkpoint"):
        verify(str(tmp_path / "empty"))


def test_index_is_a_directory(model_copy):
    p = os.path.join(model_copy, "model.ckpt.index")
    os.remove(p)
    os.mkdir(p)
    _err(model_copy, "is a directory")


def _load_error_from_pipe(model_dir, name):
    """Replace `name` by a named pipe and return load_weights' error; fail (not hang) if it waits on the pipe."""
    import threading
    pipe = os.path.join(model_dir, name)
    os.remove(pipe)
    os.mkfifo(pipe)                   # open() for reading blocks until a writer comes
    out = []

    def load():
        try:
            load_weights(model_dir)
        except CheckpointError as e:
            out.append(str(e))
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():                  # release the reader so the thread ends, then fail
        os.close(os.open(pipe, os.O_WRONLY))
        t.join()
        pytest.fail(f"load_weights waited on the named pipe {name}")
    return out[0] if out else "no error"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("name", ["model.ckpt.index", "hparams.json"])
def test_a_named_pipe_is_refused_not_waited_on(model_copy, name):
    assert _load_error_from_pipe(model_copy, name).endswith(f"{name}: not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_safetensors_is_refused(tmp_path):
    d = write_random_model(str(tmp_path / "hf"), SMALL_VOCAB, fmt="safetensors")
    assert _load_error_from_pipe(d, "model.safetensors").endswith("model.safetensors: not a regular file")


def test_load_config(tiny_dir):
    assert load_config(tiny_dir).n_embd == 32
    assert read_index(os.path.join(tiny_dir, "model.ckpt.index")).header.num_shards == 1


def test_formats_and_text_never_import_the_hub(tiny_dir):
    """The hub turns names into paths, then calls the readers and the tokenizer; they never reach back."""
    import subprocess
    import sys
    code = ("import sys, gpt2cy.formats.checkpoint as c, gpt2cy.formats.layout, gpt2cy.formats.tfbundle, "
            "gpt2cy.formats.safetensors, gpt2cy.text.tokenizer as t\n"
            f"c.load_weights({tiny_dir!r}); c.verify({tiny_dir!r}); t.Tokenizer.from_dir({tiny_dir!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith('gpt2cy.hub') or m == 'urllib.request'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
