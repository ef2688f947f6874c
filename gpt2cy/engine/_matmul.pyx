# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (the Python wrapper validates every shape and stride first; the kernels index raw pointers)
"""Matrix products of the forward pass: cache-blocked tiles for prefill, streaming matrix-vector for decode.

Notes on speed (AMD Zen 5 figures in bench/bench_matmul.py; kernels in _gemm.h):
- Prefill (M > 16): each task owns a block of output columns; per K block of KC = 192 it packs its part of
  w into NR-wide panels (at most 192 x 512 floats: L2) and runs the register tile (8x32 on AVX-512, 16 zmm
  accumulators) over MR rows of x read in place (L1).  About 4 tasks per thread, scheduled dynamically, so a
  thread slowed by a neighbour does not hold the others up; tasks re-read x, never re-pack w.
- Decode (M <= 16): memory bandwidth is the limit, so w is read once in long contiguous runs, eight rows at
  a time, into partial sums kept in L1.  Threads take whole K blocks (whole rows of w) and the blocks' partial
  sums meet in a thread-local scratch, combined in block order after a barrier; where that does not fit or
  balance, each thread takes one contiguous range of columns instead.  No heap allocation.
- lm_head (matmul_nt): M = 1 is row dot products over contiguous rows of wte; M > 1 packs wte rows with
  in-register 8x8 transposes into the same panels as above.  matmul_nt_rows (the last rows of a batch of
  sequences) gives every row the M = 1 row dots' bits, reading wte once for all rows: L2-sized chunks of wte,
  each dotted with every row of x before the next is read.
- bf16 weights (W_BF16) run the same drivers. Their linear products round the input rows to bf16 first and
  multiply in pairs (_bf16dot.h: VDPBF16PS where the CPU has AVX512-BF16, else its exact emulation; the same
  bits); the lm_head (matmul_nt*) keeps fp32 activations and widens wte exactly (_lowp.h).
- Determinism: every output element is one multiply-add chain per K block (blocks of KC from k = 0),
  blocks combined in order, bias added with the first; tiles and column ranges sit at multiples of MR/NR.
  So neither the thread count nor M changes a bit (a decode row equals the same row of a prefill).
"""
from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport uint16_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.math cimport NAN
import numpy as np

cdef extern from "_gemm.h" nogil:
    enum:
        GEMM_MR
        GEMM_NR
        GEMM_KC
        GEMM_NC_MAX
        GEMM_MV_CHUNK
        GEMM_MV_ROWCOLS
        GEMM_TLS_FLOATS
        GEMM_TPT
        GEMM_MV_MAXM
        GEMM_MV_HALVES
    const char* GEMM_ISA
    float* gemm_buf_alloc(size_t n)
    void gemm_buf_free(float* buf)
    float* gemm_align64(float* p)
    void gemm_pack_b(const float* w, Py_ssize_t ldw, Py_ssize_t kc, Py_ssize_t nc, float* dst)
    void gemm_pack_bt(const float* wt, Py_ssize_t ldwt, Py_ssize_t kc, Py_ssize_t nc, float* dst)
    void gemm_tile(Py_ssize_t kc, const float* a, Py_ssize_t lda, const float* b, float* c,
                   Py_ssize_t ldc, const float* bias, int first, int accumulate)
    void gemm_mv_block(Py_ssize_t mr, Py_ssize_t kc, const float* x, Py_ssize_t ldx, const float* w,
                       Py_ssize_t ldw, Py_ssize_t nc, float* blk, Py_ssize_t ldb)
    void gemm_mv_combine(const float* blk, const float* bias, float* out, Py_ssize_t n, int first,
                         int accumulate)
    void gemm_dot_rows(Py_ssize_t K, const float* x, const float* wt, Py_ssize_t ldwt, Py_ssize_t n,
                       float* out)
    void gemm_dot_rows2(Py_ssize_t K, const float* x0, const float* x1, const float* wt, Py_ssize_t ldwt,
                        Py_ssize_t n, float* out0, float* out1, Py_ssize_t pf)
    void gemm_dot_rows4(Py_ssize_t K, const float* const* x, const float* wt, Py_ssize_t ldwt, Py_ssize_t n,
                        float* const* out, Py_ssize_t pf)
    void gemm_gelu_row(float* v, Py_ssize_t n)
    float* gemm_tls_scratch(size_t n)
    void gemm_barrier()
    int gemm_team_size()
    const int GEMM_DEBUG_HOOKS
    void gemm_debug_set_late(int thread, int us)
    void gemm_debug_maybe_late()

cdef extern from "_bf16dot.h" nogil:
    void bd_round_rows(const float* x, Py_ssize_t ldx, Py_ssize_t M, Py_ssize_t K, uint16_t* xp, Py_ssize_t ldp)
    void bd_round_rows_swapped(const float* x, Py_ssize_t ldx, Py_ssize_t M, Py_ssize_t K, float* xs,
                               Py_ssize_t ldxs)
    void bd_pack_b_swapped(const uint16_t* w, Py_ssize_t ldw, Py_ssize_t kc, Py_ssize_t nc, float* dst)
    void bd_pack_b(const uint16_t* w, Py_ssize_t ldw, Py_ssize_t kc, Py_ssize_t nc, uint16_t* dst)
    void bd_tile(Py_ssize_t kc, const uint16_t* a, Py_ssize_t lda, const uint16_t* b, float* c, Py_ssize_t ldc,
                 const float* bias, int first, int accumulate)
    void bd_mv_block(Py_ssize_t mr, Py_ssize_t kc, const uint16_t* x, Py_ssize_t ldx, const uint16_t* w,
                     Py_ssize_t ldw, Py_ssize_t nc, float* blk, Py_ssize_t ldb)
    int bd_set_hw(int want)
    int bd_hw_on
    const int BD_HAVE_HW

cdef extern from "_lowp.h" nogil:
    void lp_pack_bt_bf16(const uint16_t* wt, Py_ssize_t ldwt, Py_ssize_t kc, Py_ssize_t nc, float* dst, int nr)
    void lp_dot_rows_bf16(Py_ssize_t K, const float* x, const uint16_t* wt, Py_ssize_t ldwt, Py_ssize_t n,
                          float* out)
    void lp_dot_rows2_bf16(Py_ssize_t K, const float* x0, const float* x1, const uint16_t* wt, Py_ssize_t ldwt,
                           Py_ssize_t n, float* out0, float* out1, Py_ssize_t pf)
    void lp_dot_rows34_bf16(Py_ssize_t mr, Py_ssize_t K, const float* const* x, const uint16_t* wt,
                            Py_ssize_t ldwt, Py_ssize_t n, float* const* out, Py_ssize_t pf)

cdef enum:
    W_BF16X = 2                # inside the drivers: bf16 w times x rounded to bf16 pairs (_bf16dot.h)
    W_BF16S = 3                # ... the same products as f32 tiles over swapped pairs (no VDPBF16PS)
    MIN_PAR_FLOPS = 1 << 18    # below this many multiply-adds a second thread costs more than it saves
    ROWS_CHUNK_BYTES = 24576   # matmul_nt_rows: bytes of wt per task (L1-resident while every x row uses it)
    ROWS_GRAB = 16             # tasks a thread takes at once: consecutive chunks, so its reads stream


# The element type of w (W_F32 or W_BF16, _matmul.pxd): the drivers below are shared; only the packing, the
# tiles, the matrix-vector block and the row dots read w.  W_BF16X (bf16 w, x already rounded to bf16 by
# matmul_typed) passes x as bf16 pairs: 4 bytes hold two inputs, so x's offsets along K halve (_xk) and its
# row stride ldx counts 4-byte units.  W_BF16S (prefills where VDPBF16PS does not run) passes x as rounded
# floats with each pair swapped, and packs w widened with its rows swapped the same way: _gemm.h's f32 tile
# then runs exactly the pair chains, at f32's speed; an odd last block gets one zero step (_kw).

cdef inline const float* _xk(int wt, const float* x, Py_ssize_t k) noexcept nogil:
    # x advanced by k inputs (k even for W_BF16X: K blocks start at multiples of GEMM_KC)
    return x + (k >> 1 if wt == W_BF16X else k)


cdef inline Py_ssize_t _kw(int wt, Py_ssize_t kc) noexcept nogil:
    # 4-byte units of one packed panel row block per input: a pair holds two inputs
    if wt == W_BF16X:
        return (kc + 1) >> 1
    return kc + (kc & 1) if wt == W_BF16S else kc

cdef inline void _pack(int wt, bint trans, const void* w, Py_ssize_t off, Py_ssize_t ld, Py_ssize_t kc,
                       Py_ssize_t nc, float* dst) noexcept nogil:
    # w + off (elements): a [kc, nc] block of [K, N] w, or a [nc, kc] block of [N, K] w when trans
    if wt == W_BF16X:
        bd_pack_b(<const uint16_t*>w + off, ld, kc, nc, <uint16_t*>dst)
    elif wt == W_BF16S:
        bd_pack_b_swapped(<const uint16_t*>w + off, ld, kc, nc, dst)
    elif wt == W_BF16:   # the lm_head (trans)
        lp_pack_bt_bf16(<const uint16_t*>w + off, ld, kc, nc, dst, GEMM_NR)
    elif trans:
        gemm_pack_bt(<const float*>w + off, ld, kc, nc, dst)
    else:
        gemm_pack_b(<const float*>w + off, ld, kc, nc, dst)


cdef inline void _mv_block(int wt, Py_ssize_t mr, Py_ssize_t kc, const float* x, Py_ssize_t ldx,
                           const void* w, Py_ssize_t off, Py_ssize_t ldw, Py_ssize_t nc, float* blk,
                           Py_ssize_t ldb) noexcept nogil:
    if wt == W_BF16X:
        bd_mv_block(mr, kc, <const uint16_t*>x, 2 * ldx, <const uint16_t*>w + off, ldw, nc, blk, ldb)
    else:
        gemm_mv_block(mr, kc, x, ldx, <const float*>w + off, ldw, nc, blk, ldb)


cdef inline void _tile(int wt, Py_ssize_t kc, const float* a, Py_ssize_t lda, const float* b, float* c,
                       Py_ssize_t ldc, const float* bias, bint first, bint accumulate) noexcept nogil:
    if wt == W_BF16X:
        bd_tile(kc, <const uint16_t*>a, 2 * lda, <const uint16_t*>b, c, ldc, bias, first, accumulate)
    elif wt == W_BF16S:
        gemm_tile(_kw(wt, kc), a, lda, b, c, ldc, bias, first, accumulate)
    else:
        gemm_tile(kc, a, lda, b, c, ldc, bias, first, accumulate)


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t _max(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline int _threads_for(Py_ssize_t work, int n_threads) noexcept nogil:
    return 1 if work < MIN_PAR_FLOPS or n_threads < 1 else n_threads


cdef void _gelu_segments(float* out, Py_ssize_t n0, Py_ssize_t n1) noexcept nogil:
    # GELU over out[n0:n1] in NR-aligned pieces (n0 is a multiple of NR): the same pieces, addresses and
    # code path as the tile kernel's epilogue, whichever thread or path computed the row
    cdef Py_ssize_t j, j_i
    for j_i in range(_cdiv(n1 - n0, GEMM_NR)):
        j = n0 + j_i * GEMM_NR
        gemm_gelu_row(out + j, _min(GEMM_NR, n1 - j))


# ---------------------------------------------------------------------------------------------------------
# Prefill: one task = rows [m0, m1) x columns [n0, n1) of out (m0, n0 multiples of MR, NR)

cdef void _gemm_task(const float* x,      # IN  [M, K] row stride ldx
                     Py_ssize_t ldx,
                     int wt,              # IN  the element type of w (W_F32, W_BF16)
                     const void* w,       # IN  [K, N] contiguous, or [N, K] when trans
                     bint trans,
                     const float* bias,   # IN  [N] or NULL
                     float* out,          # OUT [M, N] row stride ldo
                     Py_ssize_t ldo, Py_ssize_t m0, Py_ssize_t m1, Py_ssize_t K, Py_ssize_t N,
                     Py_ssize_t n0, Py_ssize_t n1, int act, bint accumulate,
                     float* buf,          # SCRATCH [KC, cap] packed w, 64-byte aligned, or NULL
                     Py_ssize_t cap) noexcept nogil:
    cdef float stack_b[GEMM_KC * GEMM_NR + 16]   # one panel, used when the heap buffer is missing
    cdef float apad[GEMM_MR * GEMM_KC]           # the last, short row block, zero-padded
    cdef float ctile[GEMM_MR * GEMM_NR]          # a tile that sticks out past M or N
    cdef float bpad[GEMM_NR]
    cdef Py_ssize_t s0, s1, kb, n_kb, pc, kc, ir, mr, jr, nr, i, j, lda, s0_i, ir_i, jr_i, kw
    cdef const float* a
    cdef const float* bp
    cdef const float* biasp
    cdef float* cp
    cdef bint first, last
    if buf == NULL:
        buf = gemm_align64(stack_b)
        cap = GEMM_NR
    n_kb = _cdiv(K, GEMM_KC) if K > 0 else 1
    for s0_i in range(_cdiv(n1 - n0, cap)):
        s0 = n0 + s0_i * cap
        s1 = _min(s0 + cap, n1)
        for kb in range(n_kb):
            pc = kb * GEMM_KC
            kc = _min(GEMM_KC, K - pc)
            first = kb == 0
            last = kb == n_kb - 1
            if trans:
                _pack(wt, True, w, s0 * K + pc, K, kc, s1 - s0, buf)
            else:
                _pack(wt, False, w, pc * N + s0, N, kc, s1 - s0, buf)
            kw = _kw(wt, kc)
            for ir_i in range(_cdiv(m1 - m0, GEMM_MR)):
                ir = m0 + ir_i * GEMM_MR
                mr = _min(GEMM_MR, m1 - ir)
                if mr == GEMM_MR:
                    a = _xk(wt, x + ir * ldx, pc)
                    lda = ldx
                else:   # bit copies (bf16 pairs are not floats)
                    for i in range(GEMM_MR):
                        if i < mr:
                            memcpy(&apad[i * kw], _xk(wt, x + (ir + i) * ldx, pc), kw * sizeof(float))
                        else:
                            memset(&apad[i * kw], 0, kw * sizeof(float))
                    a = apad
                    lda = kw
                for jr_i in range(_cdiv(s1 - s0, GEMM_NR)):
                    jr = s0 + jr_i * GEMM_NR
                    nr = _min(GEMM_NR, s1 - jr)
                    bp = buf + ((jr - s0) // GEMM_NR) * kw * GEMM_NR
                    cp = out + ir * ldo + jr
                    biasp = bias + jr if bias != NULL else NULL
                    if mr == GEMM_MR and nr == GEMM_NR:
                        _tile(wt, kc, a, lda, bp, cp, ldo, biasp, first, accumulate)
                    else:
                        if biasp != NULL:
                            for j in range(GEMM_NR):
                                bpad[j] = biasp[j] if j < nr else 0.0
                            biasp = bpad
                        if not first or accumulate:
                            for i in range(mr):
                                for j in range(nr):
                                    ctile[i * GEMM_NR + j] = cp[i * ldo + j]
                        _tile(wt, kc, a, lda, bp, ctile, GEMM_NR, biasp, first, accumulate)
                        for i in range(mr):
                            for j in range(nr):
                                cp[i * ldo + j] = ctile[i * GEMM_NR + j]
                    if last and act == ACT_GELU:
                        for i in range(mr):
                            gemm_gelu_row(cp + i * ldo, nr)


cdef void _gemm(const float* x, Py_ssize_t ldx, int wt, const void* w, bint trans, const float* bias,
                float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                int act, bint accumulate, int n_threads) noexcept nogil:
    cdef int nt = _threads_for(M * K * N, n_threads)
    cdef Py_ssize_t n_panels = _cdiv(N, GEMM_NR), n_rblocks = _cdiv(M, GEMM_MR)
    cdef Py_ssize_t n_ct, n_rt, p_per_ct, b_per_rt, cap, n_tasks, t, ct, rt
    # column tasks: no wider than NC_MAX, GEMM_TPT per thread when there are enough panels
    n_ct = _cdiv(n_panels, GEMM_NC_MAX // GEMM_NR)
    n_ct = _min(_cdiv(n_ct, nt * GEMM_TPT) * nt * GEMM_TPT, n_panels)
    p_per_ct = _cdiv(n_panels, n_ct)
    n_ct = _cdiv(n_panels, p_per_ct)
    # few columns but many rows: split the rows too (each row task repacks its w block; cheap when M is big)
    n_rt = 1
    if n_ct < nt:
        n_rt = _min(n_rblocks, _cdiv(nt, n_ct))
    b_per_rt = _cdiv(n_rblocks, n_rt)
    n_rt = _cdiv(n_rblocks, b_per_rt)
    n_tasks = n_ct * n_rt
    cap = p_per_ct * GEMM_NR
    cdef float* buf = NULL
    with parallel(num_threads=nt):
        buf = gemm_buf_alloc(GEMM_KC * cap)
        for t in prange(n_tasks, schedule="dynamic"):
            ct = t % n_ct
            rt = t // n_ct
            _gemm_task(x, ldx, wt, w, trans, bias, out, ldo,
                       rt * b_per_rt * GEMM_MR, _min((rt + 1) * b_per_rt * GEMM_MR, M), K, N,
                       ct * p_per_ct * GEMM_NR, _min((ct + 1) * p_per_ct * GEMM_NR, N),
                       act, accumulate, buf, cap)
        gemm_buf_free(buf)


# ---------------------------------------------------------------------------------------------------------
# Decode: one row of x, or up to GEMM_MV_MAXM rows (a batch, a prompt chunk): w streamed once, as in decode

cdef void _matvec_task(const float* x,     # IN  [M, K] row stride ldx, M <= GEMM_MV_MAXM
                       Py_ssize_t ldx,
                       int wt,             # IN  the element type of w
                       const void* w,      # IN  [K, N] contiguous
                       const float* bias,  # IN  [N] or NULL
                       float* out,         # OUT [M, N] row stride ldo; columns [n0, n1) written
                       Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, Py_ssize_t n0,
                       Py_ssize_t n1, int act, bint accumulate) noexcept nogil:
    # SCRATCH one K block's partial sums [M, cw], rows packed (a power-of-two row stride would put every row
    # in the same L1 sets): the thread-local buffer, so columns go in chunks of up to GEMM_MV_ROWCOLS, whole
    # rows of w for every projection of GPT-2 (short row pieces defeat the prefetchers once M > 1)
    cdef float* blk = gemm_tls_scratch(GEMM_TLS_FLOATS)   # never NULL for this size
    cdef Py_ssize_t chunk = _min(GEMM_TLS_FLOATS // M, GEMM_MV_ROWCOLS) // GEMM_NR * GEMM_NR
    cdef Py_ssize_t c0, cw, kb, n_kb, pc, kc, c0_i, m
    if chunk & (chunk - 1) == 0 and chunk > GEMM_NR:   # (a power-of-two row stride: see above)
        chunk = chunk - GEMM_NR
    n_kb = _cdiv(K, GEMM_KC) if K > 0 else 1
    for c0_i in range(_cdiv(n1 - n0, chunk)):
        c0 = n0 + c0_i * chunk
        cw = _min(chunk, n1 - c0)
        for kb in range(n_kb):
            pc = kb * GEMM_KC
            kc = _min(GEMM_KC, K - pc)
            _mv_block(wt, M, kc, _xk(wt, x, pc), ldx, w, pc * N + c0, N, cw, blk, cw)
            for m in range(M):
                gemm_mv_combine(blk + m * cw, bias + c0 if bias != NULL else NULL, out + m * ldo + c0,
                                cw, kb == 0, accumulate)
        if act == ACT_GELU:
            for m in range(M):
                _gelu_segments(out + m * ldo, c0, c0 + cw)


cdef void _matvec(const float* x, Py_ssize_t ldx, int wt, const void* w, const float* bias, float* out,
                  Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, int act, bint accumulate,
                  int n_threads) noexcept nogil:
    cdef int nt = _threads_for(M * K * N, n_threads)
    cdef Py_ssize_t n_panels = _cdiv(N, GEMM_NR), n_kb = _cdiv(K, GEMM_KC), per, t, n_tasks
    cdef float* part = NULL
    # Threads take whole K blocks when the blocks share out evenly (within 25%) and their partial sums fit
    # the thread-local scratch: each thread then reads long contiguous runs of w (whole rows).
    if nt > 1 and n_kb > 0 and 4 * _cdiv(n_kb, nt) * nt <= 5 * n_kb:
        part = gemm_tls_scratch(n_kb * M * N)
    if part != NULL:
        _matvec_ksplit(x, ldx, wt, w, bias, out, ldo, M, K, N, act, accumulate, nt, part)
        return
    # Otherwise one contiguous, NR-aligned column range per thread.
    n_tasks = _min(nt, n_panels)
    per = _cdiv(n_panels, n_tasks) * GEMM_NR
    n_tasks = _cdiv(N, per)
    for t in prange(n_tasks, num_threads=nt, schedule="static"):
        _matvec_task(x, ldx, wt, w, bias, out, ldo, M, K, N, t * per, _min((t + 1) * per, N), act,
                     accumulate)


cdef void _matvec_ksplit(const float* x, Py_ssize_t ldx, int wt, const void* w, const float* bias, float* out,
                         Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, int act,
                         bint accumulate, int nt,
                         float* part) noexcept nogil:   # SCRATCH [n_kb, M, N] partial sums per K block
    cdef Py_ssize_t n_kb = _cdiv(K, GEMM_KC), kb, per = _cdiv(_cdiv(N, GEMM_NR), nt) * GEMM_NR, t
    cdef Py_ssize_t n_tasks = _cdiv(N, per)
    cdef int team = 1
    t = 0
    with parallel(num_threads=nt):
        for kb in prange(n_kb, schedule="static"):
            _ksplit_block(x, ldx, wt, w, M, K, N, kb, part + kb * M * N)
        gemm_barrier()   # every block's partial sums are in place before any column is combined
        # The combine is dealt out by thread number, not by a second prange: GCC opens every prange with a
        # barrier of its own (its loop variable is firstprivate and lastprivate), which would hide a missing
        # gemm_barrier() from the tests; this way the barrier above is the only one, and debug builds test it.
        team = gemm_team_size()
        t = threadid()
        while t < n_tasks:
            _ksplit_combine(part, bias, out, ldo, M, N, n_kb, t * per, _min((t + 1) * per, N), act, accumulate)
            t = t + team


cdef void _ksplit_block(const float* x, Py_ssize_t ldx, int wt, const void* w, Py_ssize_t M, Py_ssize_t K,
                        Py_ssize_t N, Py_ssize_t kb,
                        float* part) noexcept nogil:   # OUT [M, N] block kb's partial sums
    cdef Py_ssize_t pc = kb * GEMM_KC, kc = _min(GEMM_KC, K - pc), c0, c0_i
    cdef Py_ssize_t chunk = (GEMM_MV_CHUNK // M) // GEMM_NR * GEMM_NR
    gemm_debug_maybe_late()   # debug builds: one thread may be made late here (tests of the barrier)
    for c0_i in range(_cdiv(N, chunk)):
        c0 = c0_i * chunk
        _mv_block(wt, M, kc, _xk(wt, x, pc), ldx, w, pc * N + c0, N, _min(chunk, N - c0), part + c0, N)


cdef void _ksplit_combine(const float* part, const float* bias, float* out, Py_ssize_t ldo, Py_ssize_t M,
                          Py_ssize_t N, Py_ssize_t n_kb, Py_ssize_t c0, Py_ssize_t c1, int act,
                          bint accumulate) noexcept nogil:
    # columns [c0, c1) of out from the blocks' partial sums, in block order: the column path's bits
    cdef Py_ssize_t m, kb
    for m in range(M):
        for kb in range(n_kb):
            gemm_mv_combine(part + (kb * M + m) * N + c0, bias + c0 if bias != NULL else NULL,
                            out + m * ldo + c0, c1 - c0, kb == 0, accumulate)
        if act == ACT_GELU:
            _gelu_segments(out + m * ldo, c0, c1)


cdef void _dot_rows(const float* x, int wtype, const void* wt, float* out, Py_ssize_t K, Py_ssize_t N,
                    int n_threads) noexcept nogil:
    # out[n] = x . wt[n] for n < N, rows of wt split into one contiguous range per thread
    cdef int nt = _threads_for(K * N, n_threads)
    cdef Py_ssize_t per, t, n_tasks, n0
    n_tasks = _min(nt, N)
    per = _cdiv(_cdiv(N, n_tasks), 16) * 16
    n_tasks = _cdiv(N, per)
    for t in prange(n_tasks, num_threads=nt, schedule="static"):
        n0 = t * per
        if wtype == W_BF16:
            lp_dot_rows_bf16(K, x, <const uint16_t*>wt + n0 * K, K, _min(per, N - n0), out + n0)
        else:
            gemm_dot_rows(K, x, <const float*>wt + n0 * K, K, _min(per, N - n0), out + n0)


cdef inline Py_ssize_t _pass_prefetch(Py_ssize_t m, Py_ssize_t rows, Py_ssize_t K) noexcept nogil:
    # how far ahead the pass of four rows of x from row m prefetches wt (elements; 0: not at all): the first
    # pass the next chunk, the second the one after, later passes nothing (both are on their way by then)
    return rows * K if m == 0 else (2 * rows * K if m == 4 else 0)


cdef void _dot_rows_chunk(const float* x, Py_ssize_t ldx, Py_ssize_t M, int wtype, const void* wt, float* out,
                          Py_ssize_t ldo, Py_ssize_t K, Py_ssize_t n0, Py_ssize_t n1) noexcept nogil:
    # out[m, n] = x[m] . wt[n] for n in [n0, n1), every m: the chunk of wt is read from memory for the first
    # row of x and from cache for the others; each element is the M == 1 row dot's exact arithmetic. Every
    # pass prefetches (_pass_prefetch): the first the next chunk, the second the one after, so memory is never
    # idle while a chunk is summed from cache (124M's head, 8 rows, Zen 4: 6.2 -> 5.5 ms). Two or three rows
    # are one pass, which without the prefetch streamed wt as slowly as the one-row path had (2 rows: f32
    # 6.3 -> 5.2 ms, bf16 4.1 -> 2.4 ms, two threads, in one process alternating)
    cdef Py_ssize_t m = 0, q, r
    cdef const float* xs[4]
    cdef float* outs[4]
    if wtype != W_BF16:   # f32: four (then two) rows of x per pass over the chunk
        while m + 4 <= M:
            for q in range(4):
                xs[q] = x + (m + q) * ldx
                outs[q] = out + (m + q) * ldo + n0
            gemm_dot_rows4(K, xs, <const float*>wt + n0 * K, K, n1 - n0, outs, _pass_prefetch(m, n1 - n0, K))
            m += 4
        while m + 2 <= M:
            gemm_dot_rows2(K, x + m * ldx, x + (m + 1) * ldx, <const float*>wt + n0 * K, K, n1 - n0,
                           out + m * ldo + n0, out + (m + 1) * ldo + n0,
                           _pass_prefetch(m, n1 - n0, K))
            m += 2
    while wtype == W_BF16 and (m + 4 <= M or M - m == 3):   # bf16: four rows a pass, three for the last three
        r = _min(4, M - m)
        for q in range(r):
            xs[q] = x + (m + q) * ldx
            outs[q] = out + (m + q) * ldo + n0
        lp_dot_rows34_bf16(r, K, xs, <const uint16_t*>wt + n0 * K, K, n1 - n0, outs, _pass_prefetch(m, n1 - n0, K))
        m += r
    while wtype == W_BF16 and m + 2 <= M:
        lp_dot_rows2_bf16(K, x + m * ldx, x + (m + 1) * ldx, <const uint16_t*>wt + n0 * K, K, n1 - n0,
                          out + m * ldo + n0, out + (m + 1) * ldo + n0,
                          _pass_prefetch(m, n1 - n0, K))
        m += 2
    while m < M:
        if wtype == W_BF16:
            lp_dot_rows_bf16(K, x + m * ldx, <const uint16_t*>wt + n0 * K, K, n1 - n0, out + m * ldo + n0)
        else:
            gemm_dot_rows(K, x + m * ldx, <const float*>wt + n0 * K, K, n1 - n0, out + m * ldo + n0)
        m += 1


cdef void matmul_nt_rows_typed(int wtype, const float* x, Py_ssize_t ldx, const void* wt, float* out,
                               Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                               int n_threads) noexcept nogil:
    cdef Py_ssize_t esize = 2 if wtype == W_BF16 else 4
    # rows of wt per task: ~64 KiB (L2 on every x86 core of note), so M rows of x re-read it from cache;
    # tasks are small and dealt out dynamically, so a thread slowed by a neighbour holds up one chunk only
    cdef Py_ssize_t rows = _max(4, ROWS_CHUNK_BYTES // (K * esize))
    cdef Py_ssize_t n_tasks, t
    cdef int nt = _threads_for(M * K * N, n_threads)
    if M <= 0 or N <= 0:
        return
    if M == 1:
        _dot_rows(x, wtype, wt, out, K, N, n_threads)
        return
    n_tasks = _cdiv(N, rows)
    for t in prange(n_tasks, num_threads=nt, schedule="dynamic", chunksize=ROWS_GRAB):
        _dot_rows_chunk(x, ldx, M, wtype, wt, out, ldo, K, t * rows, _min((t + 1) * rows, N))


# ---------------------------------------------------------------------------------------------------------
# The contract (see _matmul.pxd)

cdef void matmul_typed(int wtype, const float* x, Py_ssize_t ldx, const void* w, const float* bias,
                       float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                       int act, bint accumulate, int n_threads) noexcept nogil:
    # (accumulate with act != ACT_NONE is outside the contract, see _matmul.pxd; matmul_py rejects it)
    if M <= 0 or N <= 0:
        return
    if wtype == W_BF16:
        _bf16_linear(x, ldx, w, bias, out, ldo, M, K, N, act, accumulate, n_threads)
        return
    cdef Py_ssize_t h
    if M <= GEMM_MV_MAXM:
        _matvec(x, ldx, wtype, w, bias, out, ldo, M, K, N, act, accumulate, n_threads)
    elif GEMM_MV_HALVES and M <= 2 * GEMM_MV_MAXM:   # two streamed halves (_gemm.h)
        h = (M + 1) // 2
        _matvec(x, ldx, wtype, w, bias, out, ldo, h, K, N, act, accumulate, n_threads)
        _matvec(x + h * ldx, ldx, wtype, w, bias, out + h * ldo, ldo, M - h, K, N, act, accumulate, n_threads)
    else:
        _gemm(x, ldx, wtype, w, False, bias, out, ldo, M, K, N, act, accumulate, n_threads)


cdef void _bf16_linear(const float* x, Py_ssize_t ldx, const void* w, const float* bias, float* out,
                       Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, int act, bint accumulate,
                       int n_threads) noexcept nogil:
    # x rounded to bf16 pairs once, then the shared drivers with W_BF16X.  Decode-sized calls use a thread-
    # local buffer; a prefill allocates one, and if that fails goes GEMM_MV_MAXM rows at a time (a row's bits
    # do not depend on M, so the result is the same).
    cdef Py_ssize_t ldp = K + (K & 1), m0, rows
    cdef uint16_t* xp = NULL
    cdef float* xs = NULL
    if M > GEMM_MV_MAXM and bd_hw_on:
        xp = <uint16_t*>malloc(M * ldp * sizeof(uint16_t))
        if xp != NULL:
            bd_round_rows(x, ldx, M, K, xp, ldp)
            _gemm(<const float*>xp, ldp // 2, W_BF16X, w, False, bias, out, ldo, M, K, N, act, accumulate,
                  n_threads)
            free(xp)
            return
    elif M > GEMM_MV_MAXM:
        xs = <float*>malloc(M * ldp * sizeof(float))
        if xs != NULL:
            bd_round_rows_swapped(x, ldx, M, K, xs, ldp)
            _gemm(xs, ldp, W_BF16S, w, False, bias, out, ldo, M, K, N, act, accumulate, n_threads)
            free(xs)
            return
    cdef bint own = False
    xp = _bf16_rows_buffer(GEMM_MV_MAXM * ldp)
    if xp == NULL:   # K past the thread-local buffer (no GPT-2 has it)
        xp = <uint16_t*>malloc(GEMM_MV_MAXM * ldp * sizeof(uint16_t))
        own = True
    if xp == NULL:   # out of memory: NaN, which the engine reports as one clear error, never stale values
        for m0 in range(M):
            for rows in range(N):
                out[m0 * ldo + rows] = NAN
        return
    m0 = 0
    while m0 < M:
        rows = _min(GEMM_MV_MAXM, M - m0)
        bd_round_rows(x + m0 * ldx, ldx, rows, K, xp, ldp)
        _matvec(<const float*>xp, ldp // 2, W_BF16X, w, bias, out + m0 * ldo, ldo, rows, K, N, act, accumulate,
                n_threads)
        m0 += rows
    if own:
        free(xp)


cdef extern from *:
    """
    /* the rounded input rows of a decode-sized bf16 product: GEMM_MV_MAXM rows of up to 8192 inputs (up to
       1 MiB), per thread (thread-local storage of a loaded module is allocated on a thread's first use) */
    #define GPT2CY_BF16_ROWS_U16 (GEMM_MV_MAXM * 8192)
    static uint16_t *gpt2cy_bf16_rows_buffer(size_t n)
    {
        static GEMM_THREAD_LOCAL uint16_t buf[GPT2CY_BF16_ROWS_U16];
        return n <= GPT2CY_BF16_ROWS_U16 ? buf : NULL;
    }
    """
    uint16_t* _bf16_rows_buffer "gpt2cy_bf16_rows_buffer"(size_t n) nogil


cdef void matmul_nt_typed(int wtype, const float* x, Py_ssize_t ldx, const void* wt,
                          float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                          int n_threads) noexcept nogil:
    if M <= 0 or N <= 0:
        return
    if M == 1:
        _dot_rows(x, wtype, wt, out, K, N, n_threads)
    else:
        _gemm(x, ldx, wtype, wt, True, NULL, out, ldo, M, K, N, ACT_NONE, False, n_threads)


cdef void matmul(const float* x, Py_ssize_t ldx, const float* w, const float* bias,
                 float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                 int act, bint accumulate, int n_threads) noexcept nogil:
    matmul_typed(W_F32, x, ldx, w, bias, out, ldo, M, K, N, act, accumulate, n_threads)


cdef void matmul_nt(const float* x, Py_ssize_t ldx, const float* wt,
                    float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                    int n_threads) noexcept nogil:
    matmul_nt_typed(W_F32, x, ldx, wt, out, ldo, M, K, N, n_threads)


# ---------------------------------------------------------------------------------------------------------
# Python entry points (tests, benchmarks)

def debug_hooks():
    """True when this build has the debug-only test hooks (a GPT2CY_DEBUG=1 build with OpenMP)."""
    return bool(GEMM_DEBUG_HOOKS)


def set_debug_late(int thread, int microseconds):
    """Debug builds: make thread `thread` of the K-split decode path busy-wait `microseconds` before it
    writes its partial sums (0: off), so a missing barrier gives wrong sums.  RuntimeError elsewhere."""
    if not GEMM_DEBUG_HOOKS:
        raise RuntimeError("this build has no debug hooks (build with GPT2CY_DEBUG=1 and OpenMP)")
    if microseconds < 0:
        raise ValueError("microseconds must be >= 0")
    gemm_debug_set_late(thread, microseconds)


def set_bf16_dot(bint want):
    """Run the bf16 type's products on VDPBF16PS (AVX512-BF16) where the CPU has it, or on its emulation (the
    same bits). Returns whether the instruction is used.  On at import."""
    return bool(bd_set_hw(want))


def bf16_dot():
    """How the bf16 type's products run: "vdpbf16ps", "emulated-512", "emulated-256" or "portable"."""
    if bd_hw_on:
        return "vdpbf16ps"
    return {"avx512f": "emulated-512", "avx2+fma": "emulated-256"}.get(GEMM_ISA.decode(), "portable")


bd_set_hw(1)


def bf16_round_rows(x):
    """float32 [M, K] -> uint16 [M, K + K % 2]: the bf16 inputs (bit patterns) the bf16 type's products read,
    a zero after an odd K (tests compare it with the numpy rule)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError("x must be 2-D")
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], ldp = K + (K & 1)
    out = np.zeros((M, ldp), np.uint16)
    cdef const float[:, ::1] av = a
    cdef uint16_t[:, ::1] ov = out
    if M and K:
        bd_round_rows(&av[0, 0], K, M, K, &ov[0, 0], ldp)
    return out


def isa():
    """The instruction set the tile kernels were compiled for, and the tile shape: e.g. ('avx512f', 8, 32)."""
    return GEMM_ISA.decode(), GEMM_MR, GEMM_NR


def _check_matrix(a, name, writable=False):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if a.size == 0:
        pass
    elif a.shape[0] > 1 and (a.strides[0] % 4 or a.strides[0] < 4 * a.shape[1]):
        raise ValueError(f"{name} rows must be at least {a.shape[1]} floats apart, got stride {a.strides[0]} bytes")
    if a.size and a.shape[1] > 1 and a.strides[1] != 4:
        raise ValueError(f"{name} rows must be contiguous (column stride 4 bytes), got {a.strides[1]}")


def matmul_py(x, w, bias=None, int act=0, bint transposed=False, int n_threads=1, *, out=None,
              bint accumulate=False):
    """Return act(x @ w + bias) (or x @ w.T when transposed, w then [N, K]) as float32.

    x may be a row-strided view (rows contiguous, row stride >= K); w must be C-contiguous.  With out (a
    float32 [M, N] view, rows contiguous, possibly strided) the result is written there instead, or added to
    it when accumulate.  For tests and benchmarks; the forward pass calls the cdef functions directly.
    """
    _check_matrix(x, "x")
    if isinstance(w, np.ndarray) and not w.flags.c_contiguous:
        raise ValueError("w must be C-contiguous")
    _check_matrix(w, "w")
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1]
    cdef Py_ssize_t N = w.shape[0] if transposed else w.shape[1]
    if (w.shape[1] if transposed else w.shape[0]) != K:
        raise ValueError(f"shape mismatch: x {x.shape} @ w{'.T' if transposed else ''} {w.shape}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if act not in (ACT_NONE, ACT_GELU):
        raise ValueError(f"act must be 0 (none) or 1 (gelu), got {act}")
    if transposed and (bias is not None or act != ACT_NONE or accumulate):
        raise ValueError("transposed=True supports neither bias, act nor accumulate")
    if accumulate and act != ACT_NONE:
        raise ValueError("accumulate=True takes no act: the fused residual add is out += x @ w + bias")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.ndim != 1:
            raise ValueError("bias must be a 1-D float32 numpy array")
        if bias.shape[0] != N:
            raise ValueError(f"bias has {bias.shape[0]} entries, expected {N}")
        bias = np.ascontiguousarray(bias)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out")
        out = np.empty((M, N), dtype=np.float32)
    else:
        _check_matrix(out, "out", writable=True)
        if out.shape != (M, N):
            raise ValueError(f"out has shape {out.shape}, expected {(M, N)}")
        if np.may_share_memory(out, x) or np.may_share_memory(out, w) or (
                bias is not None and np.may_share_memory(out, bias)):
            raise ValueError("out must not overlap x, w or bias")
    if M == 0 or N == 0:
        return out
    cdef const float[:, :] xv2 = x if K > 0 else np.zeros((M, 1), np.float32)
    cdef const float[:, ::1] wv = w if w.size > 0 else np.zeros((1, 1), np.float32)
    cdef float[:, :] ov = out
    cdef const float[::1] bv
    cdef const float* bp = NULL
    if bias is not None:
        bv = bias
        bp = &bv[0]
    cdef Py_ssize_t ldx = xv2.strides[0] // 4 if M > 1 else K
    cdef Py_ssize_t ldo = ov.strides[0] // 4 if M > 1 else N
    with nogil:
        if transposed:
            matmul_nt(&xv2[0, 0], ldx, &wv[0, 0], &ov[0, 0], ldo, M, K, N, n_threads)
        else:
            matmul(&xv2[0, 0], ldx, &wv[0, 0], bp, &ov[0, 0], ldo, M, K, N, act, accumulate, n_threads)
    return out
