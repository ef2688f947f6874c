# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (the engine validates ids, positions and shapes in Python first; the loops index raw pointers)
"""Layer norm, position embeddings and causal attention over the KV cache, for segments of a batch.

Reductions accumulate into a small array of lanes (acc[k] += x[i + k]) so the compiler vectorises them
without -ffast-math; the attention keeps keys transposed (in blocks of positions) in the cache for the same
reason (see _kernels.pxd).
The attention's multiply-add chains use GPT2CY_MADD (_madd.h): fused where the CPU has FMA, spelled out so
that a decode row and a prefill row run the same rounding steps whatever the compiler contracts.

A batch is a list of segments (_kernels.pxd): consecutive rows of one sequence, in one KV-cache slot, at
consecutive positions. Attention blocks never span two segments, so each sequence's rows are computed exactly
as if it ran alone.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport sqrt, sqrtf
from libc.string cimport memcpy
import numpy as np

cdef extern from "_madd.h" nogil:
    float madd "GPT2CY_MADD"(float a, float b, float c)   # a*b + c, fused where the CPU has FMA

cdef extern from * nogil:
    """
    /* a cache line into L2 ahead of its use (a no-op where the compiler has no prefetch builtin) */
    #if defined(__GNUC__)
    #define GPT2CY_PREFETCH_L2(p) __builtin_prefetch((const void *)(p), 0, 2)
    #else
    #define GPT2CY_PREFETCH_L2(p) ((void)(p))
    #endif
    """
    void prefetch_l2 "GPT2CY_PREFETCH_L2"(const float* p)

cdef extern from *:
    """
    /* Attention block widths: QB rows x width floats of accumulators must fit the vector registers
       (AVX-512: 32 x 16 floats; AVX2 and others: 16 x 8).  The one-row (decode) kernels take four key
       blocks of the cache (_kernels.pxd) at a time. */
    #if defined(__AVX512F__)
    #define GPT2CY_ATT_WIDTH 64
    #else
    #define GPT2CY_ATT_WIDTH 16
    #endif
    /* _scores4 computes whole blocks of keys, so the last block of a row reads (and never uses) up to
       width - 1 keys past n: the cache rows are padded to a multiple of KV_ALIGN, which must therefore be a
       multiple of the score block width, itself whole key blocks.  (_scores1 reads only the key blocks
       that hold its keys; the value kernels block over head_dim, never past n.) */
    GPT2CY_STATIC_ASSERT(GPT2CY_KV_ALIGN % GPT2CY_ATT_WIDTH == 0, kv_align_covers_score_block);
    GPT2CY_STATIC_ASSERT(GPT2CY_ATT_WIDTH % GPT2CY_KV_BLOCK == 0, score_block_holds_key_blocks);
    """
    enum: GPT2CY_ATT_WIDTH

cdef enum:
    LANES = 16          # partial sums per reduction: one AVX-512 register, two AVX2 ones
    JB = GPT2CY_ATT_WIDTH    # keys per score block of _scores4 (QB rows of accumulators)
    DB = GPT2CY_ATT_WIDTH    # value columns per block of _pv4
    DB1 = 64            # value columns per block of _pv1
    MIN_PAR_ATTN = 1 << 15   # multiply-adds below which attention stays on one thread (tiny models)
    MIN_PAR_KV = 1 << 11     # cached floats below which the KV stores stay on one thread


# ---------------------------------------------------------------------------------------- reductions

cdef inline double _sum(const float* x, Py_ssize_t n) noexcept nogil:
    # sum of x[:n] with LANES independent float partial sums, combined in double
    cdef float acc[LANES]
    cdef Py_ssize_t i, k, n_main = n - n % LANES
    cdef double s = 0.0
    for k in range(LANES):
        acc[k] = 0.0
    for i in range(n_main // LANES):
        for k in range(LANES):
            acc[k] = acc[k] + x[i * LANES + k]
    for k in range(LANES):
        s = s + acc[k]
    for i in range(n_main, n):
        s = s + x[i]
    return s


cdef inline double _sum_sq_dev(const float* x, Py_ssize_t n, float mean) noexcept nogil:
    # sum of (x[:n] - mean)^2, as _sum
    cdef float acc[LANES]
    cdef float d
    cdef Py_ssize_t i, k, n_main = n - n % LANES
    cdef double s = 0.0
    for k in range(LANES):
        acc[k] = 0.0
    for i in range(n_main // LANES):
        for k in range(LANES):
            d = x[i * LANES + k] - mean
            acc[k] = acc[k] + d * d
    for k in range(LANES):
        s = s + acc[k]
    for i in range(n_main, n):
        d = x[i] - mean
        s = s + d * d
    return s


cdef inline float _max(const float* x, Py_ssize_t n) noexcept nogil:
    cdef float acc[LANES]
    cdef Py_ssize_t i, k, n_main = n - n % LANES
    cdef float m = x[0]
    for k in range(LANES):
        acc[k] = x[0]
    for i in range(n_main // LANES):
        for k in range(LANES):
            acc[k] = acc[k] if acc[k] > x[i * LANES + k] else x[i * LANES + k]
    for k in range(LANES):
        m = m if m > acc[k] else acc[k]
    for i in range(n_main, n):
        m = m if m > x[i] else x[i]
    return m


# ---------------------------------------------------------------------------------------- row kernels

cdef inline void _layernorm_row(const float* x,   # IN  [C]
                                const float* g,   # IN  [C]
                                const float* b,   # IN  [C]
                                float* y,         # OUT [C] (may be x)
                                Py_ssize_t C, float eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef float mean = <float>(_sum(x, C) / C)
    cdef float rstd = <float>(1.0 / sqrt(_sum_sq_dev(x, C, mean) / C + eps))
    for i in range(C):
        y[i] = (x[i] - mean) * rstd * g[i] + b[i]


cdef void layernorm(const float* x, Py_ssize_t ldx, const float* g, const float* b,
                    float* y, Py_ssize_t ldy, Py_ssize_t T, Py_ssize_t C, float eps,
                    int n_threads) noexcept nogil:
    cdef Py_ssize_t t
    for t in prange(T, num_threads=n_threads, schedule="static", use_threads_if=T > 1):
        _layernorm_row(x + t * ldx, g, b, y + t * ldy, C, eps)


cdef inline void _exp_shifted(float* x, Py_ssize_t n, float m) noexcept nogil:
    # x[:n] = exp(x[:n] - m) for m >= max(x): arguments <= 0. Cephes' expf (within 2 ulp), written so the
    # loop vectorises: round with the 1.5 * 2^23 trick, 2^k from the exponent bits (memcpy = bit cast).
    # The constants are float locals: a bare literal is a double in C and would promote the arithmetic.
    cdef float lo = -87.0                       # exp(-87) ~ 1.6e-38: still a normal float
    cdef float log2e = 1.44269504088896341, magic = 12582912.0
    cdef float ln2_hi = 0.693359375, ln2_lo = -2.12194440e-4
    cdef float c5 = 1.9875691500e-4, c4 = 1.3981999507e-3, c3 = 8.3334519073e-3
    cdef float c2 = 4.1665795894e-2, c1 = 1.6666665459e-1, c0 = 5.0000001201e-1, one = 1.0
    cdef Py_ssize_t i
    cdef float t, k, r, p, two_k
    cdef int bits
    for i in range(n):
        t = x[i] - m
        t = lo if t < lo else t                 # (a NaN stays NaN: bad weights must show)
        k = (t * log2e + magic) - magic         # round(t / ln 2)
        r = t - k * ln2_hi                      # ln 2 in two parts: exact reduction
        r = r - k * ln2_lo
        p = ((((c5 * r + c4) * r + c3) * r + c2) * r + c1) * r + c0
        p = p * r * r + r + one
        bits = (<int>k + 127) << 23
        memcpy(&two_k, &bits, 4)
        x[i] = p * two_k


cdef void add_positions(float* x, Py_ssize_t ldx, const Segment* segs, Py_ssize_t n_seg, const float* wpe,
                        Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t s, t, i
    cdef const float* p
    cdef float* o
    for s in range(n_seg):
        for t in range(segs[s].count):
            o = x + (segs[s].row0 + t) * ldx
            p = wpe + (segs[s].pos0 + t) * C
            for i in range(C):
                o[i] = o[i] + p[i]


# ---------------------------------------------------------------------------------------- attention

cdef void kv_store(const float* qkv, Py_ssize_t ldq, float* k_cache, float* v_cache, Py_ssize_t slot_stride,
                   const Segment* segs, Py_ssize_t n_seg, Py_ssize_t H, Py_ssize_t D,
                   Py_ssize_t cap, int n_threads) noexcept nogil:
    # one task per (segment, head): a new key scatters over D cache lines of the transposed layout, each
    # usually a miss, so the stores of a batch of sequences are spread over the threads
    cdef Py_ssize_t task, s, h, rows = 0
    for s in range(n_seg):
        rows += segs[s].count
    for task in prange(n_seg * H, num_threads=n_threads, schedule="static",
                       use_threads_if=rows * H * D >= MIN_PAR_KV):
        s = task // H
        h = task % H
        _kv_store_head(qkv + segs[s].row0 * ldq, ldq, k_cache + segs[s].slot * slot_stride,
                       v_cache + segs[s].slot * slot_stride, segs[s].count, segs[s].pos0, h, H, D, cap)


cdef void _kv_store1(const float* qkv, Py_ssize_t ldq, float* k_cache, float* v_cache,
                     Py_ssize_t T, Py_ssize_t n_past, Py_ssize_t H, Py_ssize_t D,
                     Py_ssize_t cap) noexcept nogil:
    # one segment: T rows of qkv -> positions n_past.. of one slot's cache
    cdef Py_ssize_t h
    for h in range(H):
        _kv_store_head(qkv, ldq, k_cache, v_cache, T, n_past, h, H, D, cap)


cdef void _kv_store_head(const float* qkv, Py_ssize_t ldq, float* k_cache, float* v_cache,
                         Py_ssize_t T, Py_ssize_t n_past, Py_ssize_t h, Py_ssize_t H, Py_ssize_t D,
                         Py_ssize_t cap) noexcept nogil:
    # head h of one segment: T rows of qkv -> positions n_past.. of one slot's cache
    cdef Py_ssize_t t, i, C = H * D
    cdef const float* src
    cdef float* dst
    cdef Py_ssize_t p
    # keys: position p of head h goes to lane p % KVB of key block p // KVB ([H, cap / KVB, D, KVB])
    for t in range(T):
        p = n_past + t
        src = qkv + t * ldq + C + h * D
        dst = k_cache + h * D * cap + (p // KVB) * (D * KVB) + p % KVB
        for i in range(D):
            dst[i * KVB] = src[i]
    # values: [H, cap, D], one contiguous run of D per head and position
    for t in range(T):
        src = qkv + t * ldq + 2 * C + h * D
        dst = v_cache + (h * cap + n_past + t) * D
        for i in range(D):
            dst[i] = src[i]


# Scores and weighted sums work on blocks: QB query rows at a time (each key or value vector loaded once
# serves QB rows) and JB keys / DB value columns held in local accumulators the compiler keeps in vector
# registers. Decode (one query) takes the single-row kernels.

cdef inline void _scores4(const float* q,    # IN  [4, D] row stride ldq: 4 queries of one head
                          Py_ssize_t ldq,
                          const float* kt,   # IN  [cap / KVB, D, KVB] this head's key blocks
                          Py_ssize_t cap, Py_ssize_t D,
                          Py_ssize_t n,      # keys 0..n-1 (n <= cap)
                          float* s,          # OUT [4, cap] s[r, j] = (q_r . k_j) * scale for j < n
                          float scale) noexcept nogil:
    # whole blocks of JB keys: the last one runs past n into the row's padding (cap is a multiple of
    # KV_ALIGN); those scores are never used
    cdef float a0[JB]
    cdef float a1[JB]
    cdef float a2[JB]
    cdef float a3[JB]
    cdef float q0, q1, q2, q3, kv
    cdef const float* kr
    cdef Py_ssize_t jb, j0, d, k, kb, bs = D * KVB
    for jb in range((n + JB - 1) // JB):
        j0 = jb * JB
        for k in range(JB):
            a0[k] = 0.0
            a1[k] = 0.0
            a2[k] = 0.0
            a3[k] = 0.0
        for d in range(D):
            q0 = q[d]
            q1 = q[ldq + d]
            q2 = q[2 * ldq + d]
            q3 = q[3 * ldq + d]
            kr = kt + j0 * D + d * KVB          # key block j0 / KVB, row d
            for kb in range(JB // KVB):
                for k in range(KVB):
                    kv = kr[kb * bs + k]
                    a0[kb * KVB + k] = madd(q0, kv, a0[kb * KVB + k])
                    a1[kb * KVB + k] = madd(q1, kv, a1[kb * KVB + k])
                    a2[kb * KVB + k] = madd(q2, kv, a2[kb * KVB + k])
                    a3[kb * KVB + k] = madd(q3, kv, a3[kb * KVB + k])
        for k in range(JB):
            s[j0 + k] = a0[k] * scale
            s[cap + j0 + k] = a1[k] * scale
            s[2 * cap + j0 + k] = a2[k] * scale
            s[3 * cap + j0 + k] = a3[k] * scale


cdef inline void _scores1(const float* q,    # IN  [D] one query of one head
                          const float* kt,   # IN  [cap / KVB, D, KVB] this head's key blocks
                          Py_ssize_t cap, Py_ssize_t D,
                          Py_ssize_t n,      # keys 0..n-1 (n <= cap)
                          float* s,          # OUT [cap] s[j] = (q . k_j) * scale for j < n
                          float scale) noexcept nogil:
    # (decode, with _pv1: the streams are prefetched into L2 a little ahead, which the hardware prefetchers do
    # late at the start of each head's short runs: 124M q8_0 / q4_0 decode at depth 512 +3-7%, Zen 4)
    # as _scores4, for one row (decode): four key blocks at a time (four independent chains), then the
    # last one to three blocks one by one, so a step reads only the key blocks that hold its n keys
    cdef float a0[KVB]
    cdef float a1[KVB]
    cdef float a2[KVB]
    cdef float a3[KVB]
    cdef float qd
    cdef const float* kr
    cdef Py_ssize_t jb, j0, d, k, bs = D * KVB, nkb = (n + KVB - 1) // KVB
    jb = 0
    while jb + 4 <= nkb:
        for k in range(KVB):
            a0[k] = 0.0
            a1[k] = 0.0
            a2[k] = 0.0
            a3[k] = 0.0
        for d in range(D):
            qd = q[d]
            kr = kt + jb * bs + d * KVB
            # the next four key blocks' row d into L2 (past the last block: prefetches never fault)
            prefetch_l2(kr + 4 * bs)
            prefetch_l2(kr + 5 * bs)
            prefetch_l2(kr + 6 * bs)
            prefetch_l2(kr + 7 * bs)
            for k in range(KVB):
                a0[k] = madd(qd, kr[k], a0[k])
                a1[k] = madd(qd, kr[bs + k], a1[k])
                a2[k] = madd(qd, kr[2 * bs + k], a2[k])
                a3[k] = madd(qd, kr[3 * bs + k], a3[k])
        j0 = jb * KVB
        for k in range(KVB):
            s[j0 + k] = a0[k] * scale
            s[j0 + KVB + k] = a1[k] * scale
            s[j0 + 2 * KVB + k] = a2[k] * scale
            s[j0 + 3 * KVB + k] = a3[k] * scale
        jb = jb + 4
    while jb < nkb:
        for k in range(KVB):
            a0[k] = 0.0
        for d in range(D):
            qd = q[d]
            kr = kt + jb * bs + d * KVB
            for k in range(KVB):
                a0[k] = madd(qd, kr[k], a0[k])
        j0 = jb * KVB
        for k in range(KVB):
            s[j0 + k] = a0[k] * scale
        jb = jb + 1


cdef inline float _softmax_numerator(float* s, Py_ssize_t n) noexcept nogil:
    # s[:n] = exp(s[:n] - max(s[:n])); returns 1 / sum
    cdef float m = _max(s, n)
    _exp_shifted(s, n, m)
    return <float>(1.0 / _sum(s, n))


cdef void _pv_columns(const float* p, const float* v, Py_ssize_t D, Py_ssize_t d0, Py_ssize_t n, float inv,
                      float* o) noexcept nogil:
    # o[d] = inv * sum_j p[j] v[j, d] for the columns d0 <= d < D left over by the blocked kernels
    # (none for GPT-2's head_dim 64); one out-of-line copy serves both
    cdef Py_ssize_t d, j
    cdef float acc
    for d in range(d0, D):
        acc = 0.0
        for j in range(n):
            acc = madd(p[j], v[j * D + d], acc)
        o[d] = acc * inv


cdef inline void _pv4(const float* p,    # IN  [4, cap] unnormalised weights, zero past each row's keys
                      Py_ssize_t cap,
                      const float* v,    # IN  [cap, D] this head's values
                      Py_ssize_t D, Py_ssize_t n,
                      const float* inv,  # IN  [4] 1 / row sums
                      float* o,          # OUT [4, D] row stride ldo: o[r] = inv[r] * sum_j p[r, j] v_j
                      Py_ssize_t ldo) noexcept nogil:
    cdef float a0[DB]
    cdef float a1[DB]
    cdef float a2[DB]
    cdef float a3[DB]
    cdef float p0, p1, p2, p3, vv
    cdef const float* vr
    cdef Py_ssize_t db, d0, j, k, r, d_main = D - D % DB
    for db in range(d_main // DB):
        d0 = db * DB
        for k in range(DB):
            a0[k] = 0.0
            a1[k] = 0.0
            a2[k] = 0.0
            a3[k] = 0.0
        for j in range(n):
            p0 = p[j]
            p1 = p[cap + j]
            p2 = p[2 * cap + j]
            p3 = p[3 * cap + j]
            vr = v + j * D + d0
            for k in range(DB):
                vv = vr[k]
                a0[k] = madd(p0, vv, a0[k])
                a1[k] = madd(p1, vv, a1[k])
                a2[k] = madd(p2, vv, a2[k])
                a3[k] = madd(p3, vv, a3[k])
        for k in range(DB):
            o[d0 + k] = a0[k] * inv[0]
            o[ldo + d0 + k] = a1[k] * inv[1]
            o[2 * ldo + d0 + k] = a2[k] * inv[2]
            o[3 * ldo + d0 + k] = a3[k] * inv[3]
    for r in range(4):
        _pv_columns(p + r * cap, v, D, d_main, n, inv[r], o + r * ldo)


cdef inline void _pv1(const float* p,    # IN  [n] unnormalised weights
                      const float* v,    # IN  [cap, D] this head's values
                      Py_ssize_t D, Py_ssize_t n,
                      float inv,         # IN  1 / sum(p)
                      float* o) noexcept nogil:  # OUT [D]
    cdef float a[DB1]
    cdef float pj
    cdef const float* vr
    cdef Py_ssize_t db, d0, j, k, d_main = D - D % DB1
    for db in range(d_main // DB1):
        d0 = db * DB1
        for k in range(DB1):
            a[k] = 0.0
        for j in range(n):
            pj = p[j]
            vr = v + j * D + d0
            prefetch_l2(vr + 16 * D)          # the value row 16 ahead (its 64 columns: 4 lines) into L2
            prefetch_l2(vr + 16 * D + 16)
            prefetch_l2(vr + 16 * D + 32)
            prefetch_l2(vr + 16 * D + 48)
            for k in range(DB1):
                a[k] = madd(pj, vr[k], a[k])
        for k in range(DB1):
            o[d0 + k] = a[k] * inv
    _pv_columns(p, v, D, d_main, n, inv, o)


cdef inline void _attend_block(const float* q,   # IN  [R, D] row stride ldq: queries t0..t0+R-1
                               Py_ssize_t ldq,
                               const float* kt,  # IN  [cap / KVB, D, KVB]
                               const float* v,   # IN  [cap, D]
                               float* o,         # OUT [R, D] row stride ldo
                               Py_ssize_t ldo,
                               float* s,         # SCRATCH [QB, cap]
                               Py_ssize_t R,     # 1 or QB rows
                               Py_ssize_t n0,    # keys seen by the first row (n_past + t0 + 1)
                               Py_ssize_t D, Py_ssize_t cap, float scale) noexcept nogil:
    cdef float inv[QB]
    cdef Py_ssize_t r, j, n = n0 + R - 1       # keys seen by the last row
    if R == 1:
        _scores1(q, kt, cap, D, n, s, scale)
    else:
        _scores4(q, ldq, kt, cap, D, n, s, scale)
    for r in range(R):
        # row r sees n0 + r keys: the causal mask is zero weight for the rest of the block
        inv[r] = _softmax_numerator(s + r * cap, n0 + r)
        for j in range(n0 + r, n):
            s[r * cap + j] = 0.0
    if R == 1:
        _pv1(s, v, D, n, inv[0], o)
    else:
        _pv4(s, cap, v, D, n, inv, o, ldo)


cdef inline Py_ssize_t _n_blocks(Py_ssize_t T) noexcept nogil:
    # QB-row blocks, then the leftover rows one by one
    return T // QB + T % QB


cdef void attention(const float* qkv, Py_ssize_t ldq, const float* k_cache, const float* v_cache,
                    Py_ssize_t slot_stride, float* out, Py_ssize_t ldo, float* scratch,
                    const Segment* segs, Py_ssize_t n_seg, Py_ssize_t* task0,
                    Py_ssize_t H, Py_ssize_t D, Py_ssize_t cap, int n_threads) noexcept nogil:
    cdef Py_ssize_t s, task, local, h, blk, n_full, t0, R, lo, hi, mid, work = 0
    cdef const Segment* g
    cdef float scale = 1.0 / sqrtf(<float>D)
    # task0[s]: the first task of segment s; one task per (segment, head, block)
    task0[0] = 0
    for s in range(n_seg):
        task0[s + 1] = task0[s] + H * _n_blocks(segs[s].count)
        work += H * segs[s].count * (segs[s].pos0 + segs[s].count) * D
    # dynamic: later rows attend over more keys, and segments differ in length
    for task in prange(task0[n_seg], num_threads=n_threads, schedule="dynamic",
                       use_threads_if=work >= MIN_PAR_ATTN):
        lo = 0                                  # the segment holding this task: task0[lo] <= task < task0[lo+1]
        hi = n_seg - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if task0[mid] <= task:
                lo = mid
            else:
                hi = mid - 1
        g = &segs[lo]
        local = task - task0[lo]
        h = local // _n_blocks(g.count)
        blk = local % _n_blocks(g.count)
        n_full = g.count // QB
        if blk < n_full:
            t0 = blk * QB
            R = QB
        else:
            t0 = n_full * QB + (blk - n_full)
            R = 1
        _attend_block(qkv + (g.row0 + t0) * ldq + h * D, ldq,
                      k_cache + g.slot * slot_stride + h * D * cap,
                      v_cache + g.slot * slot_stride + h * cap * D,
                      out + (g.row0 + t0) * ldo + h * D, ldo, scratch + threadid() * (QB * cap),
                      R, g.pos0 + t0 + 1, D, cap, scale)


# ---------------------------------------------------------------------------------------- def wrappers
# Python entry points for tests: they allocate, check shapes, and call the kernels above.

def layernorm_py(const float[:, ::1] x not None, const float[::1] g not None, const float[::1] b not None,
                 float eps=1e-5, int n_threads=1):
    """Return layer_norm(x) * g + b over the last axis of a [T, C] float32 array, as a new array."""
    cdef Py_ssize_t T = x.shape[0], C = x.shape[1]
    if g.shape[0] != C or b.shape[0] != C:
        raise ValueError(f"g and b must have {C} entries, got {g.shape[0]} and {b.shape[0]}")
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    out = np.empty((T, C), dtype=np.float32)
    cdef float[:, ::1] o = out
    if T and C:
        with nogil:
            layernorm(&x[0, 0], C, &g[0], &b[0], &o[0, 0], C, T, C, eps, n_threads)
    return out


def embed_py(const Py_ssize_t[::1] ids not None, Py_ssize_t pos0, const float[:, ::1] wte not None,
             const float[:, ::1] wpe not None):
    """Return wte[ids] + wpe[pos0:pos0 + len(ids)] (checked here, unlike the kernels): the f32 row lookup,
    then add_positions over one segment, as the engine does."""
    cdef Py_ssize_t T = ids.shape[0], C = wte.shape[1], i
    cdef Segment seg
    if wpe.shape[1] != C:
        raise ValueError("wte and wpe widths differ")
    if pos0 < 0 or pos0 + T > wpe.shape[0]:
        raise ValueError("positions out of range")
    for i in range(T):
        if not 0 <= ids[i] < wte.shape[0]:
            raise ValueError(f"id {ids[i]} out of range")
    out = np.empty((T, C), dtype=np.float32)
    cdef float[:, ::1] o = out
    seg.slot, seg.row0, seg.count, seg.pos0 = 0, 0, T, pos0
    if T and C:
        for i in range(T):
            memcpy(&o[i, 0], &wte[ids[i], 0], C * sizeof(float))
        add_positions(&o[0, 0], C, &seg, 1, &wpe[0, 0], C)
    return out


def attention_py(const float[:, ::1] qkv not None, int n_head, Py_ssize_t n_past, Py_ssize_t n_ctx,
                 int n_threads=1):
    """Causal attention through the KV cache, for tests.

    qkv is [N, 3C] for positions 0..N-1: rows < n_past are stored in the cache first (as a prefill), then
    the remaining T = N - n_past rows are stored and attend. Returns the [T, C] attention output.
    """
    cdef Py_ssize_t N = qkv.shape[0], C, D, T
    if qkv.shape[1] % 3 or n_head < 1 or (qkv.shape[1] // 3) % n_head:
        raise ValueError("qkv must be [N, 3C] with C divisible by n_head")
    C = qkv.shape[1] // 3
    D = C // n_head
    T = N - n_past
    if not (0 <= n_past < N <= n_ctx) or n_threads < 1 or D == 0:
        raise ValueError("need 0 <= n_past < N <= n_ctx, n_threads >= 1 and C > 0")
    cdef Py_ssize_t cap = kv_capacity(n_ctx)
    kc = np.full((n_head, cap // KVB, D, KVB), np.nan, dtype=np.float32)   # NaN: a read past the causal limit shows
    vc = np.full((n_head, cap, D), np.nan, dtype=np.float32)
    scr = np.empty((n_threads, QB * cap), dtype=np.float32)
    out = np.empty((T, C), dtype=np.float32)
    cdef float[:, :, :, ::1] k = kc
    cdef float[:, :, ::1] v = vc
    cdef float[:, ::1] s = scr, o = out
    cdef Segment seg
    cdef Py_ssize_t task0[2]
    with nogil:
        if n_past:
            _kv_store1(&qkv[0, 0], 3 * C, &k[0, 0, 0, 0], &v[0, 0, 0], n_past, 0, n_head, D, cap)
        seg.slot, seg.row0, seg.count, seg.pos0 = 0, 0, T, n_past
        kv_store(&qkv[n_past, 0], 3 * C, &k[0, 0, 0, 0], &v[0, 0, 0], 0, &seg, 1, n_head, D, cap, 1)
        attention(&qkv[n_past, 0], 3 * C, &k[0, 0, 0, 0], &v[0, 0, 0], 0, &o[0, 0], C, &s[0, 0],
                  &seg, 1, task0, n_head, D, cap, n_threads)
    return out

