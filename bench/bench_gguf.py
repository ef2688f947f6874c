"""GGUF benchmarks on a random 124M model: opening a q8_0 file (ours vs gguf-py's GGUFReader, the reference
Python reader), load to first logits from the file (its blocks used where they lie) beside the same load
from OpenAI's files with conversion at load, and `gpt2cy convert` to q8_0.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/bench_gguf.py --benchmark-only
"""
import numpy as np
import pytest

import gpt2cy
from gpt2cy.formats.checkpoint import load_weights
from gpt2cy.loading import export_gguf

from conftest import bench_threads

N_TENSORS = 148


@pytest.fixture(scope="session")
def gguf_124m_q8_0(model_124m_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf-124M") / "gpt2-124M-q8_0.gguf")
    export_gguf(model_124m_dir, path, dtype="q8_0", threads=bench_threads())
    return path


@pytest.mark.benchmark(group="gguf-open-124M-q8_0")
def test_open_ours(benchmark, gguf_124m_q8_0):
    w = benchmark.pedantic(load_weights, args=(gguf_124m_q8_0,), rounds=10, warmup_rounds=1)
    assert len(w.tensors) == N_TENSORS and w.dtypes["h0.attn.c_attn.w"] == "q8_0"


@pytest.mark.benchmark(group="gguf-open-124M-q8_0")
def test_open_peer_gguf_py(benchmark, gguf_124m_q8_0):
    gguf = pytest.importorskip("gguf")
    r = benchmark.pedantic(gguf.GGUFReader, args=(gguf_124m_q8_0,), rounds=3, warmup_rounds=1)
    assert len(r.tensors) == N_TENSORS


@pytest.mark.parametrize("source", ["gguf", "openai+convert"])
def test_load_to_first_logits_q8_0(benchmark, gguf_124m_q8_0, model_124m_dir, source):
    benchmark.group = "gguf-load-to-logits-124M-q8_0"
    nt = bench_threads()
    path = gguf_124m_q8_0 if source == "gguf" else model_124m_dir

    def run():
        return gpt2cy.load(path, threads=nt, dtype="q8_0").logits([464])

    out = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (1, 50257) and np.isfinite(out).all()
    benchmark.extra_info.update(threads=nt)


@pytest.mark.benchmark(group="gguf-convert-124M")
def test_convert_q8_0(benchmark, model_124m_dir, tmp_path):
    out = str(tmp_path / "c.gguf")
    res = benchmark.pedantic(export_gguf, args=(model_124m_dir, out), kwargs=dict(dtype="q8_0", threads=bench_threads()),
                             rounds=3, warmup_rounds=0)
    assert res["tensors"] == N_TENSORS
