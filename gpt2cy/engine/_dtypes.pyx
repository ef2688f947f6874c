# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The per-dtype kernel table (see _dtypes.pxd): which functions multiply by, and look rows up in, a weight
of each storage type.  Today: f32.  Adding a type = its kernels (a new module, say _q8.pyx) + one entry here
+ its geometry in weights.py's DTYPES."""
from libc.string cimport memcpy

from ._matmul cimport matmul, matmul_nt

cdef enum:
    F32 = 0
    N_CODES = 1


# ---------------------------------------------------------------------------------------------------- f32
# data is float32 [rows, cols], contiguous (ld = 4 * cols: the engine passes C-contiguous arrays)

cdef void _f32_linear(const float* x, Py_ssize_t ldx, const WeightDesc* w, const float* bias, float* out,
                      Py_ssize_t ldo, Py_ssize_t M, int act, bint accumulate, int n_threads) noexcept nogil:
    matmul(x, ldx, <const float*>w.data, bias, out, ldo, M, w.rows, w.cols, act, accumulate, n_threads)


cdef void _f32_logits_rows(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                           Py_ssize_t M, int n_threads) noexcept nogil:
    # one matmul_nt call per row: M == 1 is the row-dot path, the bits of a single sequence's last row
    cdef Py_ssize_t m
    for m in range(M):
        matmul_nt(x + m * ldx, ldx, <const float*>w.data, out + m * ldo, ldo, 1, w.cols, w.rows, n_threads)


cdef void _f32_logits_dense(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                            Py_ssize_t M, int n_threads) noexcept nogil:
    matmul_nt(x, ldx, <const float*>w.data, out, ldo, M, w.cols, w.rows, n_threads)


cdef void _f32_embed_rows(const WeightDesc* w, const Py_ssize_t* ids, Py_ssize_t T, float* out,
                          Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t t
    cdef const char* base = <const char*>w.data
    for t in range(T):
        memcpy(out + t * ldo, base + ids[t] * w.ld, w.cols * sizeof(float))


# ---------------------------------------------------------------------------------------------------- table

cdef DTypeKernels _TABLE[N_CODES]
_TABLE[F32].name = "f32"
_TABLE[F32].linear = _f32_linear
_TABLE[F32].logits_rows = _f32_logits_rows
_TABLE[F32].logits_dense = _f32_logits_dense
_TABLE[F32].embed_rows = _f32_embed_rows


cdef const DTypeKernels* dtype_kernels(int code) noexcept nogil:
    if code < 0 or code >= N_CODES:
        return NULL
    return &_TABLE[code]


def supported():
    """{dtype name: code} of every dtype the engine has kernels for."""
    return {_TABLE[i].name.decode(): i for i in range(N_CODES)}
