# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (the callers check every shape; the kernels index raw pointers)
"""Block-quantised products (ggml's q8_0 and q4_0 layouts, _lowp.h): weights [N, K] as N rows of K / 32
blocks (34 bytes for q8_0, 18 for q4_0); qtype LP_Q8 or LP_Q4 picks the block decoder, nothing else differs.
The activations are quantized to 8 bits per block of 32 first (_q8act.h), once per call for all M rows, and
every product is an integer dot per block scaled by both blocks' scales: one instruction per 32 products
where the CPU has VNNI, instead of widening each weight to a float (what kept the earlier kernels at a
third of the memory bound).  The numpy reference with the same activation quantization agrees to fp32
rounding (tests/test_dtypes_lowp.py); the quantization itself is the price, as in llama.cpp.
- Decode (M <= 16): each thread takes a contiguous range of output rows (multiples of CHUNK) and streams
  their blocks once: each group of QA_W weight rows is repacked (one dword transpose per block) into an
  L1/L2-sized buffer, and every row of x runs against it.  One row of x on AVX2 without VNNI (a decode
  step): the blocks are read where they lie instead (_q8act.h's qa_direct_rows, qa_direct_rows_q4), the
  same integers.
- Prefill: one task = PANEL output rows x MC rows of x (scheduled dynamically), the same groups and tiles.
- Determinism: every output element is _q8act.h's one computation (an exact integer dot per block, one
  fused multiply-add chain over the blocks), then `+ bias`, then `out +` when
  accumulating, GELU in the same NR-wide pieces from column 0 of a CHUNK.  So neither the thread count nor
  M (decode or prefill, alone or batched) changes a bit.
"""
from cython.parallel cimport prange, parallel
from libc.stdint cimport uint8_t, int8_t, int32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.math cimport NAN

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
        LP_Q8
        LP_Q4
    void lp_q8_row_to_f32(const uint8_t* src, float* dst, Py_ssize_t n)
    void lp_q4_row_to_f32(const uint8_t* src, float* dst, Py_ssize_t n)

cdef extern from "_q8act.h" nogil:
    enum:
        QA_MR
        QA_W
        QA_BLK_BYTES
        QA_KB
        QA_KB_AMX
    const char* QA_ISA
    int32_t qa_offset(int qtype)
    void qa_quantize_row(const float* x, Py_ssize_t K, int8_t* qx, float* dx, int32_t* cs, int32_t offset)
    void qa_pack_group(int qtype, Py_ssize_t b0, Py_ssize_t b1, const uint8_t* w, Py_ssize_t ldw, int nvalid,
                       int sgn, uint8_t* dst)
    void qa_tile_rows(int qtype, Py_ssize_t K, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t mr, const int8_t* qx,
                      const float* dx, const int32_t* cs, const uint8_t* pk, const uint8_t* w, Py_ssize_t ldw,
                      int nvalid, float* out, Py_ssize_t ldo)
    enum:
        QA_DIRECT
        QA_DIRECT16
    void qa_direct16(int qtype, Py_ssize_t b0, Py_ssize_t b1, const int8_t* qx, const float* dx,
                     const int32_t* cs, const uint8_t* w, Py_ssize_t ldw, float* out)
    void qa_direct_rows(Py_ssize_t K, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t mr, const int8_t* qx,
                        const float* dx, const int32_t* cs, const uint8_t* w, Py_ssize_t ldw, int nvalid,
                        float* out, Py_ssize_t ldo)
    void qa_direct_rows_q4(Py_ssize_t K, Py_ssize_t b0, Py_ssize_t b1, const int8_t* qx, const float* dx,
                           const int32_t* cs, const uint8_t* w, Py_ssize_t ldw, int nvalid, float* out)
    enum:
        QA_AMX_MR
    int qa_amx_available()
    int qa_amx_set(int want)
    int qa_amx_use(Py_ssize_t rows)
    void QA_AMX_BEGIN()
    void QA_AMX_END()
    enum:
        QA_AMX_TILE_BYTES
    void qa_amx_layout(const int8_t* qx, Py_ssize_t M, Py_ssize_t K, int8_t* qt)
    void qa_amx_tile_rows(Py_ssize_t K, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t mr, const int8_t* qt,
                          const float* dx, const uint8_t* pk, float* out, Py_ssize_t ldo)
    int qa_amx_on
    long qa_amx_calls

cdef enum:
    CHUNK = 64               # output rows per epilogue piece (a multiple of every GEMM_NR: 8, 16, 32)
    PANEL = 64               # prefill: output rows per task
    MC = 32                  # prefill: rows of x per task
    MC_AMX = 64              # the same through AMX tiles (a packed slice then serves 4 tiles of rows)
    DECODE_MAXM = 16         # up to this many rows: the streaming path
    MAX_ROWS = 64            # rows of x one _rows_range call takes (MC, MC_AMX, DECODE_MAXM)
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


cdef inline void _row_to_f32(int qtype, const uint8_t* src, float* dst, Py_ssize_t n) noexcept nogil:
    if qtype == LP_Q4:
        lp_q4_row_to_f32(src, dst, n)
    else:
        lp_q8_row_to_f32(src, dst, n)


cdef void _rows_range(int qtype, const int8_t* qx, const int8_t* qt, const float* dx, const int32_t* cs,
                      const uint8_t* w,
                      Py_ssize_t ldw, const float* bias, float* out, Py_ssize_t ldo, Py_ssize_t m0,
                      Py_ssize_t m1, Py_ssize_t K, Py_ssize_t n0, Py_ssize_t n1, int act,
                      bint accumulate) noexcept nogil:
    # out[m0:m1, n0:n1] (m1 - m0 <= MAX_ROWS) from the quantized rows qx [M, K] / dx [M, K / 32] / cs [M, K / 32];
    # n0 at a CHUNK start.  Each QA_W weight rows are repacked, QA_KB blocks at a time (qa_pack_group, into
    # this call's L1-sized buffer), and every row of x runs against the slice, QA_MR rows at a time (or
    # QA_AMX_MR through AMX tiles, from qt, qx in qa_amx_layout; m0 a multiple of QA_AMX_MR; the same bits).
    cdef float dots[MAX_ROWS * CHUNK]
    cdef Py_ssize_t c0, cw, g, m, mr, i, j, b0, b1, nb = K // LP_QK
    cdef bint amx = qt != NULL and qa_amx_use(m1 - m0)
    # a one-row product without VNNI reads the blocks where they lie (measured on Zen 3 against the repacked
    # tile: q8_0 1.3x, q4_0 1.15x for one row; q8_0 0.9x at 2-3 rows and 0.5x from 4)
    cdef bint direct = QA_DIRECT and m1 - m0 == 1
    cdef Py_ssize_t kb = (QA_KB_AMX if amx else QA_KB) if QA_KB > 0 else nb
    cdef int nv
    cdef Py_ssize_t tile_m = QA_AMX_MR if amx else QA_MR
    cdef void* raw = malloc(kb * QA_BLK_BYTES + 64)
    cdef uint8_t* pk = <uint8_t*>((<size_t>raw + 63) & ~(<size_t>63))
    if raw == NULL:                              # NaN, which the caller reports
        for i in range(m0, m1):
            for j in range(n0, n1):
                out[i * ldo + j] = NAN
        return
    if amx:
        QA_AMX_BEGIN()                           # tile state is per thread
    c0 = n0
    while c0 < n1:
        cw = _min(CHUNK, n1 - c0)
        g = 0
        while g < cw:
            nv = <int>_min(QA_W, cw - g)
            b0 = 0
            while b0 < nb:
                b1 = _min(b0 + kb, nb)
                if QA_DIRECT16 and m1 - m0 == 1 and nv == QA_W:   # one row, 16 whole rows of w: no repack
                    qa_direct16(qtype, b0, b1, qx + m0 * K, dx + m0 * nb, cs + m0 * nb, w + (c0 + g) * ldw, ldw,
                                dots + g)
                    b0 = b1
                    continue
                if direct and qtype == LP_Q4:        # one row, no repack: the same integers
                    qa_direct_rows_q4(K, b0, b1, qx + m0 * K, dx + m0 * nb, cs + m0 * nb, w + (c0 + g) * ldw,
                                      ldw, nv, dots + g)
                    b0 = b1
                    continue
                if direct:
                    qa_direct_rows(K, b0, b1, m1 - m0, qx + m0 * K, dx + m0 * nb, cs + m0 * nb,
                                   w + (c0 + g) * ldw, ldw, nv, dots + g, CHUNK)
                    b0 = b1
                    continue
                qa_pack_group(qtype, b0, b1, w + (c0 + g) * ldw, ldw, nv, amx, pk)
                m = m0
                while m < m1:
                    mr = _min(tile_m, m1 - m)
                    if amx:
                        qa_amx_tile_rows(K, b0, b1, mr, qt + (m // QA_AMX_MR) * nb * QA_AMX_TILE_BYTES,
                                         dx + m * nb, pk, dots + (m - m0) * CHUNK + g, CHUNK)
                    else:
                        qa_tile_rows(qtype, K, b0, b1, mr, qx + m * K, dx + m * nb, cs + m * nb, pk,
                                     w + (c0 + g) * ldw, ldw, nv, dots + (m - m0) * CHUNK + g, CHUNK)
                    m = m + mr
                b0 = b1
            g = g + QA_W
        for i in range(m1 - m0):
            _epilogue(dots + i * CHUNK, bias + c0 if bias != NULL else NULL, out + (m0 + i) * ldo + c0, cw,
                      act, accumulate)
        c0 = c0 + CHUNK
    if amx:
        QA_AMX_END()
    free(raw)


cdef void q_linear(int qtype, const float* x, Py_ssize_t ldx, const uint8_t* w, Py_ssize_t ldw, const float* bias,
                    float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, int act,
                    bint accumulate, int n_threads) noexcept nogil:
    cdef int nt = 1 if M * K * N < MIN_PAR_FLOPS or n_threads < 1 else n_threads
    cdef Py_ssize_t n_chunks = _cdiv(N, CHUNK), n_tasks, per, t, n_pt, n_mt, pt, mt, m, j, nb = K // LP_QK, mc
    cdef int8_t* qx
    cdef int8_t* qt = NULL
    cdef float* dx
    cdef int32_t* cs
    cdef int32_t off = qa_offset(qtype)
    cdef Py_ssize_t m_alloc = _cdiv(M, QA_AMX_MR) * QA_AMX_MR   # AMX tiles read whole tiles of rows
    if M <= 0 or N <= 0:
        return
    qx = <int8_t*>malloc(m_alloc * K * sizeof(int8_t) + 1)
    dx = <float*>malloc(M * nb * sizeof(float) + 1)
    cs = <int32_t*>malloc(M * nb * sizeof(int32_t) + 1)
    if qx == NULL or dx == NULL or cs == NULL:   # no memory for the quantized rows: NaN, which the caller reports
        free(qx)
        free(dx)
        free(cs)
        for m in range(M):
            for j in range(N):
                out[m * ldo + j] = NAN
        return
    memset(qx + M * K, 0, (m_alloc - M) * K)
    if M <= DECODE_MAXM:
        for m in range(M):
            qa_quantize_row(x + m * ldx, K, qx + m * K, dx + m * nb, cs + m * nb, off)
    else:
        with parallel(num_threads=nt):
            for m in prange(M, schedule="static"):
                qa_quantize_row(x + m * ldx, K, qx + m * K, dx + m * nb, cs + m * nb, off)
    if qa_amx_use(M):
        qt = <int8_t*>malloc(m_alloc * K + 1)    # without it (no memory), the VNNI tiles: the same bits
        if qt != NULL:
            qa_amx_layout(qx, m_alloc, K, qt)
    if M <= DECODE_MAXM:
        n_tasks = _min(nt, n_chunks)
        per = _cdiv(n_chunks, n_tasks) * CHUNK
        n_tasks = _cdiv(N, per)
        for t in prange(n_tasks, num_threads=nt, schedule="static"):
            _rows_range(qtype, qx, qt, dx, cs, w, ldw, bias, out, ldo, 0, M, K, t * per,
                        _min((t + 1) * per, N), act, accumulate)
    else:
        n_pt = _cdiv(N, PANEL)
        mc = MC_AMX if qt != NULL else MC
        n_mt = _cdiv(M, mc)
        for t in prange(n_pt * n_mt, num_threads=nt, schedule="dynamic"):
            pt = t % n_pt
            mt = t // n_pt
            _rows_range(qtype, qx, qt, dx, cs, w, ldw, bias, out, ldo, mt * mc, _min((mt + 1) * mc, M), K,
                        pt * PANEL, _min((pt + 1) * PANEL, N), act, accumulate)
    free(qt)
    free(qx)
    free(dx)
    free(cs)


cdef extern from "_madd.h":
    enum:
        GPT2CY_FUSED


def fused_madd():
    """Whether this build's multiply-adds round once (FMA), as the products' chains do (_madd.h)."""
    return bool(GPT2CY_FUSED)


def amx_available():
    """Whether this build holds the AMX-INT8 tile kernel and this CPU and OS let it run."""
    return QA_AMX_MR > 1 and bool(qa_amx_available())


def set_amx(bint want):
    """Use AMX-INT8 tiles for the products of prefills (when available; the bits do not change), or not.
    Returns whether they are used.  gpt2cy.engine.isa calls it at import (GPT2CY_AMX)."""
    return QA_AMX_MR > 1 and bool(qa_amx_set(want))


def amx():
    """Whether the q8_0 / q4_0 products of prefills (17 rows or more) run on AMX-INT8 tiles."""
    return QA_AMX_MR > 1 and bool(qa_amx_on)


def amx_calls():
    """How many kernel calls (one per thread's task) have run on AMX tiles in this process."""
    return qa_amx_calls


def kernel_isa():
    """Which integer dot the q8_0 / q4_0 kernels were built with: "vnni", "avx2" or "scalar"."""
    return QA_ISA.decode()


def quantize_activations(x):
    """float32 [M, K] (K a multiple of 32) -> (qx int8 [M, K], dx float32 [M, K / 32]): the activation
    quantization of q_linear (tests compare it with a numpy version of the rule)."""
    import numpy as np
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] % LP_QK:
        raise ValueError(f"x must be 2-D with a multiple of {LP_QK} columns")
    q = np.empty(a.shape, np.int8)
    d = np.empty((a.shape[0], a.shape[1] // LP_QK), np.float32)
    cs = np.empty((a.shape[0], a.shape[1] // LP_QK), np.int32)
    cdef const float[:, ::1] av = a
    cdef int8_t[:, ::1] qv = q
    cdef float[:, ::1] dv = d
    cdef int32_t[:, ::1] cv = cs
    cdef Py_ssize_t m
    for m in range(a.shape[0]):
        if a.shape[1]:
            qa_quantize_row(&av[m, 0], a.shape[1], &qv[m, 0], &dv[m, 0], &cv[m, 0], 0)
    return q, d


cdef void q_rows(int qtype, const uint8_t* w, Py_ssize_t ldw, Py_ssize_t K, const Py_ssize_t* ids,
                 Py_ssize_t T, float* out, Py_ssize_t ldo) noexcept nogil:
    cdef Py_ssize_t t
    for t in range(T):
        _row_to_f32(qtype, w + ids[t] * ldw, out + t * ldo, K)
