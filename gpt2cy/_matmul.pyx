# cython: boundscheck=False, wraparound=False, cdivision=True
# (callers validate shapes in Python; the loops index raw pointers)
"""Matrix products for prefill (many rows) and decode (one row). Placeholder: simple and correct."""
from cython.parallel cimport prange
cimport cython
import numpy as np
from ._math cimport gelu


cdef void matmul(const float* x, Py_ssize_t ldx, const float* w, const float* bias,
                 float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                 int act, bint accumulate, int n_threads) noexcept nogil:
    cdef Py_ssize_t m, n, k
    cdef float s
    for m in range(M):
        for n in prange(N, num_threads=n_threads, schedule="static"):
            s = 0.0
            for k in range(K):
                s = s + x[m * ldx + k] * w[k * N + n]
            if bias != NULL:
                s = s + bias[n]
            if act == ACT_GELU:
                s = gelu(s)
            if accumulate:
                out[m * ldo + n] += s
            else:
                out[m * ldo + n] = s


cdef void matmul_nt(const float* x, Py_ssize_t ldx, const float* wt,
                    float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                    int n_threads) noexcept nogil:
    cdef Py_ssize_t m, n, k
    cdef float s
    for m in range(M):
        for n in prange(N, num_threads=n_threads, schedule="static"):
            s = 0.0
            for k in range(K):
                s = s + x[m * ldx + k] * wt[n * K + k]
            out[m * ldo + n] = s


def matmul_py(const float[:, ::1] x, const float[:, ::1] w, bias=None, int act=0,
              bint transposed=False, int n_threads=1):
    """out = act(x @ w + bias), or x @ w.T when transposed (w is then [N, K]). For tests and benchmarks."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1]
    cdef Py_ssize_t N = w.shape[0] if transposed else w.shape[1]
    if (w.shape[1] if transposed else w.shape[0]) != K:
        raise ValueError(f"shape mismatch: x ({x.shape[0]}, {x.shape[1]}), w ({w.shape[0]}, {w.shape[1]})")
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    cdef const float[::1] b
    cdef const float* bp = NULL
    if bias is not None:
        if transposed:
            raise ValueError("bias is not supported with transposed=True")
        b = np.ascontiguousarray(bias, dtype=np.float32)
        if b.shape[0] != N:
            raise ValueError(f"bias has {b.shape[0]} entries, expected {N}")
        bp = &b[0]
    out = np.empty((M, N), dtype=np.float32)
    cdef float[:, ::1] o = out
    if M == 0 or N == 0:
        return out
    with nogil:
        if transposed:
            matmul_nt(&x[0, 0], K, &w[0, 0], &o[0, 0], N, M, K, N, n_threads)
        else:
            matmul(&x[0, 0], K, &w[0, 0], bp, &o[0, 0], N, M, K, N, act, 0, n_threads)
    return out
