/* gpt2cy/engine/_bf16dot.h: the bf16 type's matmul products: bf16 weights times bf16-rounded activations, the
 * arithmetic of AVX512-BF16's VDPBF16PS, for gpt2cy/engine/_matmul.pyx's drivers (our own code).
 *
 * One definition on every build:
 *   - a matmul's input row is rounded to bf16 (bd_round_rows: round to nearest even, _lowp.h's rule; a result
 *     below FLT_MIN in magnitude becomes a signed zero, as the instruction reads it) and read in pairs:
 *     pair p = (x[2p], x[2p+1]), x[K] = 0 when K is odd;
 *   - every output is one chain per K block of GEMM_KC (as _gemm.h; blocks combined in order, bias with the
 *     first), one step per pair:   acc = (acc + x[2p+1] * w[2p+1]) + x[2p] * w[2p]   (each + rounded);
 *     that is VDPBF16PS (the odd element first: checked bit for bit against the instruction on Zen 4).
 * A product of two bf16 values is exact in float32, so the instruction, an FMA and a plain multiply-add all
 * give the same bits: the VDPBF16PS path, its 512- and 256-bit emulations and portable C agree, and a decode
 * row equals the same row of a prefill.  (bf16 weights below FLT_MIN, none in GPT-2, and sums below it are
 * where the instruction, which flushes them, and the emulations could differ.)
 *
 * Weights stay bf16 [in, out] (the checkpoint's layout, _lowp.h).  With the instruction, rows 2p and 2p+1 are
 * interleaved into dword pairs while packing (prefill panels: [kp, NR] pairs) or in registers (decode:
 * vpunpck{l,h}wd leaves a 32-column chunk's sums in the order 0-3 8-11 16-19 24-27 | 4-7 12-15 20-23 28-31;
 * they stay in that order for the whole K block and are put back once at its end).  Without it, prefills
 * round x into floats with each pair swapped (x[1], x[0], x[3], x[2], ...) and pack w widened with its rows
 * swapped the same way, so _gemm.h's f32 tile runs the pair chains at f32's speed; decode widens the rows
 * in registers, the odd row first.
 *
 * Why bf16 activations: VDPBF16PS does 32 multiply-adds per instruction against the FMA's 16, so prefills
 * of bf16 weights run faster than f32 instead of at f32's speed (llama.cpp's bf16 rounds its activations
 * the same way); decode reads half of f32's bytes either way.
 */
#ifndef GPT2CY_BF16DOT_H
#define GPT2CY_BF16DOT_H

#include "_gemm.h"
#include "_lowp.h"

/* pair p of a bf16 row (x[2p] in the low half) */
static inline uint32_t bd_pair(const uint16_t *x, ptrdiff_t p)
{
    uint32_t v;
    memcpy(&v, x + 2 * p, sizeof(v));
    return v;
}

static inline float bd_hi(uint32_t pair)   /* the odd element as a float */
{
    uint32_t u = pair & 0xFFFF0000u;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline float bd_lo(uint32_t pair)   /* the even element as a float */
{
    uint32_t u = pair << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline uint16_t bd_round1(float f)
{
    uint16_t h = lp_f32_to_bf16(f);
    return (h & 0x7F80u) ? h : (uint16_t)(h & 0x8000u);
}

/* The rounding of 16 / 8 floats at once: each lane's bf16 in its top 16 bits, the low 16 bits zero (so the
 * lane is the rounded value as a float32) */
#if defined(__AVX512F__)
static inline __m512i bd_round16(__m512i u)
{
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i h = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                            _mm512_set1_epi32(0x7F800000));
    h = _mm512_mask_or_epi32(h, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    __mmask16 tiny = _mm512_testn_epi32_mask(h, _mm512_set1_epi32(0x7F80));
    h = _mm512_mask_and_epi32(h, tiny, h, _mm512_set1_epi32(0x8000));
    return _mm512_slli_epi32(h, 16);
}
#elif LP_AVX2
static inline __m256i bd_round8(__m256i u)
{
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i h = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)), 16);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                     _mm256_set1_epi32(0x7F800000));          /* both sides < 2^31 */
    h = _mm256_blendv_epi8(h, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    __m256i tiny = _mm256_cmpeq_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x7F80)), _mm256_setzero_si256());
    h = _mm256_blendv_epi8(h, _mm256_and_si256(h, _mm256_set1_epi32(0x8000)), tiny);
    return _mm256_slli_epi32(h, 16);
}
#endif

static inline float bd_round1f(float f)
{
    return lp_bf16_to_f32(bd_round1(f));
}

/* Pairs (the VDPBF16PS path): xp[m * ldp + k] = bf16(x[m * ldx + k]) for k < K, xp[m * ldp + K] = 0 when K is
 * odd.   x: [M, K] row stride ldx;  xp: [M, ldp] bf16, ldp even and >= K + (K & 1) */
static void bd_round_rows(const float *x, ptrdiff_t ldx, ptrdiff_t M, ptrdiff_t K, uint16_t *xp, ptrdiff_t ldp)
{
    for (ptrdiff_t m = 0; m < M; m++) {
        const float *r = x + m * ldx;
        uint16_t *o = xp + m * ldp;
        ptrdiff_t k = 0;
#if defined(__AVX512F__)
        for (; k + 16 <= K; k += 16) {
            __m512i h = _mm512_srli_epi32(bd_round16(_mm512_castps_si512(_mm512_loadu_ps(r + k))), 16);
            _mm256_storeu_si256((__m256i *)(o + k), _mm512_cvtepi32_epi16(h));
        }
#elif LP_AVX2   /* every decode step of an AVX2 build rounds its rows here */
        for (; k + 8 <= K; k += 8) {
            __m256i h = _mm256_srli_epi32(bd_round8(_mm256_castps_si256(_mm256_loadu_ps(r + k))), 16);
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
            _mm_storeu_si128((__m128i *)(o + k), _mm256_castsi256_si128(packed));
        }
#endif
        for (; k < K; k++) o[k] = bd_round1(r[k]);
        if (K & 1) o[K] = 0;
    }
}

/* Swapped floats (prefills without the instruction: _gemm.h's f32 tile then runs the same chains):
 * xs[m * ldxs + 2p] = bf16(x[2p + 1]), xs[m * ldxs + 2p + 1] = bf16(x[2p]) as float32, x[K] = 0 when K is odd.
 *   x: [M, K] row stride ldx;  xs: [M, ldxs] floats, ldxs >= K + (K & 1) */
static void bd_round_rows_swapped(const float *x, ptrdiff_t ldx, ptrdiff_t M, ptrdiff_t K, float *xs,
                                  ptrdiff_t ldxs)
{
    for (ptrdiff_t m = 0; m < M; m++) {
        const float *r = x + m * ldx;
        float *o = xs + m * ldxs;
        ptrdiff_t k = 0;
#if defined(__AVX512F__)
        for (; k + 16 <= K; k += 16)
            _mm512_storeu_ps(o + k, _mm512_permute_ps(_mm512_castsi512_ps(bd_round16(_mm512_castps_si512(_mm512_loadu_ps(r + k)))), 0xB1));
#elif LP_AVX2
        for (; k + 8 <= K; k += 8)
            _mm256_storeu_ps(o + k, _mm256_permute_ps(_mm256_castsi256_ps(bd_round8(_mm256_castps_si256(_mm256_loadu_ps(r + k)))), 0xB1));
#endif
        for (; k + 2 <= K; k += 2) {
            o[k] = bd_round1f(r[k + 1]);
            o[k + 1] = bd_round1f(r[k]);
        }
        if (K & 1) {
            o[K - 1] = 0.0f;
            o[K] = bd_round1f(r[K - 1]);
        }
    }
}

/* As the swapped rows, for w: a [kc, nc] block of bf16 w (row stride ldw) -> _gemm.h's f32 panels
 * [ceil(nc / NR), kc + (kc & 1), NR], rows widened (exactly) in the order 1, 0, 3, 2, ...; a missing row (odd
 * kc) and columns past nc are zero.  dst: 64-byte aligned */
static void bd_pack_b_swapped(const uint16_t *w, ptrdiff_t ldw, ptrdiff_t kc, ptrdiff_t nc, float *dst)
{
    ptrdiff_t kr = kc + (kc & 1), n_panels = (nc + GEMM_NR - 1) / GEMM_NR;
    for (ptrdiff_t r = 0; r < kr; r++) {
        ptrdiff_t s = r ^ 1;
        const uint16_t *src = w + s * ldw;
        for (ptrdiff_t pan = 0; pan < n_panels; pan++) {
            float *d = dst + (pan * kr + r) * GEMM_NR;
            ptrdiff_t j0 = pan * GEMM_NR, nv = s < kc ? (nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR) : 0, j = 0;
#if LP_AVX2
            for (; j + 8 <= nv; j += 8) _mm256_storeu_ps(d + j, lp_bf16x8(src + j0 + j));
#endif
            for (; j < nv; j++) d[j] = lp_bf16_to_f32(src[j0 + j]);
            for (; j < GEMM_NR; j++) d[j] = 0.0f;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------
 * Prefill panels for the instruction's tile: a [kc, nc] block of bf16 w (row stride ldw) -> ceil(nc / NR)
 * panels of [kp, NR] pairs
 * (kp = ceil(kc / 2); dst[(panel * kp + p) * 2NR + 2j + h] = w[2p + h][panel * NR + j], zero outside w).
 * dst: 64-byte aligned, ceil(nc / NR) * kp * NR * 2 uint16 */
static void bd_pack_b(const uint16_t *w, ptrdiff_t ldw, ptrdiff_t kc, ptrdiff_t nc, uint16_t *dst)
{
    ptrdiff_t kp = (kc + 1) >> 1, n_panels = (nc + GEMM_NR - 1) / GEMM_NR;
    for (ptrdiff_t pan = 0; pan < n_panels; pan++) {
        ptrdiff_t j0 = pan * GEMM_NR, nv = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
        uint16_t *d = dst + pan * kp * 2 * GEMM_NR;
        for (ptrdiff_t p = 0; p < kp; p++, d += 2 * GEMM_NR) {
            const uint16_t *r0 = w + 2 * p * ldw + j0, *r1 = r0 + ldw;
            int has1 = 2 * p + 1 < kc;
#if defined(__AVX512F__)
            if (nv == 32 && has1) {
                __m512i v0 = _mm512_loadu_si512(r0), v1 = _mm512_loadu_si512(r1);
                __m512i lo = _mm512_unpacklo_epi16(v0, v1), hi = _mm512_unpackhi_epi16(v0, v1);
                const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
                const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
                _mm512_storeu_si512(d, _mm512_permutex2var_epi32(lo, i0, hi));
                _mm512_storeu_si512(d + 32, _mm512_permutex2var_epi32(lo, i1, hi));
                continue;
            }
#endif
            for (ptrdiff_t j = 0; j < GEMM_NR; j++) {
                d[2 * j] = j < nv ? r0[j] : 0;
                d[2 * j + 1] = j < nv && has1 ? r1[j] : 0;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------------
 * The run-time choice on AVX-512 builds: VDPBF16PS where the CPU has AVX512-BF16 (through inline assembly,
 * so builds for CPUs without it still hold it), else its emulation; the same bits either way. */
#if defined(__AVX512F__) && defined(__GNUC__)
#include <cpuid.h>
#define BD_HAVE_HW 1
static int bd_hw_on = 0;
static int bd_cpu_bf16(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 5) & 1u;   /* CPUID.(EAX=7, ECX=1):EAX[5] AVX512_BF16 */
}
static int bd_set_hw(int want)
{
    bd_hw_on = want && bd_cpu_bf16();
    return bd_hw_on;
}
#else
#define BD_HAVE_HW 0
static const int bd_hw_on = 0;
static int bd_set_hw(int want) { (void)want; return 0; }
#endif

#if defined(__AVX512F__)
/* acc + pairs(x) . pairs(w) lane by lane: 16 outputs, one pair each */
static inline __attribute__((always_inline)) __m512 bd_dp512(__m512 acc, __m512i x, __m512i w, const int hw)
{
#if BD_HAVE_HW
    if (hw) {
        __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
        return acc;
    }
#endif
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(x, hi)), _mm512_castsi512_ps(_mm512_and_si512(w, hi)), acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), acc);
}
#endif

/* ------------------------------------------------------------------------------------------------------
 * Tile (where the instruction runs; elsewhere prefills take the swapped floats through _gemm.h's f32 tile):
 * acc[i][j] = the chain over the kp pairs of a's row i and b's column j, then gemm_tile_store.
 *   a: [MR, 2 kp] bf16 row stride lda (even);  b: one packed panel [kp, NR] pairs */
#if BD_HAVE_HW
static void bd_tile(ptrdiff_t kc, const uint16_t *a, ptrdiff_t lda, const uint16_t *b, float *c, ptrdiff_t ldc,
                    const float *bias, int first, int accumulate)
{
    ptrdiff_t kp = (kc + 1) >> 1;
    __m512 acc[16];
    for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    for (ptrdiff_t p = 0; p < kp; p++) {
        __m512i b0 = _mm512_loadu_si512(b + p * 64), b1 = _mm512_loadu_si512(b + p * 64 + 32);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m512i av = _mm512_set1_epi32((int)bd_pair(a + i * lda, p));
            acc[2 * i] = bd_dp512(acc[2 * i], av, b0, 1);
            acc[2 * i + 1] = bd_dp512(acc[2 * i + 1], av, b1, 1);
        }
    }
    gemm_tile_store(acc, c, ldc, bias, first, accumulate);
}
#else
static void bd_tile(ptrdiff_t kc, const uint16_t *a, ptrdiff_t lda, const uint16_t *b, float *c, ptrdiff_t ldc,
                    const float *bias, int first, int accumulate)
{   /* never called: bd_hw_on is 0 in this build */
    (void)kc; (void)a; (void)lda; (void)b; (void)c; (void)ldc; (void)bias; (void)first; (void)accumulate;
}
#endif

/* ------------------------------------------------------------------------------------------------------
 * Matrix-vector block (decode, and the few rows of a batch's step): for each of mr <= GEMM_MV_MAXM rows,
 * blk[m * ldb + j] = the chain over the pairs of x's row m (kc inputs) and column j of w, j < nc.
 *   x: [mr, kc (+1 when odd)] bf16 row stride ldx (even);  w: [kc, nc] bf16 row stride ldw;
 *   blk: [mr, nc] row stride ldb (overwritten)
 */

/* one column j of every row of x, in natural order (the tails of the vector paths, and portable builds) */
static inline void bd_mv_column(ptrdiff_t mr, ptrdiff_t kc, const uint16_t *x, ptrdiff_t ldx, const uint16_t *w,
                                ptrdiff_t ldw, ptrdiff_t j, float *blk, ptrdiff_t ldb)
{
    ptrdiff_t kp = (kc + 1) >> 1;
    for (ptrdiff_t m = 0; m < mr; m++) {
        const uint16_t *xm = x + m * ldx;
        float v = 0.0f;
        for (ptrdiff_t p = 0; p < kp; p++) {
            uint32_t xa = bd_pair(xm, p);
            float wh = 2 * p + 1 < kc ? lp_bf16_to_f32(w[(2 * p + 1) * ldw + j]) : 0.0f;
            v = GPT2CY_MADD(bd_hi(xa), wh, v);
            v = GPT2CY_MADD(bd_lo(xa), lp_bf16_to_f32(w[2 * p * ldw + j]), v);
        }
        blk[m * ldb + j] = v;
    }
}

#if defined(__AVX512F__)

/* The next 8 rows of w, at the columns being read, are a whole pass over blk ahead (16 bytes a column: 37 KB
 * for GPT-2's 2304-wide c_attn), more than an L1 holds: into L2.  Zen 4, one row from DRAM at 2 threads,
 * four alternations: 22.4-27.1 GB/s into L1, 27.8-33.9 into L2; whole-model bf16 decode 74-79 -> 99-100 tok/s. */
#define BD_PF_HINT _MM_HINT_T1
/* G pairs (2G rows of w, from pair p; the last pair's odd row absent when `half`) against every 32-column
 * chunk of blk (< nv) for every row of x; the next 2G rows of w prefetched while these stream */
static inline __attribute__((always_inline)) void bd_mv_pass512(const int G, const int hw, ptrdiff_t mr, ptrdiff_t p,
    int half, const uint16_t *x, ptrdiff_t ldx, const uint16_t *w, ptrdiff_t ldw, ptrdiff_t nv, float *blk,
    ptrdiff_t ldb)
{
    __m512i xs[4];
    if (mr == 1)
        for (int g = 0; g < G; g++) xs[g] = _mm512_set1_epi32((int)bd_pair(x, p + g));
    for (ptrdiff_t j = 0; j < nv; j += 32) {
        __m512i wl[4], wh[4];
        const uint16_t *r = w + 2 * p * ldw + j;
#pragma GCC unroll 4
        for (int g = 0; g < G; g++, r += 2 * ldw) {
            __m512i v0 = _mm512_loadu_si512(r);
            __m512i v1 = half && g == G - 1 ? _mm512_setzero_si512() : _mm512_loadu_si512(r + ldw);
            wl[g] = _mm512_unpacklo_epi16(v0, v1);
            wh[g] = _mm512_unpackhi_epi16(v0, v1);
            if (G == 4) {
                _mm_prefetch((const char *)(r + 8 * ldw), BD_PF_HINT);
                _mm_prefetch((const char *)(r + 9 * ldw), BD_PF_HINT);
            }
        }
        for (ptrdiff_t m = 0; m < mr; m++) {
            float *bm = blk + m * ldb + j;
            __m512 a = _mm512_loadu_ps(bm), b = _mm512_loadu_ps(bm + 16);
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) {
                __m512i xv = mr == 1 ? xs[g] : _mm512_set1_epi32((int)bd_pair(x + m * ldx, p + g));
                a = bd_dp512(a, xv, wl[g], hw);
                b = bd_dp512(b, xv, wh[g], hw);
            }
            _mm512_storeu_ps(bm, a);
            _mm512_storeu_ps(bm + 16, b);
        }
    }
}

static inline __attribute__((always_inline)) void bd_mv_impl(ptrdiff_t mr, ptrdiff_t kc, const uint16_t *x,
    ptrdiff_t ldx, const uint16_t *w, ptrdiff_t ldw, ptrdiff_t nc, float *blk, ptrdiff_t ldb, const int hw)
{
    ptrdiff_t nv = nc & ~(ptrdiff_t)31, kp = kc >> 1, p = 0;
    for (ptrdiff_t m = 0; m < mr; m++)
        memset(blk + m * ldb, 0, (size_t)nv * sizeof(float));
    for (; p + 4 <= kp; p += 4) bd_mv_pass512(4, hw, mr, p, 0, x, ldx, w, ldw, nv, blk, ldb);
    for (; p < kp; p++) bd_mv_pass512(1, hw, mr, p, 0, x, ldx, w, ldw, nv, blk, ldb);
    if (kc & 1) bd_mv_pass512(1, hw, mr, p, 1, x, ldx, w, ldw, nv, blk, ldb);
    /* the sums back in column order */
    const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (ptrdiff_t m = 0; m < mr; m++)
        for (ptrdiff_t j = 0; j < nv; j += 32) {
            float *bm = blk + m * ldb + j;
            __m512 a = _mm512_loadu_ps(bm), b = _mm512_loadu_ps(bm + 16);
            _mm512_storeu_ps(bm, _mm512_permutex2var_ps(a, i0, b));
            _mm512_storeu_ps(bm + 16, _mm512_permutex2var_ps(a, i1, b));
        }
    for (ptrdiff_t j = nv; j < nc; j++) bd_mv_column(mr, kc, x, ldx, w, ldw, j, blk, ldb);
}
static void bd_mv_hw(ptrdiff_t mr, ptrdiff_t kc, const uint16_t *x, ptrdiff_t ldx, const uint16_t *w,
                     ptrdiff_t ldw, ptrdiff_t nc, float *blk, ptrdiff_t ldb)
{
    bd_mv_impl(mr, kc, x, ldx, w, ldw, nc, blk, ldb, 1);
}
static void bd_mv_emu(ptrdiff_t mr, ptrdiff_t kc, const uint16_t *x, ptrdiff_t ldx, const uint16_t *w,
                      ptrdiff_t ldw, ptrdiff_t nc, float *blk, ptrdiff_t ldb)
{
    bd_mv_impl(mr, kc, x, ldx, w, ldw, nc, blk, ldb, 0);
}
static inline void bd_mv_block(ptrdiff_t mr, ptrdiff_t kc, const uint16_t *x, ptrdiff_t ldx, const uint16_t *w,
                               ptrdiff_t ldw, ptrdiff_t nc, float *blk, ptrdiff_t ldb)
{
    if (bd_hw_on) bd_mv_hw(mr, kc, x, ldx, w, ldw, nc, blk, ldb);
    else bd_mv_emu(mr, kc, x, ldx, w, ldw, nc, blk, ldb);
}

#elif LP_AVX2

/* rows widened in column order (no pairing needed when emulating): per pair, the odd row's product first */
static void bd_mv_block(ptrdiff_t mr, ptrdiff_t kc, const uint16_t *x, ptrdiff_t ldx, const uint16_t *w,
                        ptrdiff_t ldw, ptrdiff_t nc, float *blk, ptrdiff_t ldb)
{
    ptrdiff_t nv = nc & ~(ptrdiff_t)7, kp = kc >> 1, p = 0;
    for (ptrdiff_t m = 0; m < mr; m++)
        memset(blk + m * ldb, 0, (size_t)nv * sizeof(float));
    float xf[GEMM_MV_MAXM][8];   /* the pass's inputs as floats, odd element first (mr <= GEMM_MV_MAXM) */
    for (; p + 4 <= kp; p += 4) {   /* 8 rows of w per pass, as the f32 path */
        const uint16_t *w0 = w + 2 * p * ldw;
        for (ptrdiff_t m = 0; m < mr; m++)
            for (int g = 0; g < 4; g++) {
                uint32_t xa = bd_pair(x + m * ldx, p + g);
                xf[m][2 * g] = bd_hi(xa);
                xf[m][2 * g + 1] = bd_lo(xa);
            }
        for (ptrdiff_t j = 0; j < nv; j += 8) {
            __m256 ws[8];
            const uint16_t *wp = w0 + j;
            if ((j & 31) == 0)   /* the next 8 rows, one prefetch a 64-byte line (M = 1: 1.07-1.09x on Zen 4) */
                for (int r = 8; r < 16; r++) _mm_prefetch((const char *)(wp + r * ldw), _MM_HINT_T1);
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++, wp += ldw) ws[r] = lp_bf16x8(wp);
            ptrdiff_t m = 0;
            for (; m + 4 <= mr; m += 4) {   /* four independent chains (one would wait on FMA latency) */
                float *b0 = blk + m * ldb + j;
                __m256 a0 = _mm256_loadu_ps(b0), a1 = _mm256_loadu_ps(b0 + ldb);
                __m256 a2 = _mm256_loadu_ps(b0 + 2 * ldb), a3 = _mm256_loadu_ps(b0 + 3 * ldb);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    __m256 wr = ws[r ^ 1];   /* step r: x[2g+1] w[2g+1] for even r, x[2g] w[2g] for odd */
                    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&xf[m][r]), wr, a0);
                    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(&xf[m + 1][r]), wr, a1);
                    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(&xf[m + 2][r]), wr, a2);
                    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(&xf[m + 3][r]), wr, a3);
                }
                _mm256_storeu_ps(b0, a0);
                _mm256_storeu_ps(b0 + ldb, a1);
                _mm256_storeu_ps(b0 + 2 * ldb, a2);
                _mm256_storeu_ps(b0 + 3 * ldb, a3);
            }
            for (; m < mr; m++) {
                float *bm = blk + m * ldb + j;
                __m256 v = _mm256_loadu_ps(bm);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) v = _mm256_fmadd_ps(_mm256_broadcast_ss(&xf[m][r]), ws[r ^ 1], v);
                _mm256_storeu_ps(bm, v);
            }
        }
    }
    for (; p < (kc + 1) >> 1; p++) {
        const uint16_t *w0 = w + 2 * p * ldw;
        int has1 = 2 * p + 1 < kc;
        for (ptrdiff_t j = 0; j < nv; j += 8) {
            __m256 wl = lp_bf16x8(w0 + j), wh = has1 ? lp_bf16x8(w0 + ldw + j) : _mm256_setzero_ps();
            for (ptrdiff_t m = 0; m < mr; m++) {
                uint32_t xa = bd_pair(x + m * ldx, p);
                float *bm = blk + m * ldb + j;
                __m256 v = _mm256_fmadd_ps(_mm256_set1_ps(bd_hi(xa)), wh, _mm256_loadu_ps(bm));
                _mm256_storeu_ps(bm, _mm256_fmadd_ps(_mm256_set1_ps(bd_lo(xa)), wl, v));
            }
        }
    }
    for (ptrdiff_t j = nv; j < nc; j++) bd_mv_column(mr, kc, x, ldx, w, ldw, j, blk, ldb);
}

#else

static void bd_mv_block(ptrdiff_t mr, ptrdiff_t kc, const uint16_t *x, ptrdiff_t ldx, const uint16_t *w,
                        ptrdiff_t ldw, ptrdiff_t nc, float *blk, ptrdiff_t ldb)
{
    for (ptrdiff_t m = 0; m < mr; m++)
        memset(blk + m * ldb, 0, (size_t)nc * sizeof(float));
    for (ptrdiff_t p = 0; p < (kc + 1) >> 1; p++) {
        const uint16_t *w0 = w + 2 * p * ldw, *w1 = w0 + ldw;
        int has1 = 2 * p + 1 < kc;
        for (ptrdiff_t m = 0; m < mr; m++) {
            uint32_t xa = bd_pair(x + m * ldx, p);
            float xh = bd_hi(xa), xl = bd_lo(xa);
            float *bm = blk + m * ldb;
            for (ptrdiff_t j = 0; j < nc; j++) {
                float v = GPT2CY_MADD(xh, has1 ? lp_bf16_to_f32(w1[j]) : 0.0f, bm[j]);
                bm[j] = GPT2CY_MADD(xl, lp_bf16_to_f32(w0[j]), v);
            }
        }
    }
}

#endif

#endif
