# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (the callers check every shape; the kernels index raw pointers)
"""Block-quantised products (ggml's q8_0 and q4_0 layouts, _lowp.h): weights [N, K] as N rows of K / 32
blocks (34 bytes for q8_0, 18 for q4_0); qtype LP_Q8 or LP_Q4 picks the block decoder, nothing else differs.

Dequantized on the fly with float32 activations: d * q is exact in float32, so this is the product by the
dequantized weights, and the numpy reference given those weights agrees to fp32 rounding.

- Decode (M <= 16): each thread takes a contiguous range of output rows (multiples of CHUNK) and streams
  their blocks once per row of x (the few rows of a batch re-read them from L2), four rows at a time.
- Prefill: one task = PANEL output rows x MC rows of x; the panel is dequantized into a thread-local float
  buffer (PANEL x K floats, in L2) and 3 x 4 register tiles run over it.
- Determinism: every output element is one 8-lane fused multiply-add chain over k from 0, lanes summed in a
  fixed tree (lp_q8_dot_rows and lp_dot_tile agree bit for bit), then `+ bias`, then `out +` when
  accumulating, GELU in the same NR-wide pieces from column 0 of a CHUNK.  One element is never split
  between threads, so neither the thread count nor M (decode or prefill, alone or batched) changes a bit.
"""
from cython.parallel cimport prange, parallel
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free

from ._matmul cimport ACT_GELU

cdef extern from *:
    """
    #if defined(__GNUC__)
    #pragma GCC diagnostic ignored "-Wunused-function"   /* _gemm.h's kernels: only its GELU is used here */
    #endif
    """

cdef extern from "_gemm.h" nogil:
    enum:
        GEMM_NR
    void gemm_gelu_row(float* v, Py_ssize_t n)

cdef extern from "_lowp.h" nogil:
    enum:
        LP_QK
        LP_Q8_BYTES
        LP_Q8_MR
        LP_Q8_NR
        LP_Q8
        LP_Q4
    void lp_q8_dot_rows(Py_ssize_t K, const float* x, const uint8_t* w, Py_ssize_t ldw, Py_ssize_t n,
                        float* out, Py_ssize_t ldo)
    void lp_q4_dot_rows(Py_ssize_t K, const float* x, const uint8_t* w, Py_ssize_t ldw, Py_ssize_t n,
                        float* out, Py_ssize_t ldo)
    void lp_q8_row_to_f32(const uint8_t* src, float* dst, Py_ssize_t n)
    void lp_q4_row_to_f32(const uint8_t* src, float* dst, Py_ssize_t n)
    void lp_dot_tile(Py_ssize_t K, const float* x, Py_ssize_t ldx, Py_ssize_t mr, const float* wd,
                     Py_ssize_t nr, float* c, Py_ssize_t ldc)

cdef enum:
    CHUNK = 64               # output rows per epilogue piece (a multiple of every GEMM_NR: 8, 16, 32)
    PANEL = 64               # prefill: output rows dequantized at once
    MC = 96                  # prefill: rows of x per task (a multiple of LP_Q8_MR)
    DECODE_MAXM = 16         # up to this many rows: the streaming path
    MIN_PAR_FLOPS = 1 << 18


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef void _epilogue(const float* dots, const float* bias, float* out, Py_ssize_t n, int act,
                    bint accumulate) noexcept nogil:
    # out[j] = [out[j] +] (dots[j] [+ bias[j]]), then GELU in NR-wide pieces; n <= CHUNK, out at a CHUNK start
    cdef Py_ssize_t j
    cdef float v
    for j in range(n):
        v = dots[j]
        if bias != NULL:
            v = v + bias[j]
        if accumulate:
            v = out[j] + v
        out[j] = v
    if act == ACT_GELU:
        j = 0
        while j < n:
            gemm_gelu_row(out + j, _min(GEMM_NR, n - j))
            j = j + GEMM_NR


cdef inline void _dot_rows(int qtype, Py_ssize_t K, const float* x, const uint8_t* w, Py_ssize_t ldw,
                           Py_ssize_t n, float* out) noexcept nogil:
    if qtype == LP_Q4:
        lp_q4_dot_rows(K, x, w, ldw, n, out, 1)
    else:
        lp_q8_dot_rows(K, x, w, ldw, n, out, 1)


cdef inline void _row_to_f32(int qtype, const uint8_t* src, float* dst, Py_ssize_t n) noexcept nogil:
    if qtype == LP_Q4:
        lp_q4_row_to_f32(src, dst, n)
    else:
        lp_q8_row_to_f32(src, dst, n)


cdef void _decode_range(int qtype, const float* x, Py_ssize_t ldx, const uint8_t* w, Py_ssize_t ldw, const float* bias,
                        float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t n0, Py_ssize_t n1,
                        int act, bint accumulate) noexcept nogil:
    cdef float dots[CHUNK]
    cdef Py_ssize_t c0, cw, m
    c0 = n0
    while c0 < n1:
        cw = _min(CHUNK, n1 - c0)
        for m in range(M):
            _dot_rows(qtype, K, x + m * ldx, w + c0 * ldw, ldw, cw, dots)
            _epilogue(dots, bias + c0 if bias != NULL else NULL, out + m * ldo + c0, cw, act, accumulate)
        c0 = c0 + CHUNK


cdef void _prefill_task(int qtype, const float* x, Py_ssize_t ldx, const uint8_t* w, Py_ssize_t ldw, const float* bias,
                        float* out, Py_ssize_t ldo, Py_ssize_t m0, Py_ssize_t m1, Py_ssize_t K,
                        Py_ssize_t n0, Py_ssize_t n1, int act, bint accumulate,
                        float* wd) noexcept nogil:   # SCRATCH [PANEL, K]
    cdef float dots[MC * PANEL]
    cdef Py_ssize_t j, i, nw = n1 - n0, mr, nr, c0
    for j in range(nw):
        _row_to_f32(qtype, w + (n0 + j) * ldw, wd + j * K, K)
    i = m0
    while i < m1:
        mr = _min(LP_Q8_MR, m1 - i)
        j = 0
        while j < nw:
            nr = _min(LP_Q8_NR, nw - j)
            lp_dot_tile(K, x + i * ldx, ldx, mr, wd + j * K, nr, dots + (i - m0) * PANEL + j, PANEL)
            j = j + LP_Q8_NR
        i = i + LP_Q8_MR
    for i in range(m1 - m0):
        c0 = 0
        while c0 < nw:
            _epilogue(dots + i * PANEL + c0, bias + n0 + c0 if bias != NULL else NULL,
                      out + (m0 + i) * ldo + n0 + c0, _min(CHUNK, nw - c0), act, accumulate)
            c0 = c0 + CHUNK


cdef void q_linear(int qtype, const float* x, Py_ssize_t ldx, const uint8_t* w, Py_ssize_t ldw, const float* bias,
                    float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, int act,
                    bint accumulate, int n_threads) noexcept nogil:
    cdef int nt = 1 if M * K * N < MIN_PAR_FLOPS or n_threads < 1 else n_threads
    cdef Py_ssize_t n_chunks = _cdiv(N, CHUNK), n_tasks, per, t, n_pt, n_mt, pt, mt
    cdef float* wd = NULL
    if M <= 0 or N <= 0:
        return
    if M <= DECODE_MAXM:
        n_tasks = _min(nt, n_chunks)
        per = _cdiv(n_chunks, n_tasks) * CHUNK
        n_tasks = _cdiv(N, per)
        for t in prange(n_tasks, num_threads=nt, schedule="static"):
            _decode_range(qtype, x, ldx, w, ldw, bias, out, ldo, M, K, t * per, _min((t + 1) * per, N), act,
                          accumulate)
        return
    n_pt = _cdiv(N, PANEL)
    n_mt = _cdiv(M, MC)
    with parallel(num_threads=nt):
        wd = <float*>malloc(PANEL * K * sizeof(float))
        for t in prange(n_pt * n_mt, schedule="dynamic"):
            pt = t % n_pt
            mt = t // n_pt
            if wd != NULL:
                _prefill_task(qtype, x, ldx, w, ldw, bias, out, ldo, mt * MC, _min((mt + 1) * MC, M), K,
                              pt * PANEL, _min((pt + 1) * PANEL, N), act, accumulate, wd)
            else:                     # out of memory for the panel: the streaming path, same bits
                _decode_range(qtype, x + mt * MC * ldx, ldx, w, ldw, bias, out + mt * MC * ldo, ldo,
                              _min(MC, M - mt * MC), K, pt * PANEL, _min((pt + 1) * PANEL, N), act,
                              accumulate)
        free(wd)


cdef void q_rows(int qtype, const uint8_t* w, Py_ssize_t ldw, Py_ssize_t K, const Py_ssize_t* ids,
                 Py_ssize_t T, float* out, Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t t
    for t in range(T):
        _row_to_f32(qtype, w + ids[t] * ldw, out + t * ldo, K)
