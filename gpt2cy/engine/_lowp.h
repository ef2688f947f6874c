/* gpt2cy/engine/_lowp.h: weights in fewer bytes (bf16, q8_0, q4_0): conversions, quantizers, bf16 kernels.
 *
 * Our own code.  The q8_0 block layout is ggml's (ggml-common.h `block_q8_0`), so a GGUF file's q8_0 data is
 * read where it lies:
 *
 *   bf16   the top 16 bits of a float32; widening is a 16-bit shift (exact)
 *   q8_0   32 weights along the input dimension per 34-byte block: fp16 scale d (little-endian, offset 0)
 *          then 32 int8 q; the weight is d * q.  Rows are output rows ([out, in]), in / 32 blocks each.
 *   q4_0   the same with 18-byte blocks: fp16 d, then 16 bytes whose low nibbles are q[0..15] and high
 *          nibbles q[16..31] (unsigned, 0..15); the weight is d * (q - 8).
 *
 * d * q is exact in float32 (an 11-bit fp16 significand times an 8- or 4-bit integer), so dequantizing into a
 * buffer or in registers gives the same float: the kernels below are bit-identical whichever path runs.
 *
 * Determinism:
 *   bf16 [in, out] (matmul weights): products over bf16-rounded activations, _bf16dot.h.
 *   bf16 rows (row dots): out = tree(lanes), lane l = sum over k = l (mod 32) of x[k] * w[k] in increasing k
 *        (one fused multiply-add chain), _gemm.h's 32-lane order.
 *   q8_0 / q4_0 products run on 8-bit activations: _q8act.h.
 */
#ifndef GPT2CY_LOWP_H
#define GPT2CY_LOWP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#include "_madd.h"

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define LP_AVX2 1
#else
#define LP_AVX2 0
#endif

#define LP_QK 32            /* q8_0: weights per block */
#define LP_Q8_BYTES 34      /* q8_0: bytes per block (2-byte fp16 scale + 32 int8) */
#define LP_Q4_BYTES 18      /* q4_0: bytes per block (2-byte fp16 scale + 16 bytes of nibbles) */
#define LP_Q8 0             /* block types of the q* kernels */
#define LP_Q4 1

/* ------------------------------------------------------------------------------------------------------
 * Scalar conversions
 */
static inline float lp_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* round to nearest, ties to even; a NaN stays a (quiet) NaN with its sign, never becomes inf */
static inline uint16_t lp_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* fp16 -> float32 (exact) */
static inline float lp_f16_to_f32(uint16_t h)
{
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
    float f;
    if (e == 0x1F) {
        u = sign | 0x7F800000u | (m << 13);
    } else if (e == 0) {
        f = (float)m * 5.9604644775390625e-8f;          /* m * 2^-24: zero or a subnormal, exact */
        memcpy(&u, &f, sizeof(u));
        u |= sign;
    } else {
        u = sign | ((e + 112u) << 23) | (m << 13);
    }
    memcpy(&f, &u, sizeof(f));
    return f;
#endif
}

/* float32 -> fp16, round to nearest, ties to even (numpy's astype(float16)); portable C on every build, so
 * the quantizer's bytes never depend on the ISA */
static inline uint16_t lp_f32_to_f16(float f)
{
    uint32_t u, sign;
    memcpy(&u, &f, sizeof(u));
    sign = (u >> 16) & 0x8000u;
    u &= 0x7FFFFFFFu;
    if (u > 0x7F800000u)
        return (uint16_t)(sign | 0x7E00u | ((u >> 13) & 0x3FFu));   /* NaN (quiet) */
    if (u >= 0x477FF000u)
        return (uint16_t)(sign | 0x7C00u);                           /* >= 65520: inf */
    if (u < 0x38800000u) {                                           /* below 2^-14: subnormal or zero */
        float a, r;
        memcpy(&a, &u, sizeof(a));
        r = a * 16777216.0f;                                         /* in units of 2^-24, exact */
        r = (r + 8388608.0f) - 8388608.0f;                           /* round half to even */
        return (uint16_t)(sign | (uint32_t)r);
    }
    u -= 112u << 23;                                                 /* rebias 127 -> 15 */
    u += 0xFFFu + ((u >> 13) & 1u);
    return (uint16_t)(sign | (u >> 13));
}

static inline float lp_q8_scale(const uint8_t *block)
{
    uint16_t h;
    memcpy(&h, block, sizeof(h));
    return lp_f16_to_f32(h);
}

/* ------------------------------------------------------------------------------------------------------
 * Quantizers (one row each; the Cython drivers run rows in parallel)
 */

/* dst[j] = bf16(src[j]), j < n */
static inline void lp_row_to_bf16(const float *src, uint16_t *dst, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j++)
        dst[j] = lp_f32_to_bf16(src[j]);
}

/* One q8_0 block from 32 floats, the arithmetic of ggml's quantize_row_q8_0_ref and gguf-py's Q8_0
 * (float32 throughout): d = amax / 127, id = d ? 1 / d : 0, q = round_half_away(x * id). */
static inline void lp_q8_block(const float *x, uint8_t *dst)
{
    float amax = 0.0f;
    for (int j = 0; j < LP_QK; j++) {
        float a = x[j] < 0.0f ? -x[j] : x[j];
        amax = a > amax ? a : amax;
    }
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t h = lp_f32_to_f16(d);
    memcpy(dst, &h, sizeof(h));
    for (int j = 0; j < LP_QK; j++)
        dst[2 + j] = (uint8_t)(int8_t)(int32_t)roundf(x[j] * id);     /* half away from zero */
}

/* One q4_0 block, the arithmetic of gguf-py's Q4_0 (float32 throughout): m = the value of largest magnitude
 * (the first such), d = m / -8, id = d ? 1 / d : 0, q = min(15, trunc(x * id + 8.5)) with two roundings
 * (the product is stored through a volatile so that no compiler fuses it into the add). */
static inline void lp_q4_block(const float *x, uint8_t *dst)
{
    float m = x[0], amax = m < 0.0f ? -m : m;       /* numpy's argmax: the first of equal magnitudes */
    uint8_t q[LP_QK];
    for (int j = 1; j < LP_QK; j++) {
        float a = x[j] < 0.0f ? -x[j] : x[j];
        if (a > amax) { amax = a; m = x[j]; }
    }
    float d = m / -8.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t h = lp_f32_to_f16(d);
    memcpy(dst, &h, sizeof(h));
    for (int j = 0; j < LP_QK; j++) {
        volatile float p = x[j] * id;
        float t = p + 8.5f;
        int v = t > 0.0f ? (int)t : 0;
        q[j] = (uint8_t)(v > 15 ? 15 : v);
    }
    for (int j = 0; j < LP_QK / 2; j++)
        dst[2 + j] = (uint8_t)(q[j] | (q[j + LP_QK / 2] << 4));
}

static inline void lp_row_to_q4(const float *src, uint8_t *dst, ptrdiff_t n)
{
    for (ptrdiff_t b = 0; b < n / LP_QK; b++)
        lp_q4_block(src + b * LP_QK, dst + b * LP_Q4_BYTES);
}

static inline void lp_q4_row_to_f32(const uint8_t *src, float *dst, ptrdiff_t n)
{
    for (ptrdiff_t b = 0; b < n / LP_QK; b++) {
        const uint8_t *blk = src + b * LP_Q4_BYTES;
        float d = lp_q8_scale(blk);
        for (int j = 0; j < LP_QK / 2; j++) {
            dst[b * LP_QK + j] = d * (float)((int)(blk[2 + j] & 0x0F) - 8);
            dst[b * LP_QK + j + LP_QK / 2] = d * (float)((int)(blk[2 + j] >> 4) - 8);
        }
    }
}

/* a row of n (a multiple of 32) floats -> n / 32 blocks */
static inline void lp_row_to_q8(const float *src, uint8_t *dst, ptrdiff_t n)
{
    for (ptrdiff_t b = 0; b < n / LP_QK; b++)
        lp_q8_block(src + b * LP_QK, dst + b * LP_Q8_BYTES);
}

/* dequantize n weights of a q8_0 row */
static inline void lp_q8_row_to_f32(const uint8_t *src, float *dst, ptrdiff_t n)
{
    for (ptrdiff_t b = 0; b < n / LP_QK; b++) {
        const uint8_t *blk = src + b * LP_Q8_BYTES;
        float d = lp_q8_scale(blk);
        for (int j = 0; j < LP_QK; j++)
            dst[b * LP_QK + j] = d * (float)(int8_t)blk[2 + j];
    }
}

static inline void lp_bf16_row_to_f32(const uint16_t *src, float *dst, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j++)
        dst[j] = lp_bf16_to_f32(src[j]);
}

/* ------------------------------------------------------------------------------------------------------
 * bf16 rows of the tied lm_head: the f32 kernels' arithmetic with the weights widened on the way in (the
 * matmul weights' products are _bf16dot.h's)
 */

/* as gemm_pack_bt (wt: [nc, kc] bf16, row stride ldwt elements: the tied lm_head's rows) */
static inline void lp_pack_bt_bf16(const uint16_t *wt, ptrdiff_t ldwt, ptrdiff_t kc, ptrdiff_t nc, float *dst, int nr)
{
    ptrdiff_t n_panels = (nc + nr - 1) / nr;
    for (ptrdiff_t p = 0; p < n_panels; p++) {
        float *d = dst + p * kc * nr;
        ptrdiff_t j0 = p * nr, nv = nc - j0 < nr ? nc - j0 : nr;
        for (ptrdiff_t j = 0; j < nr; j++) {
            if (j < nv) {
                const uint16_t *src = wt + (j0 + j) * ldwt;
                for (ptrdiff_t k = 0; k < kc; k++) d[k * nr + j] = lp_bf16_to_f32(src[k]);
            } else {
                for (ptrdiff_t k = 0; k < kc; k++) d[k * nr + j] = 0.0f;
            }
        }
    }
}

#if LP_AVX2
static inline __m256 lp_bf16x8(const uint16_t *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#if defined(__AVX512F__)
static inline __m512 lp_bf16x16(const uint16_t *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#endif
#endif

#ifndef LP_DOT_PF
#define LP_DOT_PF 8192   /* bytes ahead along wt that the 512-bit bf16 row dots prefetch (4-8 KiB measured best) */
#endif

/* out[j] = x . wt[j] for j < n (bf16 rows of K, row stride ldwt elements): _gemm.h's portable 32-lane order
 * (lane = k mod 32, then s[l] += s[l + 16], 8, 4, 2, 1) */
static inline void lp_dot_rows_bf16(ptrdiff_t K, const float *x, const uint16_t *wt, ptrdiff_t ldwt, ptrdiff_t n,
                             float *out)
{
    ptrdiff_t j0 = 0;
#if LP_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
    if (K % 32 == 0) {   /* four rows at a time at 512 bits, each prefetched LP_DOT_PF bytes ahead: the
                          * hardware prefetchers alone held these bf16 streams to half the f32 row dots'
                          * bandwidth (23 against 45 GB/s, Zen 5; 2 rows a pass had waited on FMA latency).
                          * Into L2: on Zen 4 (32 KB L1) the one-row head went 3.4-4.2 -> 2.6-2.9 ms */
        for (; j0 + 4 <= n; j0 += 4) {
            const uint16_t *r[4] = {wt + j0 * ldwt, wt + (j0 + 1) * ldwt, wt + (j0 + 2) * ldwt,
                                    wt + (j0 + 3) * ldwt};
            __m512 a[4], b[4];
            for (int q = 0; q < 4; q++) a[q] = b[q] = _mm512_setzero_ps();
            for (ptrdiff_t k = 0; k < K; k += 32) {
                __m512 xa = _mm512_loadu_ps(x + k), xb = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) {
                    _mm_prefetch((const char *)(r[q] + k) + LP_DOT_PF, _MM_HINT_T1);
                    a[q] = _mm512_fmadd_ps(xa, lp_bf16x16(r[q] + k), a[q]);
                    b[q] = _mm512_fmadd_ps(xb, lp_bf16x16(r[q] + k + 16), b[q]);
                }
            }
            for (int q = 0; q < 4; q++)
                out[j0 + q] = gpt2cy_hsum16(_mm512_add_ps(a[q], b[q]));   /* s[l] + s[l + 16], then the tree */
        }
    }
#endif
    for (ptrdiff_t j = j0; j < n; j++) {
        const uint16_t *r0 = wt + j * ldwt;
        float s[32];
        ptrdiff_t k = 0;
#if LP_AVX2
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps();
        for (; k + 32 <= K; k += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), lp_bf16x8(r0 + k), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), lp_bf16x8(r0 + k + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), lp_bf16x8(r0 + k + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), lp_bf16x8(r0 + k + 24), a3);
        }
        _mm256_storeu_ps(s, a0);
        _mm256_storeu_ps(s + 8, a1);
        _mm256_storeu_ps(s + 16, a2);
        _mm256_storeu_ps(s + 24, a3);
#else
        for (int l = 0; l < 32; l++) s[l] = 0.0f;
        for (; k + 32 <= K; k += 32)
            for (int l = 0; l < 32; l++) s[l] = GPT2CY_MADD(x[k + l], lp_bf16_to_f32(r0[k + l]), s[l]);
#endif
        for (int l = 0; k + l < K; l++) s[l] = GPT2CY_MADD(x[k + l], lp_bf16_to_f32(r0[k + l]), s[l]);
        for (int l = 0; l < 16; l++) s[l] = s[l] + s[l + 16];
        for (int w = 8; w >= 1; w /= 2)
            for (int l = 0; l < w; l++) s[l] = s[l] + s[l + w];
        out[j] = s[0];
    }
}

#if LP_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
/* out[q][j] = x[q] . wt[j] for q < MR (a constant once inlined), K % 32 == 0: each row of wt widened once
 * for all MR rows of x; per row of x the two chains and the sum of lp_dot_rows_bf16's 512-bit path */
static inline __attribute__((always_inline)) void lp_dot_rows_mr_bf16(int MR, ptrdiff_t K, const float *const *x,
                                                                       const uint16_t *wt, ptrdiff_t ldwt,
                                                                       ptrdiff_t n, float *const *out, ptrdiff_t pf)
{
    ptrdiff_t j = 0;
    for (; j + 2 <= n; j += 2) {   /* two rows of wt a pass: each x vector loaded once for both (see gemm_dot_rows4) */
        const uint16_t *r0 = wt + j * ldwt, *r1 = r0 + ldwt;
        __m512 a[4], b[4], c[4], d[4];   /* a, b: row j's two chains; c, d: row j + 1's */
        for (int q = 0; q < MR; q++) a[q] = b[q] = c[q] = d[q] = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < K; k += 32) {
            __m512 wa = lp_bf16x16(r0 + k), wb = lp_bf16x16(r0 + k + 16);
            __m512 wc = lp_bf16x16(r1 + k), wd = lp_bf16x16(r1 + k + 16);
            if (pf) {
                _mm_prefetch((const char *)(r0 + pf + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(r1 + pf + k), _MM_HINT_T1);
            }
            for (int q = 0; q < MR; q++)
                gpt2cy_dot_step2(x[q] + k, wa, wb, wc, wd, &a[q], &b[q], &c[q], &d[q]);
        }
        for (int q = 0; q < MR; q++) {
            out[q][j] = gpt2cy_hsum16(_mm512_add_ps(a[q], b[q]));
            out[q][j + 1] = gpt2cy_hsum16(_mm512_add_ps(c[q], d[q]));
        }
    }
    for (; j < n; j++) {
        const uint16_t *r0 = wt + j * ldwt;
        __m512 a[4], b[4];
        for (int q = 0; q < MR; q++) a[q] = b[q] = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < K; k += 32) {
            __m512 wa = lp_bf16x16(r0 + k), wb = lp_bf16x16(r0 + k + 16);
            if (pf)   /* the next chunk of wt pf elements ahead, into L2 (as _gemm.h's gemm_dot_rows4) */
                _mm_prefetch((const char *)(r0 + pf + k), _MM_HINT_T1);
            for (int q = 0; q < MR; q++) {
                a[q] = _mm512_fmadd_ps(_mm512_loadu_ps(x[q] + k), wa, a[q]);
                b[q] = _mm512_fmadd_ps(_mm512_loadu_ps(x[q] + k + 16), wb, b[q]);
            }
        }
        for (int q = 0; q < MR; q++)
            out[q][j] = gpt2cy_hsum16(_mm512_add_ps(a[q], b[q]));
    }
}
#endif

/* out0[j] = x0 . wt[j] and out1[j] = x1 . wt[j] (the last rows of a batch of sequences), each with exactly
 * lp_dot_rows_bf16's arithmetic; each row of wt is widened once for both rows of x. */
static inline void lp_dot_rows2_bf16(ptrdiff_t K, const float *x0, const float *x1, const uint16_t *wt,
                                     ptrdiff_t ldwt, ptrdiff_t n, float *out0, float *out1, ptrdiff_t pf)
{
    ptrdiff_t j = 0;
#if LP_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
    if (K % 32 == 0) {   /* at 8 rows the tied head had run at 12 GB/s, widening wt once per row of x */
        const float *xs[2] = {x0, x1};
        float *os[2] = {out0, out1};
        lp_dot_rows_mr_bf16(2, K, xs, wt, ldwt, n, os, pf);
        return;
    }
#endif
#if LP_AVX2 && !defined(__AVX512F__)
    if (K % 32 == 0)
        for (; j < n; j++) {
            const uint16_t *r0 = wt + j * ldwt;
            __m256 a[4], b[4];
            for (int q = 0; q < 4; q++) a[q] = b[q] = _mm256_setzero_ps();
            for (ptrdiff_t k = 0; k < K; k += 32) {
                if (pf)
                    _mm_prefetch((const char *)(r0 + pf + k), _MM_HINT_T1);
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) {
                    __m256 wv = lp_bf16x8(r0 + k + 8 * q);
                    a[q] = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k + 8 * q), wv, a[q]);
                    b[q] = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + k + 8 * q), wv, b[q]);
                }
            }
            out0[j] = gpt2cy_hsum32x8(a);
            out1[j] = gpt2cy_hsum32x8(b);
        }
#endif
    if (j < n) {
        lp_dot_rows_bf16(K, x0, wt + j * ldwt, ldwt, n - j, out0 + j);
        lp_dot_rows_bf16(K, x1, wt + j * ldwt, ldwt, n - j, out1 + j);
    }
}

/* three or four rows of x (mr) at once (a batch): at 512 bits each row of wt widened once for all of them
 * (prefetching wt pf elements ahead when pf > 0), else lp_dot_rows2_bf16 and the rest; the same bits either
 * way.  Three rows as a pass of two and one of one re-widened wt, and the tied head of 3 rows ran 1.3x as
 * long as of 2 or 4. */
static inline void lp_dot_rows34_bf16(ptrdiff_t mr, ptrdiff_t K, const float *const *x, const uint16_t *wt,
                                      ptrdiff_t ldwt, ptrdiff_t n, float *const *out, ptrdiff_t pf)
{
#if LP_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
    if (K % 32 == 0) {
        if (mr == 3)
            lp_dot_rows_mr_bf16(3, K, x, wt, ldwt, n, out, pf);
        else
            lp_dot_rows_mr_bf16(4, K, x, wt, ldwt, n, out, pf);
        return;
    }
#endif
    lp_dot_rows2_bf16(K, x[0], x[1], wt, ldwt, n, out[0], out[1], pf);
    if (mr == 3)
        lp_dot_rows_bf16(K, x[2], wt, ldwt, n, out[2]);
    else
        lp_dot_rows2_bf16(K, x[2], x[3], wt, ldwt, n, out[2], out[3], 0);   /* wt in cache by now */
}

#endif /* GPT2CY_LOWP_H */
