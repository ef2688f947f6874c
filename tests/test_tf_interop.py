"""Cross-checks with TensorFlow itself: TF reads what we write, we read what TF writes, and for the same
tensors our .index and .data files are byte-identical to TF's. (TF imports slowly: all TF tests live here.)"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gpt2cy import CheckpointError  # noqa: E402

tf = pytest.importorskip("tensorflow")

from gpt2cy.formats.checkpoint import load_weights, verify  # noqa: E402
from gpt2cy.formats.names import tf_name, tf_shapes  # noqa: E402
from gpt2cy.tensors import expected_shapes  # noqa: E402
from gpt2cy.config import Config  # noqa: E402
from gpt2cy.testing import write_random_model  # noqa: E402
from gpt2cy.formats.tfbundle import TensorBundle, data_filename  # noqa: E402
from gpt2cy.formats.tfbundle_writer import write_bundle  # noqa: E402

TINY = Config(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2)
SMALL = Config(n_vocab=97, n_ctx=16, n_embd=8, n_head=2, n_layer=2)


def _gpt2_tensors(config, seed=0):
    """TF name -> array with GPT-2's checkpoint shapes."""
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in tf_shapes(config).items()}


def _save_v2(prefix, tensors):
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])


def _files(prefix):
    return open(prefix + ".index", "rb").read(), open(data_filename(prefix), "rb").read()


def test_tensorflow_reads_our_model(tmp_path):
    d = write_random_model(str(tmp_path / "m"), TINY, seed=2)
    prefix = os.path.join(d, "model.ckpt")
    assert dict(tf.train.list_variables(prefix)) == {n: list(s) for n, s in tf_shapes(TINY).items()}
    reader = tf.train.load_checkpoint(prefix)
    ours = load_weights(d).tensors
    for canonical in expected_shapes(TINY):
        theirs = reader.get_tensor(tf_name(canonical))
        assert theirs.dtype == np.float32
        np.testing.assert_array_equal(theirs.reshape(ours[canonical].shape), ours[canonical])


def test_our_files_are_byte_identical_to_tensorflows(tmp_path):
    tensors = _gpt2_tensors(SMALL)
    write_bundle(str(tmp_path / "ours"), tensors)
    _save_v2(str(tmp_path / "theirs"), tensors)
    assert _files(str(tmp_path / "ours")) == _files(str(tmp_path / "theirs"))


def test_byte_identical_for_other_dtypes(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {"f64": rng.standard_normal((3, 2)), "i32": np.arange(-4, 4, dtype=np.int32),
               "i64": np.array([2 ** 40, -7], dtype=np.int64), "f16": np.array([0.5, -3], np.float16),
               "scalar": np.float32(2.5), "empty": np.zeros((0, 3), np.float32), "neg/dim": np.ones((1, 1), np.float32)}
    write_bundle(str(tmp_path / "ours"), tensors)
    _save_v2(str(tmp_path / "theirs"), tensors)
    assert _files(str(tmp_path / "ours")) == _files(str(tmp_path / "theirs"))
    b = TensorBundle(str(tmp_path / "theirs"))
    for n, a in tensors.items():
        np.testing.assert_array_equal(b.tensor(n), a)
    b.verify()


def test_byte_identical_with_several_data_blocks(tmp_path):
    """6000 entries overflow the 256 KiB data block: separators and block splits must match TF's."""
    names = [f"layer{i:05d}/{'w' * 40}{i % 7}" for i in range(6000)]
    tensors = {n: np.full(2, i, np.float32) for i, n in enumerate(names)}
    write_bundle(str(tmp_path / "ours"), tensors)
    _save_v2(str(tmp_path / "theirs"), tensors)
    ours, theirs = _files(str(tmp_path / "ours")), _files(str(tmp_path / "theirs"))
    assert len(ours[0]) > 300_000 and ours == theirs
    reader = tf.train.load_checkpoint(str(tmp_path / "ours"))
    np.testing.assert_array_equal(reader.get_tensor(names[4321]), [4321, 4321])


def test_we_read_a_tf1_saver_checkpoint(tmp_path):
    """The way OpenAI's files were made: tf.compat.v1 Saver over variables named model/..., in a graph."""
    values = _gpt2_tensors(SMALL, seed=9)
    d = tmp_path / "saver"
    d.mkdir()
    with tf.Graph().as_default():
        for name, v in values.items():
            tf.compat.v1.Variable(v, name=name)
        tf.compat.v1.Variable(np.int64(42), name="global_step")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(d / "model.ckpt"))
    (d / "hparams.json").write_text(json.dumps(SMALL.to_json()))
    assert {"checkpoint", "model.ckpt.meta", "model.ckpt.index"} <= set(os.listdir(d))
    w = load_weights(str(d))
    for canonical, a in w.tensors.items():
        np.testing.assert_array_equal(a, values[tf_name(canonical)].reshape(a.shape))
    r = verify(str(d))
    assert r.n_tensors == len(values) + 1 and r.checksummed


def test_we_read_a_tf2_object_checkpoint(tmp_path):
    """tf.train.Checkpoint adds a string tensor (the object graph): indexed and checksummed, never viewed."""
    module = tf.Module()
    module.wte = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "obj"))
    b = TensorBundle(prefix)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in b.entries
    np.testing.assert_array_equal(b.tensor("model/wte/.ATTRIBUTES/VARIABLE_VALUE"),
                                  np.arange(12, dtype=np.float32).reshape(4, 3))
    b.verify()
    # damage one byte of the serialized object graph: its CRC (computed TF's way for strings) catches it
    e = b.entries["_CHECKPOINTABLE_OBJECT_GRAPH"]
    raw = bytearray(open(b.data_path, "rb").read())
    raw[e.offset + e.size - 1] ^= 0x20
    open(b.data_path, "wb").write(raw)
    with pytest.raises(CheckpointError, match="checksum mismatch in tensor '_CHECKPOINTABLE_OBJECT_GRAPH'"):
        TensorBundle(prefix).verify()
    with pytest.raises(CheckpointError, match="holds strings"):
        b.tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
