/* gpt2cy/engine/_gemm.h: register-blocked micro-kernels for gpt2cy/engine/_matmul.pyx (our own code, no BLAS).
 *
 * Three builds of the same arithmetic, picked by the compiler's ISA macros:
 *   AVX-512F  8x32 tile, 16 zmm accumulators, FMA        (what -march=native gives on Zen 4/5, Skylake-X)
 *   AVX2+FMA  6x16 tile, 12 ymm accumulators, FMA
 *   portable  4x8 tile, GCC/Clang 4-wide vector extensions (SSE2, NEON, ...), else plain C
 *             (GPT2CY_PORTABLE=1 builds, non-x86 CPUs, other compilers)
 *
 * Determinism contract (what the Cython driver relies on): every output element is accumulated by ONE
 * chain, acc = madd(x[k], w[k], acc) for k = 0, 1, ... inside a K block (starting from 0), and the K blocks
 * are combined into the output in increasing order.  No code path here depends on the thread count, and the
 * matrix-vector kernel performs exactly the same operations per element as the tile kernel, so a row
 * computed alone (decode) has the same bits as the same row inside a prefill.
 */
#ifndef GPT2CY_GEMM_H
#define GPT2CY_GEMM_H

#include <stddef.h>
#include <string.h>
#include <math.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

/* madd(a, b, c) = a*b + c, fused where the CPU has FMA (see _madd.h, shared with the attention kernels).
 * Used by the portable paths; the SIMD paths use FMA intrinsics. */
#include "_madd.h"
#define GEMM_MADD(a, b, c) GPT2CY_MADD(a, b, c)
#define GEMM_FUSED GPT2CY_FUSED

#define GEMM_KC 192          /* K block: 8 rows of x (6 KiB) stay in L1 while a packed w block streams from L2 */
#define GEMM_NC_MAX 512      /* widest packed w block per thread: KC x 512 floats = 384 KiB, in Zen 5's 1 MiB L2 */
#define GEMM_TPT 4            /* column tasks per thread: dynamic scheduling evens out a busy core */
#define GEMM_MV_CHUNK 4096   /* matrix-vector: partial sums held at once (16 KiB): long runs of each row of w */
#define GEMM_MV_ROWCOLS 8192 /* matrix-vector, column path: columns per chunk at most (whole rows of w) */
#define GEMM_MV_R 8          /* matrix-vector: rows of w per pass (fewer measured 10-50% slower from DRAM) */

#if defined(__AVX512F__)
#define GEMM_MR 8
#define GEMM_NR 32
#define GEMM_ISA "avx512f"
#elif defined(__AVX2__) && defined(__FMA__)
#define GEMM_MR 6
#define GEMM_NR 16
#define GEMM_ISA "avx2+fma"
#elif defined(__GNUC__)
#define GEMM_MR 4
#define GEMM_NR 8
#define GEMM_ISA "portable-vec4"
#else
#define GEMM_MR 4
#define GEMM_NR 8
#define GEMM_ISA "portable"
#endif

/* Packing buffers: 64-byte aligned (the tile kernels use aligned loads on packed panels). The raw malloc
 * pointer is stored just before the aligned block.  n: floats; returns NULL when out of memory. */
#include <stdlib.h>
#include <stdint.h>
static float *gemm_buf_alloc(size_t n)
{
    void *raw = malloc(n * sizeof(float) + 64 + sizeof(void *));
    if (raw == NULL) return NULL;
    uintptr_t p = ((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63;
    ((void **)p)[-1] = raw;
    return (float *)p;
}
static void gemm_buf_free(float *buf)
{
    if (buf != NULL) free(((void **)buf)[-1]);
}
/* the same alignment for a caller-provided stack array of n + 16 floats */
static float *gemm_align64(float *p)
{
    return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

/* ------------------------------------------------------------------------------------------------------
 * Packing: a block of w becomes ceil(nc/NR) panels, each kc x NR contiguous (row k of the panel = NR
 * consecutive output columns), columns past nc zero-filled so the tile kernel never reads out of bounds.
 */

/* w: [kc rows, nc cols] with row stride ldw (checkpoint layout [in, out]);  dst: [ceil(nc/NR), kc, NR] */
static void gemm_pack_b(const float *w, ptrdiff_t ldw, ptrdiff_t kc, ptrdiff_t nc, float *dst)
{
    ptrdiff_t n_panels = (nc + GEMM_NR - 1) / GEMM_NR;
    for (ptrdiff_t k = 0; k < kc; k++) {
        const float *src = w + k * ldw;
        for (ptrdiff_t p = 0; p < n_panels; p++) {
            float *d = dst + (p * kc + k) * GEMM_NR;
            ptrdiff_t j0 = p * GEMM_NR, nv = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
            if (nv == GEMM_NR) {
                memcpy(d, src + j0, GEMM_NR * sizeof(float));
            } else {
                memcpy(d, src + j0, (size_t)nv * sizeof(float));
                memset(d + nv, 0, (size_t)(GEMM_NR - nv) * sizeof(float));
            }
        }
    }
}

/* wt: [nc rows, kc cols] with row stride ldwt (the tied lm_head: row n of wte is output column n);
 * dst as above (transposed while packing) */
static void gemm_pack_bt(const float *wt, ptrdiff_t ldwt, ptrdiff_t kc, ptrdiff_t nc, float *dst)
{
    ptrdiff_t n_panels = (nc + GEMM_NR - 1) / GEMM_NR;
    for (ptrdiff_t p = 0; p < n_panels; p++) {
        float *d = dst + p * kc * GEMM_NR;
        ptrdiff_t j0 = p * GEMM_NR, nv = nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR;
        ptrdiff_t j = 0;
#if defined(__AVX__)
        /* 8 rows x 8 k at a time through an in-register 8x8 transpose */
        for (; j + 8 <= nv; j += 8) {
            const float *src = wt + (j0 + j) * ldwt;
            ptrdiff_t k = 0;
            for (; k + 8 <= kc; k += 8) {
                __m256 r0 = _mm256_loadu_ps(src + k), r1 = _mm256_loadu_ps(src + ldwt + k);
                __m256 r2 = _mm256_loadu_ps(src + 2 * ldwt + k), r3 = _mm256_loadu_ps(src + 3 * ldwt + k);
                __m256 r4 = _mm256_loadu_ps(src + 4 * ldwt + k), r5 = _mm256_loadu_ps(src + 5 * ldwt + k);
                __m256 r6 = _mm256_loadu_ps(src + 6 * ldwt + k), r7 = _mm256_loadu_ps(src + 7 * ldwt + k);
                __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
                __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                float *o = d + k * GEMM_NR + j;
                _mm256_storeu_ps(o + 0 * GEMM_NR, _mm256_permute2f128_ps(u0, u4, 0x20));
                _mm256_storeu_ps(o + 1 * GEMM_NR, _mm256_permute2f128_ps(u1, u5, 0x20));
                _mm256_storeu_ps(o + 2 * GEMM_NR, _mm256_permute2f128_ps(u2, u6, 0x20));
                _mm256_storeu_ps(o + 3 * GEMM_NR, _mm256_permute2f128_ps(u3, u7, 0x20));
                _mm256_storeu_ps(o + 4 * GEMM_NR, _mm256_permute2f128_ps(u0, u4, 0x31));
                _mm256_storeu_ps(o + 5 * GEMM_NR, _mm256_permute2f128_ps(u1, u5, 0x31));
                _mm256_storeu_ps(o + 6 * GEMM_NR, _mm256_permute2f128_ps(u2, u6, 0x31));
                _mm256_storeu_ps(o + 7 * GEMM_NR, _mm256_permute2f128_ps(u3, u7, 0x31));
            }
            for (; k < kc; k++)
                for (ptrdiff_t r = 0; r < 8; r++)
                    d[k * GEMM_NR + j + r] = src[r * ldwt + k];
        }
#endif
        for (; j < nv; j++) {
            const float *src = wt + (j0 + j) * ldwt;
            for (ptrdiff_t k = 0; k < kc; k++)
                d[k * GEMM_NR + j] = src[k];
        }
        for (ptrdiff_t j = nv; j < GEMM_NR; j++)
            for (ptrdiff_t k = 0; k < kc; k++)
                d[k * GEMM_NR + j] = 0.0f;
    }
}

/* ------------------------------------------------------------------------------------------------------
 * Tile kernel: acc[i][j] = sum_{k<kc} a[i*lda + k] * b[k*NR + j]   (i < MR, j < NR; one chain per element)
 * then the epilogue on c (row stride ldc), the same one the matrix-vector path uses:
 *   first K block: c = [c +] (acc [+ bias[j]])      ("c +" when accumulate: the fused residual add)
 *   later blocks:  c = c + acc
 *   a:    [MR, kc] row stride lda (rows of x, or a zero-padded copy for the last rows)
 *   b:    [kc, NR] one packed panel
 *   bias: [NR] or NULL (read only in the first block)
 */
#if defined(__AVX512F__)

/* the tile's epilogue (shared with _bf16dot.h's tile): acc[2i], acc[2i+1] = row i's 32 sums */
static inline void gemm_tile_store(const __m512 *acc, float *c, ptrdiff_t ldc, const float *bias, int first,
                                   int accumulate)
{
    __m512 bb0 = _mm512_setzero_ps(), bb1 = _mm512_setzero_ps();
    int use_bias = first && bias != NULL;
    if (use_bias) { bb0 = _mm512_loadu_ps(bias); bb1 = _mm512_loadu_ps(bias + 16); }
    for (int i = 0; i < 8; i++) {
        float *ci = c + i * ldc;
        __m512 v0 = acc[2 * i], v1 = acc[2 * i + 1];
        if (use_bias) { v0 = _mm512_add_ps(v0, bb0); v1 = _mm512_add_ps(v1, bb1); }
        if (!first || accumulate) {
            v0 = _mm512_add_ps(_mm512_loadu_ps(ci), v0);
            v1 = _mm512_add_ps(_mm512_loadu_ps(ci + 16), v1);
        }
        _mm512_storeu_ps(ci, v0);
        _mm512_storeu_ps(ci + 16, v1);
    }
}


static inline void gemm_tile(ptrdiff_t kc, const float *a, ptrdiff_t lda, const float *b,
                             float *c, ptrdiff_t ldc, const float *bias, int first, int accumulate)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(),
           c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(),
           c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps(),
           c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps(),
           c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps(),
           c71 = _mm512_setzero_ps();
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    const float *a4 = a + 4 * lda, *a5 = a + 5 * lda, *a6 = a + 6 * lda, *a7 = a + 7 * lda;
    for (ptrdiff_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b + k * 32), b1 = _mm512_load_ps(b + k * 32 + 16), av;
        av = _mm512_set1_ps(a0[k]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01);
        av = _mm512_set1_ps(a1[k]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11);
        av = _mm512_set1_ps(a2[k]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21);
        av = _mm512_set1_ps(a3[k]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31);
        av = _mm512_set1_ps(a4[k]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41);
        av = _mm512_set1_ps(a5[k]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51);
        av = _mm512_set1_ps(a6[k]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61);
        av = _mm512_set1_ps(a7[k]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71);
    }
    __m512 acc[16] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71};
    gemm_tile_store(acc, c, ldc, bias, first, accumulate);
}

#elif defined(__AVX2__) && defined(__FMA__)

/* the tile's epilogue (shared with _bf16dot.h's tile): acc[2i], acc[2i+1] = row i's 16 sums */
static inline void gemm_tile_store(const __m256 *acc, float *c, ptrdiff_t ldc, const float *bias, int first,
                                   int accumulate)
{
    __m256 bb0 = _mm256_setzero_ps(), bb1 = _mm256_setzero_ps();
    int use_bias = first && bias != NULL;
    if (use_bias) { bb0 = _mm256_loadu_ps(bias); bb1 = _mm256_loadu_ps(bias + 8); }
    for (int i = 0; i < 6; i++) {
        float *ci = c + i * ldc;
        __m256 v0 = acc[2 * i], v1 = acc[2 * i + 1];
        if (use_bias) { v0 = _mm256_add_ps(v0, bb0); v1 = _mm256_add_ps(v1, bb1); }
        if (!first || accumulate) {
            v0 = _mm256_add_ps(_mm256_loadu_ps(ci), v0);
            v1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), v1);
        }
        _mm256_storeu_ps(ci, v0);
        _mm256_storeu_ps(ci + 8, v1);
    }
}

static inline void gemm_tile(ptrdiff_t kc, const float *a, ptrdiff_t lda, const float *b,
                             float *c, ptrdiff_t ldc, const float *bias, int first, int accumulate)
{
    __m256 acc[12];
    for (int t = 0; t < 12; t++) acc[t] = _mm256_setzero_ps();
    for (ptrdiff_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b + k * 16), b1 = _mm256_load_ps(b + k * 16 + 8);
#pragma GCC unroll 6
        for (int i = 0; i < 6; i++) {
            __m256 av = _mm256_broadcast_ss(a + i * lda + k);
            acc[2 * i] = _mm256_fmadd_ps(av, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(av, b1, acc[2 * i + 1]);
        }
    }
    gemm_tile_store(acc, c, ldc, bias, first, accumulate);
}

#endif

#if !defined(__AVX512F__) && !(defined(__AVX2__) && defined(__FMA__))
/* the tile's epilogue (shared with _bf16dot.h's tile): tile[i][j] = the sum of row i, column j */
static inline void gemm_tile_store(float tile[GEMM_MR][GEMM_NR], float *c, ptrdiff_t ldc, const float *bias,
                                   int first, int accumulate)
{
    int use_bias = first && bias != NULL;
    for (int i = 0; i < GEMM_MR; i++) {
        float *ci = c + i * ldc;
        for (int j = 0; j < GEMM_NR; j++) {
            float v = tile[i][j];
            if (use_bias) v = v + bias[j];
            if (!first || accumulate) v = ci[j] + v;
            ci[j] = v;
        }
    }
}
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#elif defined(__GNUC__)

/* GCC/Clang vector extensions: 4-wide on any target (SSE2, NEON, ...); 8 accumulators fit 16 registers.
 * GEMM_VMADD rounds exactly like GEMM_MADD lane by lane (fused where the CPU has FMA). */
typedef float gemm_v4 __attribute__((vector_size(16)));
#if GEMM_FUSED
static inline gemm_v4 gemm_vmadd(gemm_v4 a, gemm_v4 b, gemm_v4 c)
{
    gemm_v4 r = {__builtin_fmaf(a[0], b[0], c[0]), __builtin_fmaf(a[1], b[1], c[1]),
                 __builtin_fmaf(a[2], b[2], c[2]), __builtin_fmaf(a[3], b[3], c[3])};
    return r;
}
#define GEMM_VMADD(a, b, c) gemm_vmadd((a), (b), (c))
#else
#define GEMM_VMADD(a, b, c) ((a) * (b) + (c))
#endif

static inline void gemm_tile(ptrdiff_t kc, const float *a, ptrdiff_t lda, const float *b,
                             float *c, ptrdiff_t ldc, const float *bias, int first, int accumulate)
{
    gemm_v4 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    for (ptrdiff_t k = 0; k < kc; k++) {
        gemm_v4 b0, b1, av;
        memcpy(&b0, b + k * 8, sizeof(b0));
        memcpy(&b1, b + k * 8 + 4, sizeof(b1));
        av = (gemm_v4){a0[k], a0[k], a0[k], a0[k]}; c00 = GEMM_VMADD(av, b0, c00); c01 = GEMM_VMADD(av, b1, c01);
        av = (gemm_v4){a1[k], a1[k], a1[k], a1[k]}; c10 = GEMM_VMADD(av, b0, c10); c11 = GEMM_VMADD(av, b1, c11);
        av = (gemm_v4){a2[k], a2[k], a2[k], a2[k]}; c20 = GEMM_VMADD(av, b0, c20); c21 = GEMM_VMADD(av, b1, c21);
        av = (gemm_v4){a3[k], a3[k], a3[k], a3[k]}; c30 = GEMM_VMADD(av, b0, c30); c31 = GEMM_VMADD(av, b1, c31);
    }
    gemm_v4 acc[8] = {c00, c01, c10, c11, c20, c21, c30, c31};
    float tile[GEMM_MR][GEMM_NR];
    memcpy(tile, acc, sizeof(tile));
    gemm_tile_store(tile, c, ldc, bias, first, accumulate);
}

#else

static inline void gemm_tile(ptrdiff_t kc, const float *a, ptrdiff_t lda, const float *b,
                             float *c, ptrdiff_t ldc, const float *bias, int first, int accumulate)
{
    float acc[GEMM_MR][GEMM_NR];
    memset(acc, 0, sizeof(acc));
    for (ptrdiff_t k = 0; k < kc; k++) {
        const float *bk = b + k * GEMM_NR;
        for (int i = 0; i < GEMM_MR; i++) {
            float av = a[i * lda + k];
            for (int j = 0; j < GEMM_NR; j++)
                acc[i][j] = GEMM_MADD(av, bk[j], acc[i][j]);
        }
    }
    gemm_tile_store(acc, c, ldc, bias, first, accumulate);
}

#endif

/* ------------------------------------------------------------------------------------------------------
 * Matrix-vector block (decode, a batch's rows, prompt chunks): for each of mr <= GEMM_MV_MAXM rows of x,
 * blk[m*ldb + j] = sum_{k<kc} x[m*ldx + k] * w[k*ldw + j] for j < nc, the same single chain per element as
 * gemm_tile.  Eight rows of w stream at once (contiguous segments, each loaded once for all mr rows of x);
 * blk lives in L1 for a few rows, in L2 for many.
 *   x: [mr, kc] row stride ldx;  w: [kc, nc] row stride ldw;  blk: [mr, nc] row stride ldb (overwritten)
 */
/* Rows that stream w once (prompt chunks, big batches) instead of taking the packed tiles, which repack every
 * w block for a few row blocks only.  Zen 4, 2 threads, 124M's 48 block matmuls, tiled -> streamed:
 *   512-bit: f32 17 / 32 / 64 rows 38-43 / 45-57 / 68-84 -> 18-22 / 31-38 / 58-69 ms, bf16 22-25 / 25-28 /
 *   38-43 -> 10-11 / 19-22 / 33; and f32 65-128 rows as two streamed halves 1.04-1.15x the tiles;
 *   256-bit (-march=haswell on the same machine): bf16 17 / 32 / 64 rows 53 / 83 / 121 -> 35 / 61 / 128 ms;
 *   f32 32 rows 74-86 -> 43-49 ms (the 16-column several-rows loop below), and at 48-64 rows a tie with the
 *   tiles, as were two streamed halves at 96: so it stops at 32.
 * The portable build keeps the 16 rows it was written for. */
#if defined(__AVX512F__)
#define GEMM_MV_MAXM 64
#define GEMM_MV_HALVES 1
#elif defined(__AVX2__) && defined(__FMA__)
#define GEMM_MV_MAXM 32
#define GEMM_MV_HALVES 0
#else
#define GEMM_MV_MAXM 16
#define GEMM_MV_HALVES 0
#endif

#if defined(__AVX512F__)
/* gemm_mv_block for MR = 2 or 3 rows of x (two or three sequences in a step): as the one-row pass, GEMM_MV_R
 * rows of w a pass over blk with every row of x's values in registers (3 x 8 broadcasts), each w vector
 * loaded once for the MR rows, the next pass's rows prefetched into L2.  The 8-rows-by-32-columns loop below
 * ran each row of x as two chains of 8 dependent FMAs, waiting on latency at these row counts (Zen 4, 124M's
 * 48 block matmuls from DRAM, one thread, 2 rows: 14.9 -> 13.9 ms).  One chain per element, k in order: the
 * one-row bits.  Returns the k where the caller's leftover loop starts. */
static inline __attribute__((always_inline)) ptrdiff_t
gemm_mv_rows23(const int MR, ptrdiff_t kc, const float *x, ptrdiff_t ldx, const float *w, ptrdiff_t ldw,
               ptrdiff_t nc, float *blk, ptrdiff_t ldb)
{
    ptrdiff_t nv = nc & ~(ptrdiff_t)15, k = 0;
    __mmask16 tail = (__mmask16)((1u << (nc - nv)) - 1u);
    for (; k + GEMM_MV_R <= kc; k += GEMM_MV_R) {
        const float *w0 = w + k * ldw;
        __m512 xs[3][GEMM_MV_R];
        for (int m = 0; m < MR; m++)
            for (int r = 0; r < GEMM_MV_R; r++) xs[m][r] = _mm512_set1_ps(x[m * ldx + k + r]);
        ptrdiff_t j = 0;
        for (; j < nv; j += 16) {
            __m512 v[3];
            for (int m = 0; m < MR; m++) v[m] = _mm512_loadu_ps(blk + m * ldb + j);
#pragma GCC unroll 8
            for (int r = 0; r < GEMM_MV_R; r++)
                _mm_prefetch((const char *)(w0 + (GEMM_MV_R + r) * ldw + j), _MM_HINT_T1);
#pragma GCC unroll 8
            for (int r = 0; r < GEMM_MV_R; r++) {
                __m512 wv = _mm512_loadu_ps(w0 + r * ldw + j);
                for (int m = 0; m < MR; m++) v[m] = _mm512_fmadd_ps(xs[m][r], wv, v[m]);
            }
            for (int m = 0; m < MR; m++) _mm512_storeu_ps(blk + m * ldb + j, v[m]);
        }
        if (tail) {
            __m512 v[3];
            for (int m = 0; m < MR; m++) v[m] = _mm512_maskz_loadu_ps(tail, blk + m * ldb + j);
            for (int r = 0; r < GEMM_MV_R; r++) {
                __m512 wv = _mm512_maskz_loadu_ps(tail, w0 + r * ldw + j);
                for (int m = 0; m < MR; m++) v[m] = _mm512_fmadd_ps(xs[m][r], wv, v[m]);
            }
            for (int m = 0; m < MR; m++) _mm512_mask_storeu_ps(blk + m * ldb + j, tail, v[m]);
        }
    }
    return k;
}
#endif

static void gemm_mv_block(ptrdiff_t mr, ptrdiff_t kc, const float *x, ptrdiff_t ldx, const float *w,
                          ptrdiff_t ldw, ptrdiff_t nc, float *blk, ptrdiff_t ldb)
{
    for (ptrdiff_t m = 0; m < mr; m++)
        memset(blk + m * ldb, 0, (size_t)nc * sizeof(float));
    ptrdiff_t k = 0;
#if defined(__AVX512F__)
    ptrdiff_t nv = nc & ~(ptrdiff_t)15;
    __mmask16 tail = (__mmask16)((1u << (nc - nv)) - 1u);
    if (mr == 1) {   /* decode: GEMM_MV_R rows of w per pass over blk, their x values in registers; the next
                      * pass's rows prefetched into L2 (Zen 4, 2 threads, 124M's 48 block matmuls, in one
                      * process alternating with the hardware prefetchers alone: a decode step 13.2 -> 11.8 ms) */
        for (; k + GEMM_MV_R <= kc; k += GEMM_MV_R) {
            const float *w0 = w + k * ldw;
            __m512 xs[GEMM_MV_R];
            for (int r = 0; r < GEMM_MV_R; r++) xs[r] = _mm512_set1_ps(x[k + r]);
            ptrdiff_t j = 0;
            for (; j < nv; j += 16) {
                __m512 v = _mm512_loadu_ps(blk + j);
#pragma GCC unroll 8
                for (int r = 0; r < GEMM_MV_R; r++)   /* the next pass's rows, into L2 (see above) */
                    _mm_prefetch((const char *)(w0 + (GEMM_MV_R + r) * ldw + j), _MM_HINT_T1);
#pragma GCC unroll 8
                for (int r = 0; r < GEMM_MV_R; r++)
                    v = _mm512_fmadd_ps(xs[r], _mm512_loadu_ps(w0 + r * ldw + j), v);
                _mm512_storeu_ps(blk + j, v);
            }
            if (tail) {
                __m512 v = _mm512_maskz_loadu_ps(tail, blk + j);
#pragma GCC unroll 8
                for (int r = 0; r < GEMM_MV_R; r++)
                    v = _mm512_fmadd_ps(xs[r], _mm512_maskz_loadu_ps(tail, w0 + r * ldw + j), v);
                _mm512_mask_storeu_ps(blk + j, tail, v);
            }
        }
    }
    if (mr == 2 || mr == 3) {   /* two or three sequences (see gemm_mv_rows23) */
        k = mr == 2 ? gemm_mv_rows23(2, kc, x, ldx, w, ldw, nc, blk, ldb)
                    : gemm_mv_rows23(3, kc, x, ldx, w, ldw, nc, blk, ldb);
    }
    /* a few rows (a batch of sequences): 8 rows x 32 columns of w held in registers, each broadcast x value
     * used for two columns' vectors, so a row of x costs 10 loads per 16 FMAs (one blk chain per element,
     * k in order: the bits of the one-row path).  The next 8 rows are prefetched into L2 (T1): they are a pass
     * over blk ahead (16 KB at 8 rows of x), which with blk fills Zen 4's 32 KB L1; into L1 they were lost
     * before use (Zen 4, 2 threads, 4 / 8 rows of x: 1.2-1.35x / 1.12-1.15x, four alternations) */
    ptrdiff_t nv2 = nc & ~(ptrdiff_t)31;
    for (; mr > 1 && k + 8 <= kc; k += 8) {
        const float *w0 = w + k * ldw;
        for (ptrdiff_t j = 0; j < nv2; j += 32) {
            __m512 wa[8], wb[8];
            const float *wp = w0 + j, *pf = w0 + 8 * ldw + j;
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++, wp += ldw, pf += ldw) {
                wa[r] = _mm512_loadu_ps(wp);
                wb[r] = _mm512_loadu_ps(wp + 16);
                _mm_prefetch((const char *)pf, _MM_HINT_T1);
                _mm_prefetch((const char *)(pf + 16), _MM_HINT_T1);
            }
            ptrdiff_t m = 0;
            /* four rows of x at once: eight independent chains in program order keep both FMA ports busy
             * (one row's two chains of eight dependent FMAs would leave them waiting on latency) */
            for (; m + 4 <= mr; m += 4) {
                const float *x0 = x + m * ldx + k, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
                float *b0 = blk + m * ldb + j, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
                __m512 a0 = _mm512_loadu_ps(b0), c0 = _mm512_loadu_ps(b0 + 16);
                __m512 a1 = _mm512_loadu_ps(b1), c1 = _mm512_loadu_ps(b1 + 16);
                __m512 a2 = _mm512_loadu_ps(b2), c2 = _mm512_loadu_ps(b2 + 16);
                __m512 a3 = _mm512_loadu_ps(b3), c3 = _mm512_loadu_ps(b3 + 16);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    __m512 y0 = _mm512_set1_ps(x0[r]), y1 = _mm512_set1_ps(x1[r]);
                    __m512 y2 = _mm512_set1_ps(x2[r]), y3 = _mm512_set1_ps(x3[r]);
                    a0 = _mm512_fmadd_ps(y0, wa[r], a0);
                    c0 = _mm512_fmadd_ps(y0, wb[r], c0);
                    a1 = _mm512_fmadd_ps(y1, wa[r], a1);
                    c1 = _mm512_fmadd_ps(y1, wb[r], c1);
                    a2 = _mm512_fmadd_ps(y2, wa[r], a2);
                    c2 = _mm512_fmadd_ps(y2, wb[r], c2);
                    a3 = _mm512_fmadd_ps(y3, wa[r], a3);
                    c3 = _mm512_fmadd_ps(y3, wb[r], c3);
                }
                _mm512_storeu_ps(b0, a0); _mm512_storeu_ps(b0 + 16, c0);
                _mm512_storeu_ps(b1, a1); _mm512_storeu_ps(b1 + 16, c1);
                _mm512_storeu_ps(b2, a2); _mm512_storeu_ps(b2 + 16, c2);
                _mm512_storeu_ps(b3, a3); _mm512_storeu_ps(b3 + 16, c3);
            }
            for (; m < mr; m++) {
                const float *xm = x + m * ldx + k;
                float *bm = blk + m * ldb + j;
                __m512 va = _mm512_loadu_ps(bm), vb = _mm512_loadu_ps(bm + 16);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    __m512 xr = _mm512_set1_ps(xm[r]);
                    va = _mm512_fmadd_ps(xr, wa[r], va);
                    vb = _mm512_fmadd_ps(xr, wb[r], vb);
                }
                _mm512_storeu_ps(bm, va);
                _mm512_storeu_ps(bm + 16, vb);
            }
        }
        for (ptrdiff_t j = nv2; j < nc; j += 16) {
            __mmask16 mask = j < nv ? (__mmask16)0xFFFF : tail;
            __m512 ws[8];
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) ws[r] = _mm512_maskz_loadu_ps(mask, w0 + r * ldw + j);
            for (ptrdiff_t m = 0; m < mr; m++) {
                const float *xm = x + m * ldx + k;
                float *bm = blk + m * ldb + j;
                __m512 v = _mm512_maskz_loadu_ps(mask, bm);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++)
                    v = _mm512_fmadd_ps(_mm512_set1_ps(xm[r]), ws[r], v);
                _mm512_mask_storeu_ps(bm, mask, v);
            }
        }
    }
    for (; k < kc; k++) {
        const float *w0 = w + k * ldw;
        for (ptrdiff_t m = 0; m < mr; m++) {
            __m512 x0 = _mm512_set1_ps(x[m * ldx + k]);
            float *bm = blk + m * ldb;
            ptrdiff_t j = 0;
            for (; j < nv; j += 16)
                _mm512_storeu_ps(bm + j, _mm512_fmadd_ps(x0, _mm512_loadu_ps(w0 + j), _mm512_loadu_ps(bm + j)));
            if (tail)
                _mm512_mask_storeu_ps(bm + j, tail, _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(tail, w0 + j),
                                                                   _mm512_maskz_loadu_ps(tail, bm + j)));
        }
    }
#else
#if defined(__AVX2__) && defined(__FMA__)
    if (mr == 1) {   /* decode: as the AVX-512 path, GEMM_MV_R rows of w per pass over blk (a few % faster from
                      * DRAM than the 4-row loop below on Zen 3) */
        ptrdiff_t nv = nc & ~(ptrdiff_t)7;
        for (; k + GEMM_MV_R <= kc; k += GEMM_MV_R) {
            const float *w0 = w + k * ldw;
            __m256 xs[GEMM_MV_R];
            for (int r = 0; r < GEMM_MV_R; r++) xs[r] = _mm256_set1_ps(x[k + r]);
            ptrdiff_t j = 0;
            for (; j < nv; j += 8) {
                __m256 v = _mm256_loadu_ps(blk + j);
                if (!(j & 15))   /* the next pass's rows into L2, once per line (as at 512 bits: -1-2% here) */
#pragma GCC unroll 8
                    for (int r = 0; r < GEMM_MV_R; r++)
                        _mm_prefetch((const char *)(w0 + (GEMM_MV_R + r) * ldw + j), _MM_HINT_T1);
#pragma GCC unroll 8
                for (int r = 0; r < GEMM_MV_R; r++)
                    v = _mm256_fmadd_ps(xs[r], _mm256_loadu_ps(w0 + r * ldw + j), v);
                _mm256_storeu_ps(blk + j, v);
            }
            for (; j < nc; j++) {
                float v = blk[j];
                for (int r = 0; r < GEMM_MV_R; r++) v = GEMM_MADD(x[k + r], w0[r * ldw + j], v);
                blk[j] = v;
            }
        }
    }
    /* a few rows (a batch of sequences): 8 rows of w by 16 columns, four rows of x at a time (one blk chain
     * per element, k in order: the bits of the one-row path), the next 8 rows of w prefetched into L2.  Two
     * column vectors give 8 accumulator chains, which the two FMA ports need (8 columns had 4 chains of 8
     * dependent FMAs waiting on latency); w is loaded per row of x's group from L1, as 16 registers hold
     * no more (-march=haswell on Zen 4, 124M's block matmuls at 2 threads, 4 / 8 / 16 / 32 rows: 16.2-16.6 /
     * 21.4-25.8 / 36.5-43.0 / 71.3-77.9 -> 9.7-10.9 / 12.4-15.3 / 22.2-27.3 / 43.4-49.4 ms).  Then 8 columns
     * with w in registers; w's rows are reached by stepping one pointer (with 8 row offsets GCC spilled
     * them). */
    for (; mr > 1 && k + 8 <= kc; k += 8) {
        ptrdiff_t nv = nc & ~(ptrdiff_t)7, nv16 = nc & ~(ptrdiff_t)15, j = 0;
        for (; j < nv16; j += 16) {
            const float *w0 = w + k * ldw + j;
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++)   /* one line of each of the next 8 rows */
                _mm_prefetch((const char *)(w0 + (8 + r) * ldw), _MM_HINT_T1);
            ptrdiff_t m = 0;
            for (; m + 4 <= mr; m += 4) {
                const float *x0 = x + m * ldx + k, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
                float *b0 = blk + m * ldb + j, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
                __m256 a0 = _mm256_loadu_ps(b0), c0 = _mm256_loadu_ps(b0 + 8);
                __m256 a1 = _mm256_loadu_ps(b1), c1 = _mm256_loadu_ps(b1 + 8);
                __m256 a2 = _mm256_loadu_ps(b2), c2 = _mm256_loadu_ps(b2 + 8);
                __m256 a3 = _mm256_loadu_ps(b3), c3 = _mm256_loadu_ps(b3 + 8);
                const float *wp = w0;
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++, wp += ldw) {
                    __m256 wl = _mm256_loadu_ps(wp), wh = _mm256_loadu_ps(wp + 8);
                    __m256 y0 = _mm256_broadcast_ss(x0 + r), y1 = _mm256_broadcast_ss(x1 + r);
                    __m256 y2 = _mm256_broadcast_ss(x2 + r), y3 = _mm256_broadcast_ss(x3 + r);
                    a0 = _mm256_fmadd_ps(y0, wl, a0);
                    c0 = _mm256_fmadd_ps(y0, wh, c0);
                    a1 = _mm256_fmadd_ps(y1, wl, a1);
                    c1 = _mm256_fmadd_ps(y1, wh, c1);
                    a2 = _mm256_fmadd_ps(y2, wl, a2);
                    c2 = _mm256_fmadd_ps(y2, wh, c2);
                    a3 = _mm256_fmadd_ps(y3, wl, a3);
                    c3 = _mm256_fmadd_ps(y3, wh, c3);
                }
                _mm256_storeu_ps(b0, a0); _mm256_storeu_ps(b0 + 8, c0);
                _mm256_storeu_ps(b1, a1); _mm256_storeu_ps(b1 + 8, c1);
                _mm256_storeu_ps(b2, a2); _mm256_storeu_ps(b2 + 8, c2);
                _mm256_storeu_ps(b3, a3); _mm256_storeu_ps(b3 + 8, c3);
            }
            for (; m < mr; m++) {
                const float *xm = x + m * ldx + k;
                float *bm = blk + m * ldb + j;
                __m256 a = _mm256_loadu_ps(bm), c = _mm256_loadu_ps(bm + 8);
                const float *wp = w0;
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++, wp += ldw) {
                    __m256 y = _mm256_broadcast_ss(xm + r);
                    a = _mm256_fmadd_ps(y, _mm256_loadu_ps(wp), a);
                    c = _mm256_fmadd_ps(y, _mm256_loadu_ps(wp + 8), c);
                }
                _mm256_storeu_ps(bm, a);
                _mm256_storeu_ps(bm + 8, c);
            }
        }
        for (; j < nv; j += 8) {
            __m256 ws[8];
            const float *wp = w + k * ldw + j;
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++, wp += ldw)
                ws[r] = _mm256_loadu_ps(wp);
            ptrdiff_t m = 0;
            for (; m + 4 <= mr; m += 4) {
                const float *x0 = x + m * ldx + k;
                float *b0 = blk + m * ldb + j;
                __m256 a0 = _mm256_loadu_ps(b0), a1 = _mm256_loadu_ps(b0 + ldb);
                __m256 a2 = _mm256_loadu_ps(b0 + 2 * ldb), a3 = _mm256_loadu_ps(b0 + 3 * ldb);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + r), ws[r], a0);
                    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + ldx + r), ws[r], a1);
                    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 2 * ldx + r), ws[r], a2);
                    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 3 * ldx + r), ws[r], a3);
                }
                _mm256_storeu_ps(b0, a0);
                _mm256_storeu_ps(b0 + ldb, a1);
                _mm256_storeu_ps(b0 + 2 * ldb, a2);
                _mm256_storeu_ps(b0 + 3 * ldb, a3);
            }
            for (; m < mr; m++) {
                const float *xm = x + m * ldx + k;
                float *bm = blk + m * ldb + j;
                __m256 v = _mm256_loadu_ps(bm);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) v = _mm256_fmadd_ps(_mm256_broadcast_ss(xm + r), ws[r], v);
                _mm256_storeu_ps(bm, v);
            }
        }
        for (; j < nc; j++)
            for (ptrdiff_t m = 0; m < mr; m++) {
                float v = blk[m * ldb + j];
                for (int r = 0; r < 8; r++) v = GEMM_MADD(x[m * ldx + k + r], w[(k + r) * ldw + j], v);
                blk[m * ldb + j] = v;
            }
    }
#endif
    for (; k + 4 <= kc; k += 4) {
        const float *w0 = w + k * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        for (ptrdiff_t m = 0; m < mr; m++) {
            float x0 = x[m * ldx + k], x1 = x[m * ldx + k + 1], x2 = x[m * ldx + k + 2], x3 = x[m * ldx + k + 3];
            float *bm = blk + m * ldb;
            for (ptrdiff_t j = 0; j < nc; j++) {
                float v = bm[j];
                v = GEMM_MADD(x0, w0[j], v);
                v = GEMM_MADD(x1, w1[j], v);
                v = GEMM_MADD(x2, w2[j], v);
                v = GEMM_MADD(x3, w3[j], v);
                bm[j] = v;
            }
        }
    }
    for (; k < kc; k++) {
        const float *w0 = w + k * ldw;
        for (ptrdiff_t m = 0; m < mr; m++) {
            float x0 = x[m * ldx + k];
            float *bm = blk + m * ldb;
            for (ptrdiff_t j = 0; j < nc; j++)
                bm[j] = GEMM_MADD(x0, w0[j], bm[j]);
        }
    }
#endif
}

/* Per-thread scratch for the decode path's K-split (partial sums of every K block, combined afterwards in
 * block order): a fixed thread-local array, so a decode step allocates nothing.  Returns NULL when n floats
 * do not fit (the caller then splits columns instead). */
#define GEMM_TLS_FLOATS 65536   /* 256 KiB: every K block of the 124M..1558M projections, one row */
#if defined(_MSC_VER)
#define GEMM_THREAD_LOCAL __declspec(thread)
#define GEMM_ALIGN64
#else
#define GEMM_THREAD_LOCAL __thread
#define GEMM_ALIGN64 __attribute__((aligned(64)))
#endif
static float *gemm_tls_scratch(size_t n)
{
    static GEMM_THREAD_LOCAL float scratch[GEMM_TLS_FLOATS] GEMM_ALIGN64;   /* rows of sums on cache lines */
    return n <= GEMM_TLS_FLOATS ? scratch : NULL;
}

/* A barrier for the team of the enclosing parallel region (Cython emits its prange loops with nowait). */
static inline void gemm_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

/* Threads in the team of the enclosing parallel region (1 outside one, and without OpenMP). */
#ifdef _OPENMP
#include <omp.h>
static inline int gemm_team_size(void) { return omp_get_num_threads(); }
#else
static inline int gemm_team_size(void) { return 1; }
#endif

/* Debug builds only (the C macro GPT2CY_DEBUG, set by GPT2CY_DEBUG=1 builds): a hook that makes one thread
 * of the K-split decode path late, so a missing or misplaced barrier shows as wrong sums in a test instead
 * of passing by luck.  gemm_debug_set_late(thread, us): thread `thread` of the team busy-waits `us`
 * microseconds before it writes its partial sums (us = 0: off).  Release builds compile it to nothing. */
#if defined(GPT2CY_DEBUG) && defined(_OPENMP)
#define GEMM_DEBUG_HOOKS 1
static volatile int gemm_debug_late_thread = -1;
static volatile int gemm_debug_late_us = 0;
static void gemm_debug_set_late(int thread, int us)
{
    gemm_debug_late_thread = thread;
    gemm_debug_late_us = us;
}
static inline void gemm_debug_maybe_late(void)
{
    if (gemm_debug_late_us > 0 && omp_get_thread_num() == gemm_debug_late_thread) {
        double t_end = omp_get_wtime() + gemm_debug_late_us * 1e-6;
        while (omp_get_wtime() < t_end) { }
    }
}
#else
#define GEMM_DEBUG_HOOKS 0
static void gemm_debug_set_late(int thread, int us) { (void)thread; (void)us; }
static inline void gemm_debug_maybe_late(void) { }
#endif

/* The tile kernel's epilogue for one row segment: out = [out +] (blk [+ bias]) in the first K block,
 * out = out + blk afterwards.   blk, bias (or NULL), out: [n] */
static void gemm_mv_combine(const float *blk, const float *bias, float *out, ptrdiff_t n, int first,
                            int accumulate)
{
    if (first) {
        for (ptrdiff_t j = 0; j < n; j++) {
            float v = blk[j];
            if (bias != NULL) v = v + bias[j];
            out[j] = accumulate ? out[j] + v : v;
        }
    } else {
        for (ptrdiff_t j = 0; j < n; j++)
            out[j] = out[j] + blk[j];
    }
}

/* ------------------------------------------------------------------------------------------------------
 * Row dots (the tied lm_head in decode): out[j] = x . wt[j]  for j < n, K-long rows of wt (row stride ldwt).
 * Fixed reduction order: 32 lane sums (lane = k mod 32), then a fixed tree; no thread count involved.
 * The rows GEMM_DOT_PF_ROWS ahead are prefetched into L2 while these are summed (512 and 256 bits): the
 * hardware prefetchers alone left a core at 16 GB/s on Zen 4 (124M's wte, one thread 9.5 -> 5.8 ms, two
 * 5.0-5.5 -> 2.9-4.2 ms; into L1 (T0) it gained nothing, and 4 rows ahead less than 8).
 */
#define GEMM_DOT_PF_ROWS 8
static void gemm_dot_rows(ptrdiff_t K, const float *x, const float *wt, ptrdiff_t ldwt, ptrdiff_t n,
                          float *out)
{
#if defined(__AVX512F__)
    ptrdiff_t kv = K & ~(ptrdiff_t)31, rem = K - kv;
    __mmask16 m0 = (__mmask16)(rem >= 16 ? 0xFFFFu : (1u << rem) - 1u);
    __mmask16 m1 = (__mmask16)(rem > 16 ? (1u << (rem - 16)) - 1u : 0u);
    ptrdiff_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *r0 = wt + j * ldwt, *r1 = r0 + ldwt, *r2 = r1 + ldwt, *r3 = r2 + ldwt;
        __m512 s00 = _mm512_setzero_ps(), s01 = _mm512_setzero_ps(), s10 = _mm512_setzero_ps(),
               s11 = _mm512_setzero_ps(), s20 = _mm512_setzero_ps(), s21 = _mm512_setzero_ps(),
               s30 = _mm512_setzero_ps(), s31 = _mm512_setzero_ps();
        const float *pf = r0 + GEMM_DOT_PF_ROWS * ldwt;
        for (ptrdiff_t k = 0; k < kv; k += 32) {
            __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                _mm_prefetch((const char *)(pf + r * ldwt + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(pf + r * ldwt + k + 16), _MM_HINT_T1);
            }
            s00 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r0 + k), s00);
            s01 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r0 + k + 16), s01);
            s10 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r1 + k), s10);
            s11 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r1 + k + 16), s11);
            s20 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r2 + k), s20);
            s21 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r2 + k + 16), s21);
            s30 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r3 + k), s30);
            s31 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r3 + k + 16), s31);
        }
        if (rem) {
            __m512 x0 = _mm512_maskz_loadu_ps(m0, x + kv), x1 = _mm512_maskz_loadu_ps(m1, x + kv + 16);
            s00 = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(m0, r0 + kv), s00);
            s01 = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m1, r0 + kv + 16), s01);
            s10 = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(m0, r1 + kv), s10);
            s11 = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m1, r1 + kv + 16), s11);
            s20 = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(m0, r2 + kv), s20);
            s21 = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m1, r2 + kv + 16), s21);
            s30 = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(m0, r3 + kv), s30);
            s31 = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(m1, r3 + kv + 16), s31);
        }
        out[j] = gpt2cy_hsum16(_mm512_add_ps(s00, s01));
        out[j + 1] = gpt2cy_hsum16(_mm512_add_ps(s10, s11));
        out[j + 2] = gpt2cy_hsum16(_mm512_add_ps(s20, s21));
        out[j + 3] = gpt2cy_hsum16(_mm512_add_ps(s30, s31));
    }
    for (; j < n; j++) {
        const float *r0 = wt + j * ldwt;
        __m512 s00 = _mm512_setzero_ps(), s01 = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < kv; k += 32) {
            s00 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(r0 + k), s00);
            s01 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(r0 + k + 16), s01);
        }
        if (rem) {
            s00 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, x + kv), _mm512_maskz_loadu_ps(m0, r0 + kv), s00);
            s01 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, x + kv + 16), _mm512_maskz_loadu_ps(m1, r0 + kv + 16), s01);
        }
        out[j] = gpt2cy_hsum16(_mm512_add_ps(s00, s01));
    }
#else
    ptrdiff_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (K % 32 == 0)   /* two rows of wt a pass at 256 bits: 8 chains in flight (one row's 4 waited on latency) */
        for (; j + 2 <= n; j += 2) {
            const float *r0 = wt + j * ldwt, *r1 = r0 + ldwt;
            __m256 a[4], b[4];
            for (int q = 0; q < 4; q++) a[q] = b[q] = _mm256_setzero_ps();
            for (ptrdiff_t k = 0; k < K; k += 32) {
                /* as at 512 bits, rows ahead into L2 (GPT2CY_MARCH=haswell on Zen 4: a decode step -10%) */
                _mm_prefetch((const char *)(r0 + GEMM_DOT_PF_ROWS * ldwt + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(r0 + GEMM_DOT_PF_ROWS * ldwt + k + 16), _MM_HINT_T1);
                _mm_prefetch((const char *)(r1 + GEMM_DOT_PF_ROWS * ldwt + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(r1 + GEMM_DOT_PF_ROWS * ldwt + k + 16), _MM_HINT_T1);
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) {
                    __m256 xv = _mm256_loadu_ps(x + k + 8 * q);
                    a[q] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r0 + k + 8 * q), a[q]);
                    b[q] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r1 + k + 8 * q), b[q]);
                }
            }
            out[j] = gpt2cy_hsum32x8(a);
            out[j + 1] = gpt2cy_hsum32x8(b);
        }
#endif
    for (; j < n; j++) {
        const float *r0 = wt + j * ldwt;
        float s[32];
        for (int l = 0; l < 32; l++) s[l] = 0.0f;
        ptrdiff_t k = 0;
        for (; k + 32 <= K; k += 32)
            for (int l = 0; l < 32; l++) s[l] = GEMM_MADD(x[k + l], r0[k + l], s[l]);
        for (int l = 0; k + l < K; l++) s[l] = GEMM_MADD(x[k + l], r0[k + l], s[l]);
        for (int l = 0; l < 16; l++) s[l] = s[l] + s[l + 16];
        for (int w = 8; w >= 1; w /= 2)
            for (int l = 0; l < w; l++) s[l] = s[l] + s[l + w];
        out[j] = s[0];
    }
#endif
}

/* Row dots for two rows of x at once (the last rows of a batch of sequences): out0[j] = x0 . wt[j] and
 * out1[j] = x1 . wt[j], each with exactly gemm_dot_rows' arithmetic (the same two lane-sum chains per pair,
 * the same tree), so every row keeps the one-row bits; each row of wt is loaded once for both. */
static void gemm_dot_rows2(ptrdiff_t K, const float *x0, const float *x1, const float *wt, ptrdiff_t ldwt,
                           ptrdiff_t n, float *out0, float *out1, ptrdiff_t pf)
{
#if defined(__AVX512F__)
    ptrdiff_t kv = K & ~(ptrdiff_t)31, rem = K - kv;
    __mmask16 m0 = (__mmask16)(rem >= 16 ? 0xFFFFu : (1u << rem) - 1u);
    __mmask16 m1 = (__mmask16)(rem > 16 ? (1u << (rem - 16)) - 1u : 0u);
    ptrdiff_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *r[4] = {wt + j * ldwt, wt + (j + 1) * ldwt, wt + (j + 2) * ldwt, wt + (j + 3) * ldwt};
        __m512 a0[4], a1[4], b0[4], b1[4];   /* a: row x0, b: row x1; 0/1: the two lane halves */
        for (int q = 0; q < 4; q++) a0[q] = a1[q] = b0[q] = b1[q] = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < kv; k += 32) {
            __m512 xa0 = _mm512_loadu_ps(x0 + k), xa1 = _mm512_loadu_ps(x0 + k + 16);
            __m512 xb0 = _mm512_loadu_ps(x1 + k), xb1 = _mm512_loadu_ps(x1 + k + 16);
            if (pf) {
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) {
                    _mm_prefetch((const char *)(r[q] + pf + k), _MM_HINT_T1);
                    _mm_prefetch((const char *)(r[q] + pf + k + 16), _MM_HINT_T1);
                }
            }
            GPT2CY_IN_REGISTER(xa0);   /* each used by four FMAs (see gemm_dot_rows4) */
            GPT2CY_IN_REGISTER(xa1);
            GPT2CY_IN_REGISTER(xb0);
            GPT2CY_IN_REGISTER(xb1);
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                __m512 w0 = _mm512_loadu_ps(r[q] + k), w1 = _mm512_loadu_ps(r[q] + k + 16);
                a0[q] = _mm512_fmadd_ps(xa0, w0, a0[q]);
                a1[q] = _mm512_fmadd_ps(xa1, w1, a1[q]);
                b0[q] = _mm512_fmadd_ps(xb0, w0, b0[q]);
                b1[q] = _mm512_fmadd_ps(xb1, w1, b1[q]);
            }
        }
        if (rem) {
            __m512 xa0 = _mm512_maskz_loadu_ps(m0, x0 + kv), xa1 = _mm512_maskz_loadu_ps(m1, x0 + kv + 16);
            __m512 xb0 = _mm512_maskz_loadu_ps(m0, x1 + kv), xb1 = _mm512_maskz_loadu_ps(m1, x1 + kv + 16);
            for (int q = 0; q < 4; q++) {
                __m512 w0 = _mm512_maskz_loadu_ps(m0, r[q] + kv), w1 = _mm512_maskz_loadu_ps(m1, r[q] + kv + 16);
                a0[q] = _mm512_fmadd_ps(xa0, w0, a0[q]);
                a1[q] = _mm512_fmadd_ps(xa1, w1, a1[q]);
                b0[q] = _mm512_fmadd_ps(xb0, w0, b0[q]);
                b1[q] = _mm512_fmadd_ps(xb1, w1, b1[q]);
            }
        }
        for (int q = 0; q < 4; q++) {
            out0[j + q] = gpt2cy_hsum16(_mm512_add_ps(a0[q], a1[q]));
            out1[j + q] = gpt2cy_hsum16(_mm512_add_ps(b0[q], b1[q]));
        }
    }
    if (j < n) {
        gemm_dot_rows(K, x0, wt + j * ldwt, ldwt, n - j, out0 + j);
        gemm_dot_rows(K, x1, wt + j * ldwt, ldwt, n - j, out1 + j);
    }
#else
    ptrdiff_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (K % 32 == 0)   /* each row of wt loaded once for both rows of x */
        for (; j < n; j++) {
            const float *r0 = wt + j * ldwt;
            __m256 a[4], b[4];
            for (int q = 0; q < 4; q++) a[q] = b[q] = _mm256_setzero_ps();
            for (ptrdiff_t k = 0; k < K; k += 32) {
                if (pf) {
                    _mm_prefetch((const char *)(r0 + pf + k), _MM_HINT_T1);
                    _mm_prefetch((const char *)(r0 + pf + k + 16), _MM_HINT_T1);
                }
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) {
                    __m256 wv = _mm256_loadu_ps(r0 + k + 8 * q);
                    a[q] = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k + 8 * q), wv, a[q]);
                    b[q] = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + k + 8 * q), wv, b[q]);
                }
            }
            out0[j] = gpt2cy_hsum32x8(a);
            out1[j] = gpt2cy_hsum32x8(b);
        }
#endif
    if (j < n) {
        gemm_dot_rows(K, x0, wt + j * ldwt, ldwt, n - j, out0 + j);
        gemm_dot_rows(K, x1, wt + j * ldwt, ldwt, n - j, out1 + j);
    }
#endif
}

/* Row dots for four rows of x at once: as gemm_dot_rows2, two rows of wt per pass (16 accumulators), so a
 * chunk of wt is read from cache a quarter as often.  Each x vector is loaded once into a register for its
 * two FMAs (gpt2cy_dot_step2): GCC otherwise folds the load into both, 20 loads a step instead of 12, and
 * the load ports, not the FMAs, set the pace (Zen 4, one thread, 8 rows of x: 74 -> 90 GFLOP/s). */
static void gemm_dot_rows4(ptrdiff_t K, const float *const x[4], const float *wt, ptrdiff_t ldwt,
                           ptrdiff_t n, float *const out[4], ptrdiff_t pf)
{
#if defined(__AVX512F__)
    ptrdiff_t kv = K & ~(ptrdiff_t)31, rem = K - kv;
    __mmask16 m0 = (__mmask16)(rem >= 16 ? 0xFFFFu : (1u << rem) - 1u);
    __mmask16 m1 = (__mmask16)(rem > 16 ? (1u << (rem - 16)) - 1u : 0u);
    ptrdiff_t j = 0;
    for (; j + 2 <= n; j += 2) {
        const float *r0 = wt + j * ldwt, *r1 = r0 + ldwt;
        __m512 s0[4], s1[4], t0[4], t1[4];   /* s: wt row j, t: wt row j+1; 0/1: the two lane halves */
        for (int q = 0; q < 4; q++) s0[q] = s1[q] = t0[q] = t1[q] = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < kv; k += 32) {
            __m512 u0 = _mm512_loadu_ps(r0 + k), u1 = _mm512_loadu_ps(r0 + k + 16);
            __m512 v0 = _mm512_loadu_ps(r1 + k), v1 = _mm512_loadu_ps(r1 + k + 16);
            if (pf) {   /* the next chunk of wt, while this one is computed from L1; into L2: with this chunk
                         * and the rows of x it overflowed Zen 4's 32 KB L1 (8 rows: 9.4-9.9 -> 7.2-7.3 ms) */
                _mm_prefetch((const char *)(r0 + pf + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(r0 + pf + k + 16), _MM_HINT_T1);
                _mm_prefetch((const char *)(r1 + pf + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(r1 + pf + k + 16), _MM_HINT_T1);
            }
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
                gpt2cy_dot_step2(x[q] + k, u0, u1, v0, v1, &s0[q], &s1[q], &t0[q], &t1[q]);
        }
        if (rem) {
            __m512 u0 = _mm512_maskz_loadu_ps(m0, r0 + kv), u1 = _mm512_maskz_loadu_ps(m1, r0 + kv + 16);
            __m512 v0 = _mm512_maskz_loadu_ps(m0, r1 + kv), v1 = _mm512_maskz_loadu_ps(m1, r1 + kv + 16);
            for (int q = 0; q < 4; q++) {
                __m512 xa = _mm512_maskz_loadu_ps(m0, x[q] + kv), xb = _mm512_maskz_loadu_ps(m1, x[q] + kv + 16);
                s0[q] = _mm512_fmadd_ps(xa, u0, s0[q]);
                s1[q] = _mm512_fmadd_ps(xb, u1, s1[q]);
                t0[q] = _mm512_fmadd_ps(xa, v0, t0[q]);
                t1[q] = _mm512_fmadd_ps(xb, v1, t1[q]);
            }
        }
        for (int q = 0; q < 4; q++) {
            out[q][j] = gpt2cy_hsum16(_mm512_add_ps(s0[q], s1[q]));
            out[q][j + 1] = gpt2cy_hsum16(_mm512_add_ps(t0[q], t1[q]));
        }
    }
    if (j < n)
        for (int q = 0; q < 4; q++) gemm_dot_rows(K, x[q], wt + j * ldwt, ldwt, n - j, out[q] + j);
#else
    gemm_dot_rows2(K, x[0], x[1], wt, ldwt, n, out[0], out[1], pf);
    gemm_dot_rows2(K, x[2], x[3], wt, ldwt, n, out[2], out[3], 0);   /* the chunk of wt is in cache by now */
#endif
}

/* ------------------------------------------------------------------------------------------------------
 * GELU epilogue, GPT-2's tanh form written as x * sigmoid(2u):  0.5 x (1 + tanh u) = x / (1 + exp(-2u)),
 * u = sqrt(2/pi) (x + 0.044715 x^3).  exp by range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial
 * (Cephes-style coefficients, ~1 ulp): plain C that GCC/Clang vectorise, with no cancellation near 0.
 * Element-wise, so results never depend on how rows are split between threads.   v: [n] in place
 */
static inline float gemm_gelu1(float x)
{
    float u = 0.7978845608028654f * GEMM_MADD(0.044715f * x, x * x, x);
    float t = -2.0f * u;
    t = t > 88.0f ? 88.0f : (t < -88.0f ? -88.0f : t);
    /* n = round(t / ln2) with the 1.5*2^23 trick (exact for |t/ln2| < 2^22) */
    float fn = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = GEMM_MADD(fn, -0.693359375f, t);
    r = GEMM_MADD(fn, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = GEMM_MADD(p, r, 1.3981999507e-3f);
    p = GEMM_MADD(p, r, 8.3334519073e-3f);
    p = GEMM_MADD(p, r, 4.1665795894e-2f);
    p = GEMM_MADD(p, r, 1.6666665459e-1f);
    p = GEMM_MADD(p, r, 5.0000001201e-1f);
    p = GEMM_MADD(p, r * r, r) + 1.0f;
    int ni = (int)fn;
    float scale;
    unsigned int bits = (unsigned int)(ni + 127) << 23;
    memcpy(&scale, &bits, sizeof(scale));
    return x / (1.0f + p * scale);
}

static void gemm_gelu_row(float *v, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j++)
        v[j] = gemm_gelu1(v[j]);
}

#endif /* GPT2CY_GEMM_H */
