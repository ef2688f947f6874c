# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Conversions at load, compiled and parallel over rows (or column tiles): float32 -> bf16 and -> q8_0, and
back to float32 (tests, the numpy reference).

    to_bf16(a)        float32 [R, C] -> uint16 [R, C]: round to nearest even, NaN stays NaN
    to_q8_0(a)        float32 [R, C] -> uint8 [R, C / 32 * 34]: blocks along C (wte, and gguf's own rows);
                      byte for byte gguf.quants.quantize(a, GGMLQuantizationType.Q8_0)
    to_q8_0_t(a)      float32 [K, N] (a Conv1D weight [in, out]) -> the q8_0 of a.T: uint8 [N, K / 32 * 34]
    to_q4_0(a), to_q4_0_t(a)   the same for q4_0 (18-byte blocks; gguf's bytes)
    bf16_to_f32(a), q8_0_to_f32(a, cols), q4_0_to_f32(a, cols)   the exact float32 values the kernels use
"""
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint16_t
import numpy as np

from gpt2cy.engine import aligned   # converted weights start on a cache line

cdef extern from "_lowp.h" nogil:
    enum:
        LP_QK
        LP_Q8_BYTES
        LP_Q4_BYTES
    void lp_row_to_bf16(const float* src, uint16_t* dst, Py_ssize_t n)
    void lp_row_to_q8(const float* src, uint8_t* dst, Py_ssize_t n)
    void lp_row_to_q4(const float* src, uint8_t* dst, Py_ssize_t n)
    void lp_q8_block(const float* x, uint8_t* dst)
    void lp_q4_block(const float* x, uint8_t* dst)
    void lp_q8_row_to_f32(const uint8_t* src, float* dst, Py_ssize_t n)
    void lp_q4_row_to_f32(const uint8_t* src, float* dst, Py_ssize_t n)
    void lp_bf16_row_to_f32(const uint16_t* src, float* dst, Py_ssize_t n)

cdef enum:
    ROWS_PER_TASK = 16


def _matrix(a, dtype, name="a"):
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype != dtype:
        raise ValueError(f"{name} must be a 2-D {np.dtype(dtype)} array")
    return np.ascontiguousarray(a)


def _check_threads(int n_threads):
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")


def to_bf16(a, int n_threads=1):
    """float32 [R, C] -> bf16 bit patterns uint16 [R, C] (round to nearest, ties to even)."""
    _check_threads(n_threads)
    a = _matrix(a, np.float32)
    out = aligned.empty(a.shape, np.uint16)
    cdef Py_ssize_t R = a.shape[0], C = a.shape[1], t, r, n_tasks
    if R == 0 or C == 0:
        return out
    cdef const float[:, ::1] av = a
    cdef uint16_t[:, ::1] ov = out
    n_tasks = (R + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks, nogil=True, num_threads=n_threads, schedule="static"):
        for r in range(t * ROWS_PER_TASK, min((t + 1) * ROWS_PER_TASK, R)):
            lp_row_to_bf16(&av[r, 0], &ov[r, 0], C)
    return out


def to_q8_0(a, int n_threads=1):
    """float32 [R, C] (C a multiple of 32) -> q8_0 uint8 [R, C / 32 * 34], blocks along each row."""
    return _to_q(a, 0, n_threads)


def to_q4_0(a, int n_threads=1):
    """float32 [R, C] (C a multiple of 32) -> q4_0 uint8 [R, C / 32 * 18], blocks along each row."""
    return _to_q(a, 1, n_threads)


def _to_q(a, int q4, int n_threads):
    _check_threads(n_threads)
    a = _matrix(a, np.float32)
    cdef Py_ssize_t R = a.shape[0], C = a.shape[1], t, r, n_tasks
    cdef Py_ssize_t bb = LP_Q4_BYTES if q4 else LP_Q8_BYTES
    if C % LP_QK:
        raise ValueError(f"{'q4_0' if q4 else 'q8_0'} needs rows of a multiple of {LP_QK} values, got {C}")
    out = aligned.empty((R, C // LP_QK * bb), np.uint8)
    if R == 0 or C == 0:
        return out
    cdef const float[:, ::1] av = a
    cdef uint8_t[:, ::1] ov = out
    n_tasks = (R + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in prange(n_tasks, nogil=True, num_threads=n_threads, schedule="static"):
        for r in range(t * ROWS_PER_TASK, min((t + 1) * ROWS_PER_TASK, R)):
            if q4:
                lp_row_to_q4(&av[r, 0], &ov[r, 0], C)
            else:
                lp_row_to_q8(&av[r, 0], &ov[r, 0], C)
    return out


cdef void _q_t_tile(const float* a, Py_ssize_t K, Py_ssize_t N, Py_ssize_t n0, uint8_t* out,
                    Py_ssize_t ldo, int q4) noexcept nogil:
    # output rows n0 .. n0+32 (columns of a): each 32 x 32 tile of a transposed in L1, then quantized
    cdef float tile[LP_QK * LP_QK]
    cdef Py_ssize_t kb, k, j, nw = min(LP_QK, N - n0)
    for kb in range(K // LP_QK):
        for k in range(LP_QK):
            for j in range(nw):
                tile[j * LP_QK + k] = a[(kb * LP_QK + k) * N + n0 + j]
        for j in range(nw):
            if q4:
                lp_q4_block(&tile[j * LP_QK], out + (n0 + j) * ldo + kb * LP_Q4_BYTES)
            else:
                lp_q8_block(&tile[j * LP_QK], out + (n0 + j) * ldo + kb * LP_Q8_BYTES)


def to_q8_0_t(a, int n_threads=1):
    """float32 [K, N] (K a multiple of 32) -> the q8_0 of a.T, uint8 [N, K / 32 * 34] (blocks along K)."""
    return _to_q_t(a, 0, n_threads)


def to_q4_0_t(a, int n_threads=1):
    """float32 [K, N] (K a multiple of 32) -> the q4_0 of a.T, uint8 [N, K / 32 * 18] (blocks along K)."""
    return _to_q_t(a, 1, n_threads)


def _to_q_t(a, int q4, int n_threads):
    _check_threads(n_threads)
    a = _matrix(a, np.float32)
    cdef Py_ssize_t K = a.shape[0], N = a.shape[1], t, n_tasks
    if K % LP_QK:
        raise ValueError(f"{'q4_0' if q4 else 'q8_0'} needs a multiple of {LP_QK} inputs, got {K}")
    out = aligned.empty((N, K // LP_QK * (LP_Q4_BYTES if q4 else LP_Q8_BYTES)), np.uint8)
    if K == 0 or N == 0:
        return out
    cdef const float[:, ::1] av = a
    cdef uint8_t[:, ::1] ov = out
    cdef Py_ssize_t ldo = out.shape[1]
    n_tasks = (N + LP_QK - 1) // LP_QK
    for t in prange(n_tasks, nogil=True, num_threads=n_threads, schedule="static"):
        _q_t_tile(&av[0, 0], K, N, t * LP_QK, &ov[0, 0], ldo, q4)
    return out


def bf16_to_f32(a):
    """uint16 bf16 bit patterns [R, C] -> float32 [R, C] (exact)."""
    a = _matrix(a, np.uint16)
    out = np.empty(a.shape, np.float32)
    cdef Py_ssize_t R = a.shape[0], C = a.shape[1], r
    if R == 0 or C == 0:
        return out
    cdef const uint16_t[:, ::1] av = a
    cdef float[:, ::1] ov = out
    with nogil:
        for r in range(R):
            lp_bf16_row_to_f32(&av[r, 0], &ov[r, 0], C)
    return out


def q8_0_to_f32(a, Py_ssize_t cols):
    """q8_0 uint8 [R, cols / 32 * 34] -> float32 [R, cols] (d * q, exact)."""
    return _q_to_f32(a, cols, 0)


def q4_0_to_f32(a, Py_ssize_t cols):
    """q4_0 uint8 [R, cols / 32 * 18] -> float32 [R, cols] (d * (q - 8), exact)."""
    return _q_to_f32(a, cols, 1)


def _q_to_f32(a, Py_ssize_t cols, int q4):
    a = _matrix(a, np.uint8)
    if cols % LP_QK or a.shape[1] != cols // LP_QK * (LP_Q4_BYTES if q4 else LP_Q8_BYTES):
        raise ValueError(f"{a.shape[1]} bytes per row do not hold {cols} {'q4_0' if q4 else 'q8_0'} values")
    out = np.empty((a.shape[0], cols), np.float32)
    cdef Py_ssize_t R = a.shape[0], r
    if R == 0 or cols == 0:
        return out
    cdef const uint8_t[:, ::1] av = a
    cdef float[:, ::1] ov = out
    with nogil:
        for r in range(R):
            if q4:
                lp_q4_row_to_f32(&av[r, 0], &ov[r, 0], cols)
            else:
                lp_q8_row_to_f32(&av[r, 0], &ov[r, 0], cols)
    return out
