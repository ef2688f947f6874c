"""Matrix products at GPT-2's shapes: gpt2cy's kernels beside numpy's BLAS (the yardstick) in the same group.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/pytest bench/bench_matmul.py --benchmark-only
Groups: matmul:<shape> (prefill, GFLOP/s), lm_head:<shape> (x @ wte.T), decode:<what> (one row, GB/s of
weights streamed), rows:<m> (124M's blocks for 16-128 rows: the streamed path's hand-over to the tiles), and
per weight dtype (bf16, q8_0 beside f32) lowp-decode:<what> and lowp-prefill:<shape>.
Every result is checked against numpy before it counts (for bf16 and q8_0: numpy over the dequantized
weights).
"""
import numpy as np
import pytest
from conftest import bench_threads, median

from gpt2cy.engine._dtypes import linear_py
from gpt2cy.engine._matmul import matmul_py
from gpt2cy.engine.weights import convert, to_float32

IMPLS = ["gpt2cy", "numpy"]
T = 512   # prompt positions in a prefill
# (name, K, N): the four projections of a block, 124M (d=768) and 1558M (d=1600)
PREFILL = [("124M.c_attn", 768, 2304), ("124M.attn.c_proj", 768, 768), ("124M.c_fc", 768, 3072),
           ("124M.mlp.c_proj", 3072, 768), ("1558M.c_attn", 1600, 4800), ("1558M.c_fc", 1600, 6400),
           ("1558M.mlp.c_proj", 6400, 1600)]
N_VOCAB = 50257


def _record(benchmark, flops=None, nbytes=None):
    med = median(benchmark)
    benchmark.extra_info["threads"] = bench_threads()
    if med is None:
        return
    if flops:
        benchmark.extra_info["GFLOP/s"] = round(flops / med / 1e9, 1)
    if nbytes:
        benchmark.extra_info["GB/s"] = round(nbytes / med / 1e9, 2)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,k,n", PREFILL, ids=[p[0] for p in PREFILL])
def test_prefill(benchmark, rng, impl, name, k, n):
    x = rng.standard_normal((T, k), dtype=np.float32)
    w = (rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k)))
    b = rng.standard_normal(n, dtype=np.float32)
    benchmark.group = f"matmul:{T}x{k}@{k}x{n} ({name})"
    nt = bench_threads()
    fn = (lambda: matmul_py(x, w, b, n_threads=nt)) if impl == "gpt2cy" else (lambda: x @ w + b)
    out = benchmark(fn)
    np.testing.assert_allclose(out, x @ w + b, rtol=1e-4, atol=1e-4)   # a fast wrong answer is no result
    _record(benchmark, flops=2.0 * T * k * n)


@pytest.fixture(scope="module")
def wte(rng):
    return (rng.standard_normal((N_VOCAB, 768), dtype=np.float32) * np.float32(0.05))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", [1, 256])
def test_lm_head(benchmark, rng, wte, impl, m):
    # logits = x @ wte.T: m = 1 in decode (streams 154 MB), m rows for model.logits(ids)
    x = rng.standard_normal((m, 768), dtype=np.float32)
    benchmark.group = f"lm_head:{m}x768@wte.T"
    nt = bench_threads()
    fn = (lambda: matmul_py(x, wte, transposed=True, n_threads=nt)) if impl == "gpt2cy" else (lambda: x @ wte.T)
    out = benchmark(fn)
    np.testing.assert_allclose(out, x @ wte.T, rtol=1e-4, atol=1e-4)
    _record(benchmark, flops=2.0 * m * 768 * N_VOCAB, nbytes=wte.nbytes if m == 1 else None)


@pytest.fixture(scope="module")
def layers_124m(rng):
    """All 12 blocks' projection weights of 124M (340 MB): ten times the L3 cache, so decode streams DRAM."""
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
    return [(rng.standard_normal((k, n), dtype=np.float32) * np.float32(0.03),
             rng.standard_normal((1, k), dtype=np.float32)) for k, n in shapes]


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_matvec(benchmark, layers_124m, impl):
    benchmark.group = "decode:124M blocks' weights (1 row x 48 matrices, 340 MB)"
    _time_blocks(benchmark, impl, layers_124m)
    _record(benchmark, nbytes=sum(w.nbytes for w, _ in layers_124m))


def _time_blocks(benchmark, impl, pairs):
    """Times x @ w over every (w, x) pair, by gpt2cy or numpy, and checks the first block's four against numpy."""
    nt = bench_threads()
    if impl == "gpt2cy":
        def fn():
            return [matmul_py(x, w, n_threads=nt) for w, x in pairs]
    else:
        def fn():
            return [x @ w for w, x in pairs]
    outs = benchmark(fn)
    for (w, x), out in zip(pairs[:4], outs[:4]):
        np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-4)   # a fast wrong answer is no result


ROWS = [16, 17, 32, 64, 65, 128]   # around the hand-over from the streamed path to the tiles (_gemm.h)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", ROWS)
def test_short_prompt(benchmark, rng, layers_124m, impl, m):
    """124M's 48 block matmuls for m rows (a short prompt, a chunk of a long one, a big batch's step): where
    GEMM_MV_MAXM hands over from the streamed matrix-vector path to the packed tiles, so its crossover can be
    re-measured on each CPU (GFLOP/s beside numpy's BLAS)."""
    benchmark.group = f"rows:{m} x 124M blocks' weights (48 matrices)"
    xs = {k: rng.standard_normal((m, k), dtype=np.float32) for k in (768, 3072)}
    pairs = [(w, xs[w.shape[0]]) for w, _ in layers_124m]
    _time_blocks(benchmark, impl, pairs)
    _record(benchmark, flops=2.0 * m * sum(w.size for w, _ in pairs))


# ------------------------------------------------------------------------------------ weight dtypes

DTYPES = ["f32", "bf16", "q8_0"]


@pytest.fixture(scope="module")
def layers_124m_by_dtype(layers_124m):
    cache = {}

    def get(dtype):
        if dtype not in cache:
            cache[dtype] = [(convert("w", w, dtype, matmul=True, n_threads=bench_threads()), x)
                            for w, x in layers_124m]
        return cache[dtype]
    return get


def kernel_inputs(dtype, x):
    """The activations a dtype's products multiply by: x itself (f32), x rounded to bf16 (bf16), or its
    8-bit blocks dequantized (q8_0): the reference the timed results are checked against."""
    from gpt2cy.engine import _matmul, _qblocks, _quantize
    if dtype == "bf16":
        return _quantize.bf16_to_f32(_matmul.bf16_round_rows(x))[:, :x.shape[1]]
    if dtype == "q8_0":
        q, d = _qblocks.quantize_activations(x)
        return (q.reshape(len(x), -1, 32) * d[..., None]).reshape(x.shape).astype(np.float32)
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_matvec_dtype(benchmark, layers_124m_by_dtype, dtype):
    # the same 48 matrices in each dtype through the engine's kernel table: bytes streamed per token shrink
    benchmark.group = "lowp-decode:124M blocks' weights (1 row x 48 matrices)"
    nt = bench_threads()
    layers = layers_124m_by_dtype(dtype)
    outs = benchmark(lambda: [linear_py(wt, x, n_threads=nt) for wt, x in layers])
    for (wt, x), out in zip(layers[:4], outs[:4]):
        np.testing.assert_allclose(out, kernel_inputs(dtype, x) @ to_float32(wt), rtol=1e-4, atol=1e-4)
    benchmark.extra_info["dtype"] = dtype
    _record(benchmark, nbytes=sum(wt.data.nbytes for wt, _ in layers))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,k,n", PREFILL[:4], ids=[p[0] for p in PREFILL[:4]])
def test_prefill_dtype(benchmark, rng, dtype, name, k, n):
    x = rng.standard_normal((T, k), dtype=np.float32)
    w = (rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k)))
    b = rng.standard_normal(n, dtype=np.float32)
    wt = convert("w", w, dtype, matmul=True, n_threads=bench_threads())
    benchmark.group = f"lowp-prefill:{T}x{k}@{k}x{n} ({name})"
    nt = bench_threads()
    out = benchmark(lambda: linear_py(wt, x, b, n_threads=nt))
    np.testing.assert_allclose(out, kernel_inputs(dtype, x) @ to_float32(wt) + b, rtol=1e-4, atol=1e-4)
    benchmark.extra_info["dtype"] = dtype
    _record(benchmark, flops=2.0 * T * k * n)
