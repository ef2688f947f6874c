"""gpt2cy.engine._matmul against float64 numpy: decode, prefill, ragged tiles, epilogues, strides, threads, errors."""
import numpy as np
import pytest

from gpt2cy.engine._matmul import debug_hooks, isa, matmul_py, set_debug_late

TOL = dict(rtol=1e-5, atol=1e-5)   # fp32 sums of O(1) terms against the float64 answer
MR, NR = isa()[1], isa()[2]


def rand_problem(rng, m, k, n):
    """x [m, k] ~ N(0, 1), w [k, n] scaled so outputs are O(1), bias [n]."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(max(k, 1))).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, w, b


def ref(x, w, b=None):
    out = x.astype(np.float64) @ w.astype(np.float64)
    return out if b is None else out + b


def gelu64(v):
    return 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)))


SHAPES = [(1, 5, 3), (3, 5, 130), (17, 33, 65), (1, 768, 2304), (1, 3072, 768), (7, 768, 3072), (16, 40, 100),
          (MR, 64, NR), (MR + 1, 257, NR - 1), (64, 513, 100), (2, 1, 1), (1, 1, 70)]


@pytest.mark.parametrize("m,k,n", SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_matches_float64(rng, m, k, n, with_bias):
    x, w, b = rand_problem(rng, m, k, n)
    b = b if with_bias else None
    np.testing.assert_allclose(matmul_py(x, w, b, n_threads=2), ref(x, w, b), **TOL)


@pytest.mark.parametrize("m,k,n", [(1, 768, 3072), (17, 33, 65), (40, 768, 200)], ids=str)
def test_gelu_epilogue_matches_tanh_gelu(rng, m, k, n):
    x, w, b = rand_problem(rng, m, k, n)
    x *= 3.0   # reach the tails of GELU (large negative and positive arguments) too
    np.testing.assert_allclose(matmul_py(x, w, b, act=1, n_threads=2), gelu64(ref(x, w, b)), **TOL)


def test_gelu_extremes():
    # 1x1 products reach GELU's saturated ends, zero and non-finite-free extremes exactly
    v = np.array([[-1e4, -100.0, -10.0, -1e-30, 0.0, 1e-30, 0.5, 10.0, 100.0, 1e4]], np.float32).T
    got = matmul_py(v, np.ones((1, 1), np.float32), act=1)[:, 0]
    np.testing.assert_allclose(got, gelu64(v[:, 0].astype(np.float64)), rtol=1e-6, atol=1e-30)
    assert np.all(np.isfinite(got))


def test_prefill_large_once(rng):
    x, w, b = rand_problem(rng, 513, 768, 2304)   # 64 full row tiles + 1 ragged row, 72 panels
    np.testing.assert_allclose(matmul_py(x, w, b, n_threads=2), ref(x, w, b), **TOL)


@pytest.mark.parametrize("m,k,n", [(1, 768, 768), (1, 3072, 768), (19, 300, 70), (64, 3072, 96)], ids=str)
def test_accumulate_is_a_fused_residual_add(rng, m, k, n):
    x, w, b = rand_problem(rng, m, k, n)
    r = rng.standard_normal((m, n)).astype(np.float32)
    out = r.copy()
    matmul_py(x, w, b, n_threads=2, out=out, accumulate=True)
    np.testing.assert_allclose(out, r + ref(x, w, b), **TOL)
    # an activation with accumulate is outside the contract (GPT-2 never adds an activation's output)
    with pytest.raises(ValueError, match="accumulate"):
        matmul_py(x, w, b, act=1, out=out, accumulate=True)


@pytest.mark.parametrize("m,k,n", [(1, 64, 100), (5, 40, 33), (37, 300, 130)], ids=str)
@pytest.mark.parametrize("transposed", [False, True], ids=["nn", "nt"])
def test_strided_views_of_wider_buffers(rng, m, k, n, transposed):
    # the forward pass passes column slices of wider activations (row stride > row length); nothing outside
    # the out view may change, and an odd start offset must not matter
    x, w, b = rand_problem(rng, m, k, n)
    xbuf = rng.standard_normal((m, k + 7)).astype(np.float32)
    xbuf[:, 3:3 + k] = x
    obuf = rng.standard_normal((m, n + 9)).astype(np.float32)
    before = obuf.copy()
    xv, ov = xbuf[:, 3:3 + k], obuf[:, 5:5 + n]
    if transposed:
        matmul_py(xv, np.ascontiguousarray(w.T), transposed=True, n_threads=2, out=ov)
        expect = ref(x, w)
    else:
        ov[:] = 0.5
        matmul_py(xv, w, b, n_threads=2, out=ov, accumulate=True)
        expect = 0.5 + ref(x, w, b)
    np.testing.assert_allclose(ov, expect, **TOL)
    np.testing.assert_array_equal(obuf[:, :5], before[:, :5])
    np.testing.assert_array_equal(obuf[:, 5 + n:], before[:, 5 + n:])


@pytest.mark.parametrize("m,k,n", [(1, 768, 1000), (1, 33, 7), (1, 47, 50), (2, 768, 1000),
                                   (17, 33, 65), (64, 768, 2053)], ids=str)
def test_matmul_nt_is_the_tied_head(rng, m, k, n):
    x, w, _ = rand_problem(rng, m, k, n)
    wt = np.ascontiguousarray(w.T)   # [n, k], like wte [n_vocab, n_embd]
    np.testing.assert_allclose(matmul_py(x, wt, transposed=True, n_threads=2), ref(x, w), **TOL)


BITS_CASES = [(1, 768, 2304, 0), (1, 3072, 768, 1), (3, 3072, 128, 1), (5, 64, 300, 0), (12, 300, 130, 1),
              (37, 300, 130, 1), (64, 200, 2100, 1), (101, 96, 40, 0), (130, 96, 40, 0)]


@pytest.mark.parametrize("m,k,n,act", BITS_CASES, ids=str)
def test_threads_do_not_change_bits(rng, m, k, n, act):
    # each output element is summed in one fixed order, whatever the split between threads
    x, w, b = rand_problem(rng, m, k, n)
    r = rng.standard_normal((m, n)).astype(np.float32)
    wt = np.ascontiguousarray(w.T)
    outs = {}
    for t in (1, 2, 3, 4):
        acc = r.copy()
        matmul_py(x, w, b, n_threads=t, out=acc, accumulate=True)
        outs[t] = (matmul_py(x, w, b, act=act, n_threads=t), acc, matmul_py(x, wt, transposed=True, n_threads=t))
    for t in (2, 3, 4):
        for got, want in zip(outs[t], outs[1]):
            assert np.array_equal(got, want), f"{t} threads differ from 1"


def test_repeated_parallel_decode_is_stable(rng):
    # the K-split decode path hands partial sums between threads (through a scratch reused across calls):
    # a mis-indexed or unsynchronised hand-over shows up as a run that differs from one thread's answer
    # (inputs alternate, so stale partial sums of the previous call cannot pass for fresh ones)
    x, w, b = rand_problem(rng, 4, 3072, 768)
    want = [matmul_py(x[i:i + 1], w, b, n_threads=1) for i in range(4)]
    for rep, t in enumerate([2, 3, 4] * 40):
        i = rep % 4
        assert np.array_equal(matmul_py(x[i:i + 1], w, b, n_threads=t), want[i]), f"{t} threads, run {rep}"


@pytest.mark.skipif(not debug_hooks(), reason="needs a GPT2CY_DEBUG=1 build with OpenMP (the debug hooks)")
@pytest.mark.parametrize("late", [0, 1], ids=["thread0-late", "thread1-late"])
def test_ksplit_waits_for_a_late_thread(rng, late):
    # the K-split decode path combines every K block's partial sums after a barrier; a debug build can make
    # one thread late before it writes its blocks, so a missing barrier gives sums from the previous call's
    # scratch (inputs alternate, so those are wrong) instead of passing by luck
    x, w, b = rand_problem(rng, 2, 3072, 768)      # 16 K blocks: the K split at 2 threads
    want = [matmul_py(x[i:i + 1], w, b, n_threads=1) for i in range(2)]
    set_debug_late(late, 20000)                    # 20 ms: far longer than the other thread's share
    try:
        for rep in range(6):
            i = rep % 2
            assert np.array_equal(matmul_py(x[i:i + 1], w, b, n_threads=2), want[i]), f"run {rep}"
    finally:
        set_debug_late(-1, 0)


def test_debug_hooks_are_debug_only():
    if debug_hooks():
        set_debug_late(-1, 0)
    else:
        with pytest.raises(RuntimeError, match="debug"):
            set_debug_late(0, 10)


@pytest.mark.parametrize("k,n", [(768, 2304), (3072, 768), (517, 203)], ids=str)   # column split; K split (tall w); tails
def test_decode_rows_have_the_same_bits_as_prefill_rows(rng, k, n):
    # the streaming path (decode, and up to 64 rows: prompt chunks, big batches; up to 128 as two halves) and
    # the tile path (129 rows or more) perform the same operations per element, so a row's result does not
    # depend on how many rows came with it
    x, w, b = rand_problem(rng, 150, k, n)
    for act in (0, 1):
        full = matmul_py(x, w, b, act=act, n_threads=2)
        for i in (0, 7, 8, 36, 149):
            assert np.array_equal(matmul_py(x[i:i + 1], w, b, act=act, n_threads=2)[0], full[i])
        for m in (2, 3, 5, 16, 17, 37, 64, 65, 128, 129):   # 2 and 3 rows have a kernel of their own
            assert np.array_equal(matmul_py(x[:m], w, b, act=act, n_threads=2), full[:m])


def test_empty_and_zero_k(rng):
    x, w, b = rand_problem(rng, 3, 0, 5)
    np.testing.assert_array_equal(matmul_py(x, w, b), np.broadcast_to(b, (3, 5)))
    assert matmul_py(np.zeros((0, 4), np.float32), np.ones((4, 6), np.float32)).shape == (0, 6)


def test_random_shapes(rng):
    # many small ragged shapes through every path (M = 1, partial row and column tiles, K tails)
    for _ in range(60):
        m, k, n = int(rng.integers(1, 3 * MR + 3)), int(rng.integers(1, 300)), int(rng.integers(1, 3 * NR))
        x, w, b = rand_problem(rng, m, k, n)
        t = int(rng.integers(1, 4))
        np.testing.assert_allclose(matmul_py(x, w, b, n_threads=t), ref(x, w, b), **TOL)
        np.testing.assert_allclose(matmul_py(x, np.ascontiguousarray(w.T), transposed=True, n_threads=t),
                                   ref(x, w), **TOL)


def _bad_calls():
    x, w = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    wide = np.ones((2, 8), np.float32)
    return [
        ("shape", lambda: matmul_py(x, np.ones((4, 4), np.float32))),
        ("shape", lambda: matmul_py(x, np.ones((3, 4), np.float32), transposed=True)),
        ("float32", lambda: matmul_py(x.astype(np.float64), w)),
        ("2-D", lambda: matmul_py(np.ones(3, np.float32), w)),
        ("numpy array", lambda: matmul_py([[1.0, 2.0, 3.0]], w)),
        ("n_threads", lambda: matmul_py(x, w, n_threads=0)),
        ("act", lambda: matmul_py(x, w, act=2)),
        ("bias", lambda: matmul_py(x, w, np.ones(5, np.float32))),
        ("bias", lambda: matmul_py(x, w, np.ones(4, np.float64))),
        ("transposed", lambda: matmul_py(x, np.ones((4, 3), np.float32), np.ones(4, np.float32), transposed=True)),
        ("C-contiguous", lambda: matmul_py(x, np.ones((4, 3), np.float32).T)),
        ("contiguous", lambda: matmul_py(wide[:, ::2][:, :3], w)),
        ("shape", lambda: matmul_py(x, w, out=np.empty((2, 5), np.float32))),
        ("overlap", lambda: matmul_py(wide[:, :3], np.ones((3, 4), np.float32), out=wide[:, 4:])),
        ("read-only", lambda: matmul_py(x, w, out=np.broadcast_to(np.float32(0), (2, 4)))),
        ("needs out", lambda: matmul_py(x, w, accumulate=True)),
        ("takes no act", lambda: matmul_py(x, w, act=1, out=np.zeros((2, 4), np.float32), accumulate=True)),
    ]


@pytest.mark.parametrize("what,call", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_arguments_raise_value_error(what, call):
    with pytest.raises(ValueError, match=what):
        call()
