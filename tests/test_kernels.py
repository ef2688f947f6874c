"""The non-matmul kernels (gpt2cy.engine._kernels) against float64 numpy."""
import numpy as np
import pytest

from gpt2cy.engine import _kernels as K

import reference as ref


def rand(rng, shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


@pytest.mark.parametrize("T,C", [(1, 768), (7, 64), (3, 77), (2, 1), (5, 1600)], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_layernorm_matches_numpy(rng, T, C, threads):
    # a large common offset checks the two-pass variance (no catastrophic cancellation)
    x, g, b = rand(rng, (T, C), 3.0, 50.0), rand(rng, C, 0.5, 1.0), rand(rng, C, 0.1)
    want = ref.layer_norm(x.astype(np.float64), g, b)
    got = K.layernorm_py(x, g, b, n_threads=threads)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_layernorm_eps_matters(rng):
    # a constant row has zero variance: the result is exactly b, and finite (eps 1e-5 in the denominator)
    x = np.full((2, 64), 3.5, dtype=np.float32)
    g, b = rand(rng, 64), rand(rng, 64)
    np.testing.assert_allclose(K.layernorm_py(x, g, b), np.broadcast_to(b, (2, 64)), atol=1e-6)
    # and eps is 1e-5, not 1e-12: a row of tiny variance is damped
    x = (rng.standard_normal((1, 64)) * 1e-3).astype(np.float32)
    want = ref.layer_norm(x.astype(np.float64), g, b, eps=1e-5)
    np.testing.assert_allclose(K.layernorm_py(x, g, b), want, atol=1e-5)
    assert np.abs(K.layernorm_py(x, g, b) - ref.layer_norm(x.astype(np.float64), g, b, eps=1e-12)).max() > 1e-2


def test_layernorm_rejects_mismatched_shapes(rng):
    with pytest.raises(ValueError):
        K.layernorm_py(rand(rng, (2, 8)), rand(rng, 7), rand(rng, 8))


def test_embed(rng):
    wte, wpe = rand(rng, (100, 12)), rand(rng, (20, 12))
    ids = np.array([0, 99, 5, 5], dtype=np.intp)
    np.testing.assert_array_equal(K.embed_py(ids, 3, wte, wpe), wte[ids] + wpe[3:7])
    with pytest.raises(ValueError):
        K.embed_py(np.array([100], dtype=np.intp), 0, wte, wpe)
    with pytest.raises(ValueError):
        K.embed_py(ids, 17, wte, wpe)


def numpy_attention(qkv, n_head):
    C = qkv.shape[1] // 3
    q, k, v = (qkv[:, i * C:(i + 1) * C].astype(np.float64) for i in range(3))
    return ref.causal_attention(q, k, v, n_head)


@pytest.mark.parametrize("N,n_past,n_head,C", [
    (1, 0, 1, 8),        # one position
    (40, 0, 4, 64),      # prefill, head_dim 16
    (40, 39, 4, 64),     # one decode step after a 39-token prefill
    (33, 20, 12, 768),   # GPT-2 124M heads, a prefill continuing a cache
    (70, 10, 3, 48),     # odd head count
    (21, 13, 25, 1600),  # GPT-2 1558M heads
], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_attention_matches_numpy(rng, N, n_past, n_head, C, threads):
    qkv = rand(rng, (N, 3 * C), 1.5)
    want = numpy_attention(qkv, n_head)[n_past:]
    # the cache outside the written positions is NaN in attention_py: a read past the causal limit shows
    got = K.attention_py(qkv, n_head, n_past, N + 5, n_threads=threads)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_attention_is_causal(rng):
    # changing a later position's key/value must not change earlier outputs
    qkv = rand(rng, (10, 3 * 16))
    a = K.attention_py(qkv, 2, 0, 10)
    qkv[7, 16:] += 5.0
    b = K.attention_py(qkv, 2, 0, 10)
    np.testing.assert_array_equal(a[:7], b[:7])
    assert np.abs(a[7:] - b[7:]).max() > 1e-3


def test_attention_peaky_scores_are_stable(rng):
    qkv = rand(rng, (16, 3 * 32), 30.0)      # scores in the thousands: exp overflows without max-subtraction
    got = K.attention_py(qkv, 2, 0, 16)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, numpy_attention(qkv, 2), atol=1e-4)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 1000, (1 << 16) * 3 + 5])
@pytest.mark.parametrize("threads", [1, 2])
def test_stream_sum(rng, n, threads):
    # the benchmarks' read-bandwidth probe (gpt2cy.engine._bandwidth): its sum must be right to count
    from gpt2cy.engine._bandwidth import stream_sum
    x = rand(rng, n)
    assert stream_sum(x, threads) == pytest.approx(x.astype(np.float64).sum(), rel=1e-5, abs=1e-3)


def test_nan_propagates(rng):
    # a NaN from corrupt weights must show in the output, never be silently masked
    qkv = rand(rng, (6, 3 * 16))
    qkv[2, 16 + 3] = np.nan                      # one key of position 2
    out = K.attention_py(qkv, 2, 0, 6)
    assert np.isfinite(out[:2]).all() and np.isnan(out[2:, :8]).all()
