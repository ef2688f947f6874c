"""Checkpoint benchmarks on a random 124M model: load time (ours vs TF's reader vs the safetensors library)
and full verification throughput (our CRC-32C vs zlib's CRC-32 as a yardstick over the same bytes).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/bench_checkpoint.py --benchmark-only

Every benchmark first checks its result. The data file stays in the page cache across rounds (a warm-up
round reads it first), so the verify figures are memory bandwidth, not disk.
"""
import mmap
import os
import zlib

import numpy as np
import pytest

from gpt2cy.formats._crc32c import crc32c, hardware_accelerated
from gpt2cy.formats.checkpoint import load_weights, verify
from gpt2cy.config import PUBLISHED

from conftest import median

N_TENSORS = 148
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="session")
def model_124m_st_dir(tmp_path_factory):
    """The same random 124M weights in HuggingFace's layout."""
    from gpt2cy.testing import write_random_model
    path = tmp_path_factory.mktemp("gpt2-124M-random-st")
    return write_random_model(str(path), PUBLISHED["124M"], seed=0, fmt="safetensors")


def _gbps(benchmark, n_bytes):
    benchmark.extra_info["bytes"] = n_bytes
    med = median(benchmark)
    if med is not None:
        benchmark.extra_info["GB/s (median)"] = round(n_bytes / med / 1e9, 2)


# --- load -----------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="load-124M")
def test_load_ours_tf_layout(benchmark, model_124m_dir):
    w = benchmark.pedantic(load_weights, args=(model_124m_dir,), rounds=20, warmup_rounds=2)
    assert len(w.tensors) == N_TENSORS and w.tensors["h11.mlp.c_proj.w"].shape == (3072, 768)


@pytest.mark.benchmark(group="load-124M")
def test_load_ours_safetensors_layout(benchmark, model_124m_st_dir):
    w = benchmark.pedantic(load_weights, args=(model_124m_st_dir,), rounds=20, warmup_rounds=2)
    assert len(w.tensors) == N_TENSORS


@pytest.mark.benchmark(group="load-124M")
def test_load_peer_tensorflow_reader(benchmark, model_124m_dir):
    """What TF-based loaders (picoGPT, gpt-2-simple) do: CheckpointReader + get_tensor for each variable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    prefix = os.path.join(model_124m_dir, "model.ckpt")

    def load():
        r = tf.train.load_checkpoint(prefix)
        return {n: r.get_tensor(n) for n in r.get_variable_to_shape_map()}
    out = benchmark.pedantic(load, rounds=3, warmup_rounds=1)
    assert len(out) == N_TENSORS
    np.testing.assert_array_equal(out["model/wte"], load_weights(model_124m_dir).tensors["wte"])


@pytest.mark.benchmark(group="load-124M")
def test_load_peer_safetensors_library(benchmark, model_124m_st_dir):
    """The safetensors library's lazy numpy open, one get_tensor per weight (copies into new arrays)."""
    st = pytest.importorskip("safetensors")
    path = os.path.join(model_124m_st_dir, "model.safetensors")

    def load():
        with st.safe_open(path, framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    out = benchmark.pedantic(load, rounds=5, warmup_rounds=1)
    assert len(out) == N_TENSORS


# --- verify ---------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="verify-124M")
def test_verify_ours(benchmark, model_124m_dir):
    """CRC-32C of all 148 tensors plus the NaN/inf count, in one pass."""
    r = benchmark.pedantic(verify, args=(model_124m_dir,), rounds=10, warmup_rounds=1)
    assert r.n_bytes == 4 * PUBLISHED["124M"].n_params
    benchmark.extra_info["sse4.2"] = hardware_accelerated()
    _gbps(benchmark, r.n_bytes)


@pytest.fixture
def data_map(model_124m_dir):
    with open(os.path.join(model_124m_dir, DATA), "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    yield m
    m.close()


@pytest.mark.benchmark(group="verify-124M")
@pytest.mark.parametrize("hardware", [True, False], ids=["sse4.2", "slice-by-8"])
def test_crc32c_whole_file(benchmark, data_map, hardware):
    with memoryview(data_map) as view:   # released whatever happens: the mapping closes after the test
        want = crc32c(view[:1 << 20], hardware=False)
        assert crc32c(view[:1 << 20], hardware=hardware) == want
        benchmark.pedantic(crc32c, args=(view,), kwargs={"hardware": hardware}, rounds=5, warmup_rounds=1)
        _gbps(benchmark, len(view))


@pytest.mark.benchmark(group="verify-124M")
def test_peer_zlib_crc32_whole_file(benchmark, data_map):
    """Yardstick only: zlib's CRC-32 (a different polynomial) over the same bytes."""
    with memoryview(data_map) as view:
        benchmark.pedantic(zlib.crc32, args=(view,), rounds=5, warmup_rounds=1)
        _gbps(benchmark, len(view))
