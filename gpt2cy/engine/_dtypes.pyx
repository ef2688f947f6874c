# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The per-dtype kernel table (see _dtypes.pxd): which functions multiply by, and look rows up in, a weight
of each storage type: f32, bf16 (uint16 bit patterns; _matmul's block matmuls multiply them by bf16-rounded
inputs in pairs, its lm_head widens them), q8_0 and q4_0 (ggml's 34- and 18-byte blocks, matmul weights stored [out, in]; _qblocks.pyx).
Adding a type = its
kernels + one entry here + its geometry in weights.py's DTYPES."""
from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memcpy
import numpy as np

from ._matmul cimport (matmul, matmul_nt, matmul_typed, matmul_nt_typed, matmul_nt_rows_typed, W_F32, W_BF16,
                       ACT_NONE, ACT_GELU)
from ._qblocks cimport q_linear, q_rows, Q_Q8, Q_Q4

cdef extern from "_lowp.h" nogil:
    void lp_bf16_row_to_f32(const uint16_t* src, float* dst, Py_ssize_t n)

cdef enum:
    F32 = 0
    BF16 = 1
    Q8_0 = 2
    Q4_0 = 3
    N_CODES = 4


# ---------------------------------------------------------------------------------------------------- f32
# data is float32 [rows, cols], contiguous (ld = 4 * cols: the engine passes C-contiguous arrays)

cdef void _f32_linear(const float* x, Py_ssize_t ldx, const WeightDesc* w, const float* bias, float* out,
                      Py_ssize_t ldo, Py_ssize_t M, int act, bint accumulate, int n_threads) noexcept nogil:
    matmul(x, ldx, <const float*>w.data, bias, out, ldo, M, w.rows, w.cols, act, accumulate, n_threads)


cdef void _f32_logits_rows(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                           Py_ssize_t M, int n_threads) noexcept nogil:
    # every row with the row-dot path's bits (those of a single sequence's last row), wte read once
    matmul_nt_rows_typed(W_F32, x, ldx, w.data, out, ldo, M, w.cols, w.rows, n_threads)


cdef void _f32_logits_dense(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                            Py_ssize_t M, int n_threads) noexcept nogil:
    matmul_nt(x, ldx, <const float*>w.data, out, ldo, M, w.cols, w.rows, n_threads)


cdef void _f32_embed_rows(const WeightDesc* w, const Py_ssize_t* ids, Py_ssize_t T, float* out,
                          Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t t
    cdef const char* base = <const char*>w.data
    for t in range(T):
        memcpy(out + t * ldo, base + ids[t] * w.ld, w.cols * sizeof(float))


# ---------------------------------------------------------------------------------------------------- bf16
# data is uint16 [rows, cols] bf16 bit patterns, contiguous; matmul weights [in, out] like f32

cdef void _bf16_linear(const float* x, Py_ssize_t ldx, const WeightDesc* w, const float* bias, float* out,
                       Py_ssize_t ldo, Py_ssize_t M, int act, bint accumulate, int n_threads) noexcept nogil:
    matmul_typed(W_BF16, x, ldx, w.data, bias, out, ldo, M, w.rows, w.cols, act, accumulate, n_threads)


cdef void _bf16_logits_rows(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                            Py_ssize_t M, int n_threads) noexcept nogil:
    matmul_nt_rows_typed(W_BF16, x, ldx, w.data, out, ldo, M, w.cols, w.rows, n_threads)


cdef void _bf16_logits_dense(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                             Py_ssize_t M, int n_threads) noexcept nogil:
    matmul_nt_typed(W_BF16, x, ldx, w.data, out, ldo, M, w.cols, w.rows, n_threads)


cdef void _bf16_embed_rows(const WeightDesc* w, const Py_ssize_t* ids, Py_ssize_t T, float* out,
                           Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t t
    cdef const char* base = <const char*>w.data
    for t in range(T):
        lp_bf16_row_to_f32(<const uint16_t*>(base + ids[t] * w.ld), out + t * ldo, w.cols)


# ---------------------------------------------------------------------------------------------------- q8_0, q4_0
# data is uint8 [rows, cols / 32 * block bytes]: ggml blocks along cols; matmul weights [out, in] ("out_in")

cdef inline int _qtype(const WeightDesc* w) noexcept nogil:
    return Q_Q4 if w.dtype == Q4_0 else Q_Q8


cdef void _q_linear(const float* x, Py_ssize_t ldx, const WeightDesc* w, const float* bias, float* out,
                    Py_ssize_t ldo, Py_ssize_t M, int act, bint accumulate, int n_threads) noexcept nogil:
    q_linear(_qtype(w), x, ldx, <const uint8_t*>w.data, w.ld, bias, out, ldo, M, w.cols, w.rows, act,
             accumulate, n_threads)


cdef void _q_logits_rows(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                         Py_ssize_t M, int n_threads) noexcept nogil:
    # q_linear's bits do not depend on M (_qblocks.pyx), so all rows go in one call: wte is streamed once
    q_linear(_qtype(w), x, ldx, <const uint8_t*>w.data, w.ld, NULL, out, ldo, M, w.cols, w.rows, ACT_NONE,
             False, n_threads)


cdef void _q_logits_dense(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                          Py_ssize_t M, int n_threads) noexcept nogil:
    q_linear(_qtype(w), x, ldx, <const uint8_t*>w.data, w.ld, NULL, out, ldo, M, w.cols, w.rows, ACT_NONE,
             False, n_threads)


cdef void _q_embed_rows(const WeightDesc* w, const Py_ssize_t* ids, Py_ssize_t T, float* out,
                        Py_ssize_t ldo) noexcept nogil:
    q_rows(_qtype(w), <const uint8_t*>w.data, w.ld, w.cols, ids, T, out, ldo)


# ---------------------------------------------------------------------------------------------------- table

cdef DTypeKernels _TABLE[N_CODES]
_TABLE[F32].name = "f32"
_TABLE[F32].matmul_layout = LAYOUT_IN_OUT
_TABLE[F32].linear = _f32_linear
_TABLE[F32].logits_rows = _f32_logits_rows
_TABLE[F32].logits_dense = _f32_logits_dense
_TABLE[F32].embed_rows = _f32_embed_rows
_TABLE[BF16].name = "bf16"
_TABLE[BF16].matmul_layout = LAYOUT_IN_OUT
_TABLE[BF16].linear = _bf16_linear
_TABLE[BF16].logits_rows = _bf16_logits_rows
_TABLE[BF16].logits_dense = _bf16_logits_dense
_TABLE[BF16].embed_rows = _bf16_embed_rows
_TABLE[Q8_0].name = "q8_0"
_TABLE[Q8_0].matmul_layout = LAYOUT_OUT_IN
_TABLE[Q8_0].linear = _q_linear
_TABLE[Q8_0].logits_rows = _q_logits_rows
_TABLE[Q8_0].logits_dense = _q_logits_dense
_TABLE[Q8_0].embed_rows = _q_embed_rows
_TABLE[Q4_0].name = "q4_0"
_TABLE[Q4_0].matmul_layout = LAYOUT_OUT_IN
_TABLE[Q4_0].linear = _q_linear
_TABLE[Q4_0].logits_rows = _q_logits_rows
_TABLE[Q4_0].logits_dense = _q_logits_dense
_TABLE[Q4_0].embed_rows = _q_embed_rows


cdef const DTypeKernels* dtype_kernels(int code) noexcept nogil:
    if code < 0 or code >= N_CODES:
        return NULL
    return &_TABLE[code]


def supported():
    """{dtype name: code} of every dtype the engine has kernels for."""
    return {_TABLE[i].name.decode(): i for i in range(N_CODES)}


def matmul_layouts():
    """{dtype name: the layout its linear kernel reads ("in_out" or "out_in")}."""
    return {_TABLE[i].name.decode(): ("out_in" if _TABLE[i].matmul_layout == LAYOUT_OUT_IN else "in_out")
            for i in range(N_CODES)}


# ---------------------------------------------------------------------------------------------------- tests
# The table's kernels called on one weights.WeightTensor (tests and benchmarks; the engine calls them directly)

cdef int _desc(wt, WeightDesc* d) except -1:
    from gpt2cy.engine.weights import DTYPES, OUT_IN   # absolute: this source is also built as _isa_*.*
    dt = DTYPES[wt.dtype]
    d.dtype = dt.code
    d.layout = LAYOUT_OUT_IN if wt.layout == OUT_IN else LAYOUT_IN_OUT
    d.data = <const void*><size_t>wt.data.ctypes.data
    d.scales = NULL
    d.rows = wt.shape[0]
    d.cols = wt.shape[1]
    d.ld = dt.row_bytes(wt.shape[1])
    return 0


def _f32_matrix(a, name):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D")
    return a


def linear_py(wt, x, bias=None, int act=0, out=None, bint accumulate=False, int n_threads=1):
    """act(x @ W + bias) (or out += x @ W + bias) through wt's dtype's linear kernel; wt a matmul weight."""
    cdef WeightDesc d
    _desc(wt, &d)
    if _TABLE[d.dtype].matmul_layout != d.layout:
        raise ValueError(f"{wt.dtype} matmul weights must have layout {matmul_layouts()[wt.dtype]!r}")
    cdef Py_ssize_t K = d.rows if d.layout == LAYOUT_IN_OUT else d.cols
    cdef Py_ssize_t N = d.cols if d.layout == LAYOUT_IN_OUT else d.rows
    x = _f32_matrix(x, "x")
    if x.shape[1] != K:
        raise ValueError(f"x has {x.shape[1]} columns, expected {K}")
    if accumulate and (out is None or act != ACT_NONE):
        raise ValueError("accumulate needs out and no act")
    if out is None:
        out = np.empty((x.shape[0], N), np.float32)
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != (x.shape[0], N):
        raise ValueError("out must be C-contiguous float32 [M, N]")
    cdef const float[::1] bv
    cdef const float* bp = NULL
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        if bias.shape != (N,):
            raise ValueError(f"bias must have {N} entries")
        bv = bias
        bp = &bv[0]
    cdef const float[:, ::1] xv = x
    cdef float[:, ::1] ov = out
    cdef Py_ssize_t M = x.shape[0]
    if M:
        with nogil:
            _TABLE[d.dtype].linear(&xv[0, 0], K, &d, bp, &ov[0, 0], N, M, act, accumulate, n_threads)
    return out


def logits_py(wt, x, bint dense=False, int n_threads=1):
    """x @ W.T for wt "out_in" [V, C] (the tied lm_head) through logits_rows, or logits_dense when dense."""
    cdef WeightDesc d
    _desc(wt, &d)
    x = _f32_matrix(x, "x")
    if x.shape[1] != d.cols:
        raise ValueError(f"x has {x.shape[1]} columns, expected {d.cols}")
    out = np.empty((x.shape[0], d.rows), np.float32)
    cdef const float[:, ::1] xv = x
    cdef float[:, ::1] ov = out
    cdef Py_ssize_t M = x.shape[0]
    if M:
        with nogil:
            if dense:
                _TABLE[d.dtype].logits_dense(&xv[0, 0], d.cols, &d, &ov[0, 0], d.rows, M, n_threads)
            else:
                _TABLE[d.dtype].logits_rows(&xv[0, 0], d.cols, &d, &ov[0, 0], d.rows, M, n_threads)
    return out


def embed_py(wt, ids):
    """W[ids] as float32 through embed_rows (wt "out_in" [V, C])."""
    cdef WeightDesc d
    _desc(wt, &d)
    a = np.ascontiguousarray(ids, dtype=np.intp)
    if a.ndim != 1 or (a.size and (a.min() < 0 or a.max() >= d.rows)):
        raise ValueError("ids must be 1-D rows of W")
    out = np.empty((a.shape[0], d.cols), np.float32)
    cdef const Py_ssize_t[::1] iv = a
    cdef float[:, ::1] ov = out
    if a.shape[0]:
        _TABLE[d.dtype].embed_rows(&d, &iv[0], a.shape[0], &ov[0, 0], d.cols)
    return out
