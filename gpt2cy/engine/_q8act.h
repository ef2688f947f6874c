/* gpt2cy/engine/_q8act.h: q8_0 / q4_0 weights times 8-bit activations, in integer dot products.
 *
 * Our own code.  The activation row x [K] is quantized per block of 32 (the weights' blocks) to
 * qx = round_half_away(x / dx), dx = amax / 127 kept in float32 (ggml keeps it in fp16; float32 loses less),
 * and each block's product with a weight block is an exact integer dot.  That is 8 bits a weight and 8 an
 * activation through one instruction per 32 products (AVX-VNNI / AVX512-VNNI vpdpbusd, else AVX2's
 * vpmaddubsw + vpmaddwd) instead of widening every weight to a float: the kernels stream the weight bytes at
 * memory speed again.  llama.cpp's CPU kernels for these types quantize activations the same way.
 *
 * The arithmetic, the same bits on every build with FMA (and without the SIMD path: the scalar loop is the
 * specification):
 *   lane l (0..7) of block b:  i_bl = sum of w[b, 4l + t] * qx[b, 4l + t], t = 0..3   (exact int32)
 *   s_b = d_w[b] * dx[b]                                                           (one float32 rounding)
 *   acc_l = fma((float)i_bl, s_b, acc_l) over b = 0, 1, ...                        (one chain per lane)
 *   out = ((acc_0 + acc_4) + (acc_2 + acc_6)) + ((acc_1 + acc_5) + (acc_3 + acc_7))  (lp_tree8)
 * One output element is one such computation whatever M, the thread count or the row's place in a batch,
 * so a decode row equals the same row inside a prefill.
 *
 * A NaN or infinite activation makes dx NaN, so the block's products are NaN and the logits say so (the
 * generation loop's finiteness check then names the problem) instead of quietly rounding it away.
 */
#ifndef GPT2CY_Q8ACT_H
#define GPT2CY_Q8ACT_H

#include "_lowp.h"

#if LP_AVX2
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define QA_ISA "vnni"
#else
#define QA_ISA "avx2"
#endif
#else
#define QA_ISA "scalar"
#endif

/* Tile shape of the products: MR rows of activations against 4 weight rows (16 accumulators take the 32
 * vector registers of AVX-512VL; AVX2 has 16, so 2 rows there). */
#if LP_AVX2 && defined(__AVX512VL__)
#define QA_MR 4
#else
#define QA_MR 2
#endif
#define QA_NR 4

/* One row of K activations (K a multiple of 32) -> qx [K] int8, dx [K / 32] float scales and ns [K / 32 * 8]
 * the negated sums of each group of 4 q (the 8 lanes of a block): the corrections that let the kernels
 * multiply unsigned weight bytes (q4_0's nibbles; q8_0's bytes + 128) by signed activations exactly. */
static inline void qa_quantize_row(const float *x, ptrdiff_t K, int8_t *qx, float *dx, int32_t *ns)
{
    for (ptrdiff_t b = 0; b < K / LP_QK; b++) {
        const float *xb = x + b * LP_QK;
        float amax = 0.0f;
        int bad = 0;
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
            qx[b * LP_QK + j] = (int8_t)(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
        }
        for (int l = 0; l < LP_LANES; l++) {
            const int8_t *g = qx + b * LP_QK + 4 * l;
            ns[b * LP_LANES + l] = -((int32_t)g[0] + g[1] + g[2] + g[3]);
        }
    }
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

#if LP_AVX2
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define QA_VNNI 1
static inline __m256i qa_dpbusd(__m256i acc, __m256i u, __m256i s)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#endif
}
#else
#define QA_VNNI 0
#endif

/* A weight block's 32 bytes as the kernels multiply them: q4_0 its nibbles (0..15); q8_0 its int8 values,
 * + 128 where VNNI multiplies unsigned by signed bytes */
static inline __m256i qa_load_w(int qtype, const uint8_t *blk)
{
    if (qtype == LP_Q4) {
        __m128i b = _mm_loadu_si128((const __m128i *)(blk + 2));
        __m128i m = _mm_set1_epi8(0x0F);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    }
    __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2));
#if QA_VNNI
    w = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80));
#endif
    return w;
}

/* lane l = sum_{t<4} w[4l+t] * x[4l+t], exactly; c = the block's negated lane sums of x, times 2^shift
 * (shift 7 for q8_0's +128 offset, 3 for q4_0's -8) */
static inline __m256i qa_lanes(int qtype, __m256i w, __m256i x, __m256i c)
{
#if QA_VNNI
    return qa_dpbusd(c, w, x);
#else
    __m256i ones = _mm256_set1_epi16(1);
    if (qtype == LP_Q4)                       /* nibble * x: pairs at most 2 * 15 * 127, no saturation */
        return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones), c);
    (void)c;                                  /* |w| * (x with w's sign): pairs at most 2 * 128 * 127 */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
#endif
}

/* out[m * ldo + r] for m < MR, r < NR: activation rows qx + m * K (dx, ns likewise) against weight rows
 * w + r * ldw.  Inlined with constant MR and NR (qa_dot_block's switch), so the accumulators stay in
 * registers. */
static inline __attribute__((always_inline)) void qa_tile(
    int qtype, ptrdiff_t K, int MR, int NR, const int8_t *qx, const float *dx, const int32_t *ns,
    const uint8_t *w, ptrdiff_t ldw, float *out, ptrdiff_t ldo)
{
    ptrdiff_t nb = K / LP_QK, bb = qtype == LP_Q4 ? LP_Q4_BYTES : LP_Q8_BYTES;
    int shift = qtype == LP_Q4 ? 3 : 7;
    __m256 acc[QA_MR][QA_NR];
    for (int m = 0; m < MR; m++)
        for (int r = 0; r < NR; r++)
            acc[m][r] = _mm256_setzero_ps();
    for (ptrdiff_t b = 0; b < nb; b++) {
        __m256i wv[QA_NR];
        float dw[QA_NR];
        for (int r = 0; r < NR; r++) {
            const uint8_t *blk = w + r * ldw + b * bb;
            dw[r] = lp_q8_scale(blk);
            wv[r] = qa_load_w(qtype, blk);
        }
        for (int m = 0; m < MR; m++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(qx + m * K + b * LP_QK));
            __m256i c = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(ns + (m * nb + b) * LP_LANES)),
                                          shift);
            float d = dx[m * nb + b];
            for (int r = 0; r < NR; r++)
                acc[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qa_lanes(qtype, wv[r], xv, c)),
                                            _mm256_set1_ps(dw[r] * d), acc[m][r]);
        }
    }
    for (int m = 0; m < MR; m++)
        for (int r = 0; r < NR; r++)
            out[m * ldo + r] = lp_hsum8(acc[m][r]);
}
#endif

/* The scalar statement of every product (the SIMD tiles give these bits where the build has FMA). */
static inline void qa_dot_scalar(int qtype, ptrdiff_t K, const int8_t *qx, const float *dx, const uint8_t *w,
                                 float *out)
{
    ptrdiff_t nb = K / LP_QK, bb = qtype == LP_Q4 ? LP_Q4_BYTES : LP_Q8_BYTES;
    float acc[LP_LANES] = {0};
    int8_t wq[LP_QK];
    for (ptrdiff_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bb;
        const int8_t *xb = qx + b * LP_QK;
        float s = lp_q8_scale(blk) * dx[b];
        qa_block_weights(qtype, blk, wq);
        for (int l = 0; l < LP_LANES; l++) {
            int32_t i = 0;
            for (int t = 0; t < 4; t++)
                i += (int32_t)wq[4 * l + t] * (int32_t)xb[4 * l + t];
            acc[l] = GPT2CY_MADD((float)i, s, acc[l]);
        }
    }
    *out = lp_tree8(acc);
}

/* out[m * ldo + j] = the product of activation row m (qx + m * K, dx + m * K / 32, ns + m * K / 4) with weight
 * row j (q8_0 or q4_0 blocks, row stride ldw bytes), for m < mr (at most QA_MR) and j < n. */
static inline void qa_dot_block(int qtype, ptrdiff_t K, ptrdiff_t mr, const int8_t *qx, const float *dx,
                                const int32_t *ns, const uint8_t *w, ptrdiff_t ldw, ptrdiff_t n, float *out,
                                ptrdiff_t ldo)
{
#if LP_AVX2
    for (ptrdiff_t j = 0; j < n; j += QA_NR) {
        int nr = (int)(n - j < QA_NR ? n - j : QA_NR);
        const uint8_t *wj = w + j * ldw;
        float *oj = out + j;
#define QA_CASE(M, N) case (M) * 8 + (N): qa_tile(qtype, K, M, N, qx, dx, ns, wj, ldw, oj, ldo); break;
        switch ((int)mr * 8 + nr) {
        QA_CASE(1, 1) QA_CASE(1, 2) QA_CASE(1, 3) QA_CASE(1, 4)
        QA_CASE(2, 1) QA_CASE(2, 2) QA_CASE(2, 3) QA_CASE(2, 4)
#if QA_MR == 4
        QA_CASE(3, 1) QA_CASE(3, 2) QA_CASE(3, 3) QA_CASE(3, 4)
        QA_CASE(4, 1) QA_CASE(4, 2) QA_CASE(4, 3) QA_CASE(4, 4)
#endif
        default: break;
        }
#undef QA_CASE
    }
#else
    (void)ns;
    for (ptrdiff_t m = 0; m < mr; m++)
        for (ptrdiff_t j = 0; j < n; j++)
            qa_dot_scalar(qtype, K, qx + m * K, dx + m * (K / LP_QK), w + j * ldw, out + m * ldo + j);
#endif
}

#endif /* GPT2CY_Q8ACT_H */
