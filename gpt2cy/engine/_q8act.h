/* gpt2cy/engine/_q8act.h: q8_0 / q4_0 weights times 8-bit activations, in integer dot products.
 *
 * Our own code.  The activation row x [K] is quantized per block of 32 (the weights' blocks) to
 * qx = round_half_away(x / dx), dx = amax / 127 kept in float32 (ggml keeps it in fp16; float32 loses less),
 * and each block's product with a weight block is an exact integer dot.  That is 8 bits a weight and 8 an
 * activation through one instruction per 32 (256-bit) or 64 (512-bit) products (AVX-VNNI / AVX512-VNNI
 * vpdpbusd, else AVX2's vpmaddubsw + vpmaddwd) instead of widening every weight to a float.  llama.cpp's CPU
 * kernels for these types quantize activations the same way.
 *
 * The arithmetic, the same bits on every build with FMA (the scalar loop, qa_dot_scalar, is the
 * specification):
 *   i_b = sum over the block's 32 k of w[b, k] * qx[b, k]        (exact int32: |i_b| <= 32 * 128 * 127)
 *   s_b = d_w[b] * dx[b]                                         (one float32 rounding)
 *   acc = fma((float)i_b, s_b, acc) over b = 0, 1, ...; out = acc (one chain per output; (float)i_b is exact)
 * One output element is one such computation whatever M, the thread count or the row's place in a batch,
 * so a decode row equals the same row inside a prefill.  Because each block's integer is whole, any exact
 * integer unit gives the same bits (an AMX tile product would too).
 *
 * The SIMD kernels put one output in each lane (16 at 512 bits, 8 at 256): a group of QA_W weight rows is
 * first repacked, block by block, so that vector j holds bytes 4j..4j+3 of every row's block (a dword
 * transpose, the layout vpdpbusd wants), with the rows' scales as floats beside it (qa_pack_group).  The
 * tile then takes each activation dword as a broadcast, and the scale multiply and the fused multiply-add
 * run once per block for QA_W outputs at a time instead of once per output.
 *
 * A NaN or infinite activation makes dx NaN, so the block's products are NaN and the logits say so (the
 * generation loop's finiteness check then names the problem) instead of quietly rounding it away.
 */
#ifndef GPT2CY_Q8ACT_H
#define GPT2CY_Q8ACT_H

#include "_lowp.h"
#include "_amx.h"

#if LP_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
#define QA_W 16             /* outputs per vector */
#define QA_MR 8             /* activation rows per tile: 8 accumulators + 8 weight vectors of 32 registers */
#define QA_VNNI 1
#elif LP_AVX2
#define QA_W 8
#define QA_MR 4             /* AVX2 has 16 registers */
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define QA_VNNI 1
#else
#define QA_VNNI 0
#endif
#else
#define QA_W 8
#define QA_MR 4
#define QA_VNNI 0
#endif

#if LP_AVX2 && QA_VNNI
#define QA_ISA "vnni"
#elif LP_AVX2
#define QA_ISA "avx2"
#else
#define QA_ISA "scalar"
#endif

/* One packed block of a group: QA_ZV weight vectors (8; without VNNI q8_0 also keeps |w| in 8 more), then
 * QA_W float scales. */
#if LP_AVX2 && !QA_VNNI
#define QA_ZV 16
#else
#define QA_ZV 8
#endif
#if LP_AVX2
#define QA_BLK_BYTES ((QA_ZV + 1) * QA_W * 4)
#define QA_KB 32            /* blocks per packed slice: 18 KB, so the slice stays in L1 while the rows use it */
#ifndef QA_KB_AMX
#define QA_KB_AMX 16        /* through AMX: 9 KB, beside 64 rows' 16 KB of activation tiles */
#endif
#else
#define QA_BLK_BYTES 0      /* the scalar kernel reads the blocks where they lie, in one pass */
#define QA_KB 0
#define QA_KB_AMX 0
#endif

/* What the kernels add to each block's integer for the offset they multiply by: VNNI multiplies unsigned
 * bytes by signed ones, so q8_0's int8 weights go in as w + 128 and q4_0's as their nibbles (w + 8); the
 * correction is -128 (or -8) times the block's sum of qx.  AVX2's q8_0 path multiplies |w| by qx with w's
 * sign, exactly, and needs none. */
static inline int32_t qa_offset(int qtype)
{
    if (qtype == LP_Q4)
        return 8;
    return (LP_AVX2 && QA_VNNI) ? 128 : 0;
}

#if LP_AVX2
/* roundf (halves away from zero) of v, |v| < 2^23, lane by lane: t = trunc(v) and v - t are exact, and
 * |v - t| >= 0.5 moves t one step away from zero. */
#if defined(__AVX512F__)
static inline __m512 qa_round_away16(__m512 v)
{
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, _mm512_set1_ps(-0.0f)));
    __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm512_mask_add_ps(t, up, t, one);
}
#endif
static inline __m256 qa_round_away8(__m256 v)
{
    __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    __m256 up = _mm256_cmp_ps(r, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(_mm256_set1_ps(1.0f), sign)));
}
#endif

/* One row of K activations (K a multiple of 32) -> qx [K] int8, dx [K / 32] float scales and cs [K / 32]
 * = -offset * (sum of the block's qx), the corrections above.  The SIMD forms compute the same values as the
 * scalar loop after them (amax is exact, and x * id, the rounding and the clamp are lane by lane). */
static inline void qa_quantize_row(const float *x, ptrdiff_t K, int8_t *qx, float *dx, int32_t *cs,
                                   int32_t offset)
{
#if LP_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
    for (ptrdiff_t b = 0; b < K / LP_QK; b++) {
        const float *xb = x + b * LP_QK;
        __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
        __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1), big = _mm512_set1_ps(3.402823466e38f);
        __mmask16 ok = _mm512_cmp_ps_mask(a0, big, _CMP_LE_OQ) & _mm512_cmp_ps_mask(a1, big, _CMP_LE_OQ);
        if (ok != 0xFFFF) {                                   /* NaN or inf */
            dx[b] = NAN;
            memset(qx + b * LP_QK, 0, LP_QK);
            cs[b] = 0;
            continue;
        }
        float d = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1)) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        dx[b] = d;
        __m512 vid = _mm512_set1_ps(id), lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
        __m512i q0 = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(qa_round_away16(_mm512_mul_ps(x0, vid)), lim), nlim));
        __m512i q1 = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(qa_round_away16(_mm512_mul_ps(x1, vid)), lim), nlim));
        _mm_storeu_si128((__m128i *)(qx + b * LP_QK), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(qx + b * LP_QK + 16), _mm512_cvtepi32_epi8(q1));
        cs[b] = -offset * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
#elif LP_AVX2
    for (ptrdiff_t b = 0; b < K / LP_QK; b++) {
        const float *xb = x + b * LP_QK;
        __m256 v[4], amax = _mm256_setzero_ps(), good = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), big = _mm256_set1_ps(3.402823466e38f);
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            __m256 a = _mm256_and_ps(v[i], absm);
            good = _mm256_and_ps(good, _mm256_cmp_ps(a, big, _CMP_LE_OQ));
            amax = _mm256_max_ps(amax, a);
        }
        if (_mm256_movemask_ps(good) != 0xFF) {
            dx[b] = NAN;
            memset(qx + b * LP_QK, 0, LP_QK);
            cs[b] = 0;
            continue;
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float d = _mm_cvtss_f32(m4) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        dx[b] = d;
        __m256 vid = _mm256_set1_ps(id), lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
        __m256i q[4];
        for (int i = 0; i < 4; i++)
            q[i] = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(qa_round_away8(_mm256_mul_ps(v[i], vid)), lim), nlim));
        /* int32 -> int8 (|q| <= 127: the saturating packs are exact), back in order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qx + b * LP_QK), p);
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        cs[b] = -offset * _mm_cvtsi128_si32(s4);
    }
#else
    for (ptrdiff_t b = 0; b < K / LP_QK; b++) {
        const float *xb = x + b * LP_QK;
        float amax = 0.0f;
        int bad = 0;
        int32_t sum = 0;
        for (int j = 0; j < LP_QK; j++) {
            float a = fabsf(xb[j]);
            bad |= !(a <= 3.402823466e38f);                 /* NaN or inf */
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        dx[b] = bad ? NAN : d;
        for (int j = 0; j < LP_QK; j++) {
            float q = bad ? 0.0f : roundf(xb[j] * id);      /* half away from zero, |q| <= 127 */
            int8_t v = (int8_t)(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
            qx[b * LP_QK + j] = v;
            sum += v;
        }
        cs[b] = -offset * sum;
    }
#endif
}

/* The 32 signed weights of block `blk` (q8_0: as stored; q4_0: nibble - 8) into w[32]. */
static inline void qa_block_weights(int qtype, const uint8_t *blk, int8_t *w)
{
    if (qtype == LP_Q4) {
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)((blk[2 + j] & 0x0F) - 8);
            w[j + 16] = (int8_t)((blk[2 + j] >> 4) - 8);
        }
    } else {
        memcpy(w, blk + 2, LP_QK);
    }
}

/* The specification: *out = the product of one activation row (qx [K], dx [K / 32]) with one weight row. */
static inline void qa_dot_scalar(int qtype, ptrdiff_t K, const int8_t *qx, const float *dx, const uint8_t *w,
                                 float *out)
{
    ptrdiff_t nb = K / LP_QK, bb = qtype == LP_Q4 ? LP_Q4_BYTES : LP_Q8_BYTES;
    float acc = 0.0f;
    int8_t wq[LP_QK];
    for (ptrdiff_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bb;
        const int8_t *xb = qx + b * LP_QK;
        int32_t i = 0;
        qa_block_weights(qtype, blk, wq);
        for (int k = 0; k < LP_QK; k++)
            i += (int32_t)wq[k] * (int32_t)xb[k];
        acc = GPT2CY_MADD((float)i, lp_q8_scale(blk) * dx[b], acc);
    }
    *out = acc;
}

/* The next group's rows follow this group's in memory: while packing block b, fetch the same share of the
 * next group's bytes, so a decode step does not wait on DRAM at every group's start (the hardware prefetcher
 * alone left a one-row decode at 40% of a thread's bandwidth).  Prefetches never fault past the end.
 * hint: where the lines go.  A 16-row group (512-bit) is 52 KB of q8_0 ahead for GPT-2's 768 inputs, more
 * than an L1 holds, so those go to L2 (T1: on Zen 4 a one-row q8_0 / q4_0 product from DRAM at 2 threads went
 * from 18.6-22.1 / 19.4-21.1 to 27.0-34.9 / 24.4-32.0 GB/s, five alternations; into L1 the lines were evicted
 * before use); the 8-row (256-bit) groups are half that and keep T0 (what Zen 3 was measured with; T1 there
 * is untried). */
#define QA_PREFETCH_NEXT(p, bytes, hint) do {                                        \
        for (int pf_ = 0; pf_ < (bytes); pf_ += 64)                                 \
            _mm_prefetch((p) + pf_, hint);                                          \
        (p) += (bytes);                                                             \
    } while (0)

static inline int32_t qa_load4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

#if QA_W == 16 && LP_AVX2
/* ---------------------------------------------------------------------------------------------- 512-bit */

/* Four fp16 scales (the first two bytes at a, b, c, d) in one general register, a's lowest: 16 scales go
 * into a vector as four of these (GCC's vpinsrw chain for 16 scalar loads kept the shuffle port busy in
 * qa_direct16; in the repack, where the shuffles of the transpose dominate, it changed nothing). */
static inline uint64_t qa_h4(const uint8_t *a, const uint8_t *b, const uint8_t *c, const uint8_t *d)
{
    uint16_t h[4];
    memcpy(&h[0], a, 2);
    memcpy(&h[1], b, 2);
    memcpy(&h[2], c, 2);
    memcpy(&h[3], d, 2);
    return (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
}

/* a, b, c, d: within each 128-bit lane, the 4x4 transpose of their dwords (t[i] lane = dword i of a, b, c, d) */
static inline void qa_t4x4(__m512i a, __m512i b, __m512i c, __m512i d, __m512i *t)
{
    __m512i t0 = _mm512_unpacklo_epi32(a, b), t1 = _mm512_unpackhi_epi32(a, b);
    __m512i t2 = _mm512_unpacklo_epi32(c, d), t3 = _mm512_unpackhi_epi32(c, d);
    t[0] = _mm512_unpacklo_epi64(t0, t2);
    t[1] = _mm512_unpackhi_epi64(t0, t2);
    t[2] = _mm512_unpacklo_epi64(t1, t3);
    t[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Weight rows w + n * ldw, n < nvalid (<= QA_W; the rest repeat row 0, whose outputs nobody reads), blocks
 * b0..b1-1 -> dst [b1 - b0][QA_BLK_BYTES], 64-byte aligned.  sgn: the weights as signed bytes (w itself, for
 * AMX's TDPBSSD) instead of VNNI's unsigned w + offset. */
static inline void qa_pack_group(int qtype, ptrdiff_t b0, ptrdiff_t b1, const uint8_t *w, ptrdiff_t ldw,
                                 int nvalid, int sgn, uint8_t *dst)
{
    const uint8_t *row[16];
    for (int n = 0; n < 16; n++)
        row[n] = w + (n < nvalid ? n : 0) * ldw;
    ptrdiff_t bb = qtype == LP_Q4 ? LP_Q4_BYTES : LP_Q8_BYTES;
    const char *next = (const char *)(w + 16 * ldw) + b0 * 16 * bb;
    for (ptrdiff_t b = b0; b < b1; b++, dst += QA_BLK_BYTES) {
        ptrdiff_t o = b * bb;
        if (!sgn)                 /* AMX runs prefills: the weights are reused, a prefetch only queues */
            QA_PREFETCH_NEXT(next, 16 * bb, _MM_HINT_T1);
        /* the 16 fp16 scales (plain loads: a vpgatherdd made the whole decode step slower) */
        uint16_t hs[16];
        for (int n = 0; n < 16; n++)
            memcpy(&hs[n], row[n] + o, 2);
        _mm512_store_ps((float *)(dst + QA_ZV * 64), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)hs)));
        __m512i z[8];
        if (qtype == LP_Q4) {
            /* R_g lanes = rows g, 4 + g, 8 + g, 12 + g (16 bytes each); transposed: P_t = dword t of rows 0..15 */
            __m512i r[4], p[4];
            for (int q = 0; q < 4; q++) {
                __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(row[q] + o + 2)));
                v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(row[4 + q] + o + 2)), 1);
                v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(row[8 + q] + o + 2)), 2);
                r[q] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(row[12 + q] + o + 2)), 3);
            }
            qa_t4x4(r[0], r[1], r[2], r[3], p);
            __m512i m = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(sgn ? 8 : 0);
            for (int t = 0; t < 4; t++) {
                z[t] = _mm512_sub_epi8(_mm512_and_si512(p[t], m), eight);   /* weights 4t..4t+3 (low nibbles) */
                z[4 + t] = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p[t], 4), m), eight); /* 16 + 4t.. */
            }
        } else {
            /* R_sg = row 8s + g (low half), row 8s + 4 + g (high half); after the in-lane transposes lane 0 of
             * T_st is dword t of rows 8s..8s+3, lane 1 dword 4 + t, lanes 2, 3 the same of rows 8s+4..8s+7 */
            __m512i t[2][4];
            for (int s = 0; s < 2; s++) {
                __m512i r[4];
                for (int q = 0; q < 4; q++)
                    r[q] = _mm512_inserti64x4(
                        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(row[8 * s + q] + o + 2))),
                        _mm256_loadu_si256((const __m256i *)(row[8 * s + 4 + q] + o + 2)), 1);
                qa_t4x4(r[0], r[1], r[2], r[3], t[s]);
            }
            __m512i x80 = _mm512_set1_epi8(sgn ? 0 : (char)0x80);
            for (int q = 0; q < 4; q++) {
                z[q] = _mm512_xor_si512(_mm512_shuffle_i32x4(t[0][q], t[1][q], 0x88), x80);
                z[4 + q] = _mm512_xor_si512(_mm512_shuffle_i32x4(t[0][q], t[1][q], 0xDD), x80);
            }
        }
        for (int j = 0; j < 8; j++)
            _mm512_store_si512((void *)(dst + 64 * j), z[j]);
    }
}

/* i += z (unsigned bytes) . the dword at p (signed bytes) broadcast to every lane.  GCC does not fold
 * _mm512_set1_epi32 of a load into vpdpbusd's {1to16} operand (it emits a vpbroadcastd per product), so
 * with GCC's assembler the broadcast is written out; the integer is the same either way. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define QA_DPBUSD_BCAST(i, z, p) \
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(i) : "v"(z), "m"(*(const int32_t *)(const void *)(p)))
#else
#define QA_DPBUSD_BCAST(i, z, p) ((i) = _mm512_dpbusd_epi32((i), (z), _mm512_set1_epi32(qa_load4(p))))
#endif

/* out[m * ldo + n], m < MR, n < QA_W: activation rows qx + m * K (dx, cs + m * nb) against a packed group.
 * Inlined with a constant MR (qa_tile_rows' switch), so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void qa_tile(int MR, ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1,
                                                          const int8_t *qx, const float *dx, const int32_t *cs,
                                                          const uint8_t *pk, float *out, ptrdiff_t ldo)
{
    ptrdiff_t nb = K / LP_QK;
    __m512 acc[QA_MR];
    for (int m = 0; m < MR; m++)
        acc[m] = b0 ? _mm512_loadu_ps(out + m * ldo) : _mm512_setzero_ps();
    for (ptrdiff_t b = b0; b < b1; b++, pk += QA_BLK_BYTES) {
        __m512i z[8];
        for (int j = 0; j < 8; j++)
            z[j] = _mm512_load_si512((const void *)(pk + 64 * j));
        __m512 sv = _mm512_load_ps((const float *)(pk + QA_ZV * 64));
        for (int m = 0; m < MR; m++) {
            const int8_t *xb = qx + m * K + b * LP_QK;
            __m512i i = _mm512_set1_epi32(cs[m * nb + b]);
            for (int j = 0; j < 8; j++)
                QA_DPBUSD_BCAST(i, z[j], xb + 4 * j);
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(sv, _mm512_set1_ps(dx[m * nb + b])),
                                     acc[m]);
        }
    }
    for (int m = 0; m < MR; m++)
        _mm512_storeu_ps(out + m * ldo, acc[m]);
}

/* One row of x (a decode step) against 16 weight rows, without the repack: each row's block is multiplied
 * where it lies and the 16 rows' int32 partials are summed in a transposing tree (integer adds: the block's
 * exact integer whatever the order), so the block's 16 integers land one per lane, in the fixed lane order
 * below; the scales are read in that order, and the outputs put back in row order once, after the last
 * block.  The same integers and the same chain per output as qa_tile, so the same bits.  Against the repack
 * and a one-row tile (Zen 4, one thread, a 768 x 3072 matrix from cache): q8_0 29.1 -> 37.9 GB/s, q4_0
 * 16.0 -> 21.8; the whole 124M decode step 8-12% faster (q8_0) and 7% (q4_0), rounds alternating.
 *   qx, dx, cs: the row's blocks;  w: 16 rows, row stride ldw;  out: [16] (b0 > 0: the chains go on) */
#define QA_DIRECT16 1
static inline void qa_direct16(int qtype, ptrdiff_t b0, ptrdiff_t b1, const int8_t *qx, const float *dx,
                               const int32_t *cs, const uint8_t *w, ptrdiff_t ldw, float *out)
{
    /* lane l holds row order[l] (`rows` as a vector, `lanes` its inverse): for q8_0 what summing dwords of
     * pairs of rows, then 64-bit, then 128-bit halves leaves; for q4_0 (four rows a vector, one per 128-bit
     * lane) a 4x4 transpose, its own inverse */
    const int q4 = qtype == LP_Q4;
    static const int order4[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    static const int order8[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
    const int *order = q4 ? order4 : order8;
    const __m512i rows = _mm512_loadu_si512((const void *)order);
    const __m512i lanes = q4 ? rows : _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    ptrdiff_t bb = q4 ? LP_Q4_BYTES : LP_Q8_BYTES;
    const char *next = (const char *)(w + 16 * ldw) + b0 * 16 * bb;
    __m512 acc = b0 ? _mm512_permutexvar_ps(rows, _mm512_loadu_ps(out)) : _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (ptrdiff_t b = b0; b < b1; b++) {
        const uint8_t *r = w + b * bb;
#define QA_ROW(n) (r + (n) * ldw)
        QA_PREFETCH_NEXT(next, 16 * bb, _MM_HINT_T1);
        /* the 16 fp16 scales, four to a general register (qa_h4: q8_0 36.2 -> 37.9, q4_0 20.6 -> 21.8 GB/s;
         * a vpgatherdd was slower than either) */
        uint64_t h4[4];
        for (int q = 0; q < 4; q++)
            h4[q] = qa_h4(QA_ROW(order[4 * q]), QA_ROW(order[4 * q + 1]), QA_ROW(order[4 * q + 2]),
                          QA_ROW(order[4 * q + 3]));
        __m512 sv = _mm512_cvtph_ps(_mm256_set_epi64x((long long)h4[3], (long long)h4[2], (long long)h4[1],
                                                      (long long)h4[0]));
        __m512i it;
        if (q4) {
            /* vector v: rows 4v..4v+3, one per 128-bit lane; low nibbles times x[0..15], high times x[16..31] */
            __m512i xl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(qx + b * LP_QK)));
            __m512i xh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(qx + b * LP_QK + 16)));
            __m512i m = _mm512_set1_epi8(0x0F), a[4];
            for (int v = 0; v < 4; v++) {
                __m512i t = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(QA_ROW(4 * v) + 2)));
                t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(QA_ROW(4 * v + 1) + 2)), 1);
                t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(QA_ROW(4 * v + 2) + 2)), 2);
                t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(QA_ROW(4 * v + 3) + 2)), 3);
                a[v] = _mm512_dpbusd_epi32(zero, _mm512_and_si512(t, m), xl);
                a[v] = _mm512_dpbusd_epi32(a[v], _mm512_and_si512(_mm512_srli_epi16(t, 4), m), xh);
            }
            __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
            __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
            it = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        } else {
            /* vector v: row 2v in the low half, 2v + 1 in the high; the weights as w + 128 (unsigned) */
            __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qx + b * LP_QK)));
            __m512i x80 = _mm512_set1_epi8((char)0x80), a[8], s[4], u[2];
            for (int v = 0; v < 8; v++) {
                __m512i t = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(QA_ROW(2 * v) + 2))),
                    _mm256_loadu_si256((const __m256i *)(QA_ROW(2 * v + 1) + 2)), 1);
                a[v] = _mm512_dpbusd_epi32(zero, _mm512_xor_si512(t, x80), xv);
            }
            for (int v = 0; v < 4; v++)   /* per 128-bit lane: each row's 4 dwords -> 2 */
                s[v] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * v], a[2 * v + 1]),
                                        _mm512_unpackhi_epi32(a[2 * v], a[2 * v + 1]));
            for (int v = 0; v < 2; v++)   /* -> 1: lane k of u[v] = the 128-bit lane k sums of four rows' vectors */
                u[v] = _mm512_add_epi32(_mm512_unpacklo_epi64(s[2 * v], s[2 * v + 1]),
                                        _mm512_unpackhi_epi64(s[2 * v], s[2 * v + 1]));
            /* a row's 8 dwords were two 128-bit lanes: add lanes 0 + 1 and 2 + 3 */
            it = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xDD));
        }
        it = _mm512_add_epi32(it, _mm512_set1_epi32(cs[b]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(it), _mm512_mul_ps(sv, _mm512_set1_ps(dx[b])), acc);
    }
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(lanes, acc));
#undef QA_ROW
}

#if QA_AMX_BUILD
#define QA_AMX 1
#define QA_AMX_MR 16        /* activation rows per tile product; qx holds whole tiles of rows (zero padded) */
#define QA_AMX_MIN_ROWS 17  /* fewer rows (a decode step of up to 16 sequences): the VNNI tile, the same bits; there
                             * the weights stream from memory and the tiles' fixed cost per block lost (0.6-1.0x
                             * at 2-16 rows) */
#define QA_AMX_TILE_BYTES (QA_AMX_MR * LP_QK)
#ifndef QA_AMX_AHEAD
#define QA_AMX_AHEAD 2      /* blocks (even) */
#endif
#define QA_AMX_RING (QA_AMX_AHEAD + 2)

/* One block's epilogue: acc[m] = fma((float)i[m], s_w * dx[m], acc[m]) from the stored int32 tile. */
#define QA_AMX_EPI(j) do {                                                                           \
        const int32_t *i_ = ring + 256 * ((j) % QA_AMX_RING);                                                  \
        __m512 sv_ = _mm512_load_ps((const float *)(pk + (j) * QA_BLK_BYTES + QA_ZV * 64));          \
        for (int m = 0; m < MR; m++)                                                                 \
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512((const void *)(i_ + 16 * m))), \
                                     _mm512_mul_ps(sv_, _mm512_set1_ps(dx[m * nb + b0 + (j)])), acc[m]); \
    } while (0)
/* Block j's integers into ring slot j % QA_AMX_RING, through tiles A, B, C (a set alternates with the next block's, so
 * one block's loads overlap the other's product). */
#define QA_AMX_BLOCK(A, B, C, j) do {                                                                \
        QA_AMX_LOAD(A, qt + (b0 + (j)) * QA_AMX_TILE_BYTES, LP_QK);                                  \
        QA_AMX_LOAD(B, pk + (j) * QA_BLK_BYTES, 64);                                                 \
        QA_AMX_ZERO(C);                                                                              \
        QA_AMX_DPBSSD(C, A, B);                                                                      \
        QA_AMX_STORE(C, ring + 256 * ((j) % QA_AMX_RING), 64);                                                 \
    } while (0)

/* qa_tile's products through AMX: the same integers (TDPBSSD on qx and the signed packed weights, exact),
 * the same chains, so the same bits.  A tile store reaches the vector loads only once it has retired, so
 * the products run QA_AMX_AHEAD blocks ahead of the epilogues that read them. */
static inline __attribute__((always_inline)) void qa_amx_tile(int MR, ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1,
                                                              const int8_t *qt, const float *dx,
                                                              const uint8_t *pk, float *out, ptrdiff_t ldo)
{
    ptrdiff_t nb = K / LP_QK, n = b1 - b0;
    int32_t ring[QA_AMX_RING * 256] __attribute__((aligned(64)));
    __m512 acc[QA_AMX_MR];
    for (int m = 0; m < MR; m++)
        acc[m] = b0 ? _mm512_loadu_ps(out + m * ldo) : _mm512_setzero_ps();
    for (ptrdiff_t j = 0; j < QA_AMX_AHEAD && j < n; j += 2) {
        QA_AMX_BLOCK(0, 2, 4, j);
        if (j + 1 < n)
            QA_AMX_BLOCK(1, 3, 5, j + 1);
    }
    for (ptrdiff_t j = 0; j < n; j += 2) {
        if (j + QA_AMX_AHEAD < n)
            QA_AMX_BLOCK(0, 2, 4, j + QA_AMX_AHEAD);
        QA_AMX_EPI(j);
        if (j + 1 < n) {
            if (j + 1 + QA_AMX_AHEAD < n)
                QA_AMX_BLOCK(1, 3, 5, j + 1 + QA_AMX_AHEAD);
            QA_AMX_EPI(j + 1);
        }
    }
    for (int m = 0; m < MR; m++)
        _mm512_storeu_ps(out + m * ldo, acc[m]);
}
#undef QA_AMX_BLOCK
#undef QA_AMX_EPI

/* The activations as AMX reads them: qx [M, K] (M a multiple of QA_AMX_MR, the rows past the real ones
 * zero) -> qt, each tile of QA_AMX_MR rows and each block its 16 x 32 bytes in a row (block b of tile r at
 * qt + (r * K / 32 + b) * QA_AMX_TILE_BYTES): a tile load then reads 8 whole cache lines instead of half of
 * 16 lines K bytes apart (the strided loads were the kernel's largest stall). */
static inline void qa_amx_layout(const int8_t *qx, ptrdiff_t M, ptrdiff_t K, int8_t *qt)
{
    ptrdiff_t nb = K / LP_QK;
    for (ptrdiff_t r = 0; r < M / QA_AMX_MR; r++)
        for (ptrdiff_t b = 0; b < nb; b++)
            for (int i = 0; i < QA_AMX_MR; i++)
                memcpy(qt + (r * nb + b) * QA_AMX_TILE_BYTES + i * LP_QK, qx + (r * QA_AMX_MR + i) * K + b * LP_QK,
                       LP_QK);
}

/* qa_tile_rows through AMX: mr <= QA_AMX_MR rows of one tile of qt (qa_amx_layout; qt points at the tile).
 * The caller has loaded the tile configuration on this thread (QA_AMX_BEGIN) and packed with sgn = 1. */
static inline void qa_amx_tile_rows(ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t mr, const int8_t *qt,
                                    const float *dx, const uint8_t *pk, float *out, ptrdiff_t ldo)
{
#define QA_CASE(M) case M: qa_amx_tile(M, K, b0, b1, qt, dx, pk, out, ldo); break;
    switch ((int)mr) {
    QA_CASE(1) QA_CASE(2) QA_CASE(3) QA_CASE(4) QA_CASE(5) QA_CASE(6) QA_CASE(7) QA_CASE(8)
    QA_CASE(9) QA_CASE(10) QA_CASE(11) QA_CASE(12) QA_CASE(13) QA_CASE(14) QA_CASE(15) QA_CASE(16)
    default: break;
    }
#undef QA_CASE
}
#endif /* QA_AMX_BUILD */

#elif LP_AVX2
/* ---------------------------------------------------------------------------------------------- 256-bit */

static inline void qa_t4x4(__m256i a, __m256i b, __m256i c, __m256i d, __m256i *t)
{
    __m256i t0 = _mm256_unpacklo_epi32(a, b), t1 = _mm256_unpackhi_epi32(a, b);
    __m256i t2 = _mm256_unpacklo_epi32(c, d), t3 = _mm256_unpackhi_epi32(c, d);
    t[0] = _mm256_unpacklo_epi64(t0, t2);
    t[1] = _mm256_unpackhi_epi64(t0, t2);
    t[2] = _mm256_unpacklo_epi64(t1, t3);
    t[3] = _mm256_unpackhi_epi64(t1, t3);
}

static inline void qa_pack_group(int qtype, ptrdiff_t b0, ptrdiff_t b1, const uint8_t *w, ptrdiff_t ldw,
                                 int nvalid, int sgn, uint8_t *dst)
{
    (void)sgn;                /* AMX runs only in the 512-bit build */
    const uint8_t *row[8];
    for (int n = 0; n < 8; n++)
        row[n] = w + (n < nvalid ? n : 0) * ldw;
    ptrdiff_t bb = qtype == LP_Q4 ? LP_Q4_BYTES : LP_Q8_BYTES;
    const char *next = (const char *)(w + 8 * ldw) + b0 * 8 * bb;
    for (ptrdiff_t b = b0; b < b1; b++, dst += QA_BLK_BYTES) {
        ptrdiff_t o = b * bb;
        QA_PREFETCH_NEXT(next, 8 * bb, _MM_HINT_T0);
        uint16_t hs[8];
        for (int n = 0; n < 8; n++)
            memcpy(&hs[n], row[n] + o, 2);
        _mm256_store_ps((float *)(dst + QA_ZV * 32), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hs)));
        __m256i z[8];
        if (qtype == LP_Q4) {
            __m256i r[4], p[4];
            for (int q = 0; q < 4; q++)
                r[q] = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(row[4 + q] + o + 2)),
                                        _mm_loadu_si128((const __m128i *)(row[q] + o + 2)));
            qa_t4x4(r[0], r[1], r[2], r[3], p);
            __m256i m = _mm256_set1_epi8(0x0F);
            for (int t = 0; t < 4; t++) {
                z[t] = _mm256_and_si256(p[t], m);
                z[4 + t] = _mm256_and_si256(_mm256_srli_epi16(p[t], 4), m);
            }
        } else {
            /* T_st: lane 0 dword t of rows 4s..4s+3, lane 1 dword 4 + t */
            __m256i t[2][4];
            for (int s = 0; s < 2; s++)
                qa_t4x4(_mm256_loadu_si256((const __m256i *)(row[4 * s] + o + 2)),
                        _mm256_loadu_si256((const __m256i *)(row[4 * s + 1] + o + 2)),
                        _mm256_loadu_si256((const __m256i *)(row[4 * s + 2] + o + 2)),
                        _mm256_loadu_si256((const __m256i *)(row[4 * s + 3] + o + 2)), t[s]);
            for (int q = 0; q < 4; q++) {
                z[q] = _mm256_permute2x128_si256(t[0][q], t[1][q], 0x20);
                z[4 + q] = _mm256_permute2x128_si256(t[0][q], t[1][q], 0x31);
            }
#if QA_VNNI
            for (int j = 0; j < 8; j++)
                z[j] = _mm256_xor_si256(z[j], _mm256_set1_epi8((char)0x80));
#else
            for (int j = 0; j < 8; j++)
                _mm256_store_si256((__m256i *)(dst + 32 * (8 + j)), _mm256_abs_epi8(z[j]));
#endif
        }
        for (int j = 0; j < 8; j++)
            _mm256_store_si256((__m256i *)(dst + 32 * j), z[j]);
    }
}

static inline __m256i qa_dot4(int qtype, __m256i i, const uint8_t *pk, int j, int32_t x4)
{
    __m256i z = _mm256_load_si256((const __m256i *)(pk + 32 * j)), x = _mm256_set1_epi32(x4);
#if QA_VNNI
    (void)qtype;
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(i, z, x);
#else
    return _mm256_dpbusd_avx_epi32(i, z, x);
#endif
#else
    __m256i ones = _mm256_set1_epi16(1);
    if (qtype == LP_Q4)                       /* nibble * x: pairs at most 2 * 15 * 127, no saturation */
        return _mm256_add_epi32(i, _mm256_madd_epi16(_mm256_maddubs_epi16(z, x), ones));
    __m256i a = _mm256_load_si256((const __m256i *)(pk + 32 * (8 + j)));   /* |w| * (x with w's sign) */
    return _mm256_add_epi32(i, _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_sign_epi8(x, z)), ones));
#endif
}

static inline __attribute__((always_inline)) void qa_tile(int qtype, int MR, ptrdiff_t K, ptrdiff_t b0,
                                                          ptrdiff_t b1, const int8_t *qx, const float *dx,
                                                          const int32_t *cs, const uint8_t *pk, float *out,
                                                          ptrdiff_t ldo)
{
    ptrdiff_t nb = K / LP_QK;
    __m256 acc[QA_MR];
    for (int m = 0; m < MR; m++)
        acc[m] = b0 ? _mm256_loadu_ps(out + m * ldo) : _mm256_setzero_ps();
    for (ptrdiff_t b = b0; b < b1; b++, pk += QA_BLK_BYTES) {
        __m256 sv = _mm256_load_ps((const float *)(pk + QA_ZV * 32));
        for (int m = 0; m < MR; m++) {
            const int8_t *xb = qx + m * K + b * LP_QK;
            __m256i i = _mm256_set1_epi32(cs[m * nb + b]);
            for (int j = 0; j < 8; j++)
                i = qa_dot4(qtype, i, pk, j, qa_load4(xb + 4 * j));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(sv, _mm256_set1_ps(dx[m * nb + b])),
                                     acc[m]);
        }
    }
    for (int m = 0; m < MR; m++)
        _mm256_storeu_ps(out + m * ldo, acc[m]);
}

#if !QA_VNNI
/* For one row of q8_0 without VNNI the repack does not pay (there is no one-instruction byte dot for it to
 * feed): qa_direct_rows reads each weight row's block where it lies, takes its 32 products in 8 int32 lanes
 * (|w| * (x with w's sign) through vpmaddubsw + vpmaddwd, exact), and sums the 8 rows' lanes into one vector
 * with a lane per row: the repacked tile's exact integer per block and its chains, so its bits, in about
 * half the instructions of repack + tile for one row (Zen 3: 1.3x).  From 2 rows on the repack is shared
 * and the tile wins (0.9x at 2-3 rows, 0.5x from 4).  q4_0 has its own form below (this one's int32 sums
 * made it 0.86x the tile; summing in int16 made it 1.15x). */
#define QA_DIRECT 1

/* v[0..7] (8 int32 lanes each) -> lane r = the sum of v[r]'s lanes (exact: integers) */
static inline __m256i qa_sum8x8(const __m256i *v)
{
    __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);   /* halves of rows 0-3, 4-7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

/* qa_tile_rows' contract for q8_0 (blocks b0..b1-1 of out[m * ldo + n], m < mr, n < 8; b0 > 0 continues the
 * chains) from the weight rows w + n * ldw themselves (n >= nvalid repeat row 0, whose outputs nobody
 * reads); any number of rows mr.  The first row's pass fetches the next group's bytes ahead, as
 * qa_pack_group does (without it: 0.65x). */
static inline void qa_direct_rows(ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t mr, const int8_t *qx,
                                  const float *dx, const int32_t *cs, const uint8_t *w, ptrdiff_t ldw,
                                  int nvalid, float *out, ptrdiff_t ldo)
{
    ptrdiff_t nb = K / LP_QK, bb = LP_Q8_BYTES;
    const uint8_t *row[8];
    for (int n = 0; n < 8; n++)
        row[n] = w + (n < nvalid ? n : 0) * ldw;
    const char *next = (const char *)(w + 8 * ldw) + b0 * 8 * bb;
    const __m256i ones = _mm256_set1_epi16(1);
    for (ptrdiff_t m = 0; m < mr; m++) {
        const int8_t *xm = qx + m * K;
        __m256 acc = b0 ? _mm256_loadu_ps(out + m * ldo) : _mm256_setzero_ps();
        for (ptrdiff_t b = b0; b < b1; b++) {
            ptrdiff_t o = b * bb;
            if (m == 0)
                QA_PREFETCH_NEXT(next, 8 * bb, _MM_HINT_T0);
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xm + b * LP_QK)), p[8];
            uint16_t hs[8];
            for (int n = 0; n < 8; n++) {
                memcpy(&hs[n], row[n] + o, 2);
                __m256i z = _mm256_loadu_si256((const __m256i *)(row[n] + o + 2));
                p[n] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(z), _mm256_sign_epi8(xv, z)), ones);
            }
            __m256i i = _mm256_add_epi32(qa_sum8x8(p), _mm256_set1_epi32(cs[m * nb + b]));   /* cs: 0 here */
            __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hs));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(sv, _mm256_set1_ps(dx[m * nb + b])), acc);
        }
        _mm256_storeu_ps(out + m * ldo, acc);
    }
}

/* q4_0's one row the same way: nibbles u = w + 8 in [0, 15], so a vpmaddubsw pair is at most 2 * 15 * 127
 * and 16 products 30480: the 8 rows' sums are gathered in int16 (three vphaddw levels, each 128-bit half
 * summing its 16 products) and widened once; + cs (-8 * the sum of qx) gives the block's integer. */
static inline void qa_direct_rows_q4(ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1, const int8_t *qx, const float *dx,
                                     const int32_t *cs, const uint8_t *w, ptrdiff_t ldw, int nvalid, float *out)
{
    ptrdiff_t bb = LP_Q4_BYTES;
    const uint8_t *row[8];
    for (int n = 0; n < 8; n++)
        row[n] = w + (n < nvalid ? n : 0) * ldw;
    const char *next = (const char *)(w + 8 * ldw) + b0 * 8 * bb;
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    (void)K;
    __m256 acc = b0 ? _mm256_loadu_ps(out) : _mm256_setzero_ps();
    for (ptrdiff_t b = b0; b < b1; b++) {
        ptrdiff_t o = b * bb;
        QA_PREFETCH_NEXT(next, 8 * bb, _MM_HINT_T0);
        __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + b * LP_QK)), p[8];
        uint16_t hs[8];
        for (int n = 0; n < 8; n++) {
            memcpy(&hs[n], row[n] + o, 2);
            __m128i v = _mm_loadu_si128((const __m128i *)(row[n] + o + 2));
            __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), lo4);
            p[n] = _mm256_maddubs_epi16(u, xv);        /* weights 0-15 in the low half, 16-31 in the high */
        }
        __m256i h01 = _mm256_hadd_epi16(p[0], p[1]), h23 = _mm256_hadd_epi16(p[2], p[3]);
        __m256i h45 = _mm256_hadd_epi16(p[4], p[5]), h67 = _mm256_hadd_epi16(p[6], p[7]);
        __m256i h = _mm256_hadd_epi16(_mm256_hadd_epi16(h01, h23), _mm256_hadd_epi16(h45, h67));
        /* each half: rows 0..7's sums over that half's 16 weights, in order */
        __m256i i = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(h)),
                                     _mm256_cvtepi16_epi32(_mm256_extracti128_si256(h, 1)));
        i = _mm256_add_epi32(i, _mm256_set1_epi32(cs[b]));
        __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hs));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(sv, _mm256_set1_ps(dx[b])), acc);
    }
    _mm256_storeu_ps(out, acc);
}
#endif
#else
static inline void qa_pack_group(int qtype, ptrdiff_t b0, ptrdiff_t b1, const uint8_t *w, ptrdiff_t ldw,
                                 int nvalid, int sgn, uint8_t *dst)
{
    (void)qtype; (void)b0; (void)b1; (void)w; (void)ldw; (void)nvalid; (void)sgn; (void)dst;
}
#endif

#ifndef QA_DIRECT16
#define QA_DIRECT16 0
static inline void qa_direct16(int qtype, ptrdiff_t b0, ptrdiff_t b1, const int8_t *qx, const float *dx,
                               const int32_t *cs, const uint8_t *w, ptrdiff_t ldw, float *out)
{
    (void)qtype; (void)b0; (void)b1; (void)qx; (void)dx; (void)cs; (void)w; (void)ldw; (void)out;
}
#endif
#ifndef QA_DIRECT
#define QA_DIRECT 0
static inline void qa_direct_rows_q4(ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1, const int8_t *qx, const float *dx,
                                     const int32_t *cs, const uint8_t *w, ptrdiff_t ldw, int nvalid, float *out)
{
    (void)K; (void)b0; (void)b1; (void)qx; (void)dx; (void)cs; (void)w; (void)ldw; (void)nvalid; (void)out;
}
static inline void qa_direct_rows(ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t mr, const int8_t *qx,
                                  const float *dx, const int32_t *cs, const uint8_t *w, ptrdiff_t ldw,
                                  int nvalid, float *out, ptrdiff_t ldo)
{
    (void)K; (void)b0; (void)b1; (void)mr; (void)qx; (void)dx; (void)cs; (void)w; (void)ldw;
    (void)nvalid; (void)out; (void)ldo;
}
#endif

#ifndef QA_AMX
#define QA_AMX 0
#define QA_AMX_MR 1
#define QA_AMX_MIN_ROWS 1
#define QA_AMX_TILE_BYTES LP_QK
static inline void qa_amx_layout(const int8_t *qx, ptrdiff_t M, ptrdiff_t K, int8_t *qt)
{
    (void)qx; (void)M; (void)K; (void)qt;
}
static inline void qa_amx_tile_rows(ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t mr, const int8_t *qt,
                                    const float *dx, const uint8_t *pk, float *out, ptrdiff_t ldo)
{
    (void)K; (void)b0; (void)b1; (void)mr; (void)qt; (void)dx; (void)pk; (void)out; (void)ldo;
}
#endif

/* Whether this call's rows go through AMX: the build has the 512-bit tile, the tiles are on, and there are
 * rows enough to pay for a tile product (it costs the same for 1 row as for 16). */
static inline int qa_amx_use(ptrdiff_t rows)
{
    return QA_AMX && qa_amx_on && rows >= QA_AMX_MIN_ROWS;
}

/* Blocks b0..b1-1 of out[m * ldo + n] for m < mr (at most QA_MR), n < QA_W: the products of activation rows
 * qx + m * K (dx + m * K / 32, cs + m * K / 32) with the weight rows w + n * ldw, packed in pk by
 * qa_pack_group(b0, b1).  b0 > 0 continues the chains from out's values (the same bits as one pass); the
 * scalar build reads w itself, takes b0 = 0, b1 = K / 32 only, and writes n < nvalid. */
static inline void qa_tile_rows(int qtype, ptrdiff_t K, ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t mr,
                                const int8_t *qx, const float *dx, const int32_t *cs, const uint8_t *pk,
                                const uint8_t *w, ptrdiff_t ldw, int nvalid, float *out, ptrdiff_t ldo)
{
#if LP_AVX2
    (void)w; (void)ldw; (void)nvalid;
#if QA_W == 16
    (void)qtype;
#define QA_CASE(M) case M: qa_tile(M, K, b0, b1, qx, dx, cs, pk, out, ldo); break;
    switch ((int)mr) {
    QA_CASE(1) QA_CASE(2) QA_CASE(3) QA_CASE(4) QA_CASE(5) QA_CASE(6) QA_CASE(7) QA_CASE(8)
    default: break;
    }
#else
#define QA_CASE(M) case M:                                                          \
        if (qtype == LP_Q4)                                                         \
            qa_tile(LP_Q4, M, K, b0, b1, qx, dx, cs, pk, out, ldo);                 \
        else                                                                        \
            qa_tile(LP_Q8, M, K, b0, b1, qx, dx, cs, pk, out, ldo);                 \
        break;
    switch ((int)mr) {
    QA_CASE(1) QA_CASE(2) QA_CASE(3) QA_CASE(4)
    default: break;
    }
#endif
#undef QA_CASE
#else
    (void)cs; (void)pk; (void)b0; (void)b1;
    ptrdiff_t nb = K / LP_QK;
    for (ptrdiff_t m = 0; m < mr; m++)
        for (int n = 0; n < nvalid; n++)
            qa_dot_scalar(qtype, K, qx + m * K, dx + m * nb, w + n * ldw, out + m * ldo + n);
#endif
}

#endif /* GPT2CY_Q8ACT_H */
