/* gpt2cy/engine/_madd.h: the one multiply-add every kernel's reductions use.
 *
 * GPT2CY_MADD(a, b, c) = a*b + c: one fused rounding (__builtin_fmaf) where the CPU has FMA, else two
 * roundings (never a libm software fmaf, which would be slow).  Writing the fusion out, instead of leaving
 * `c + a*b` to the compiler's -ffp-contract, is what makes two kernels that run the same chain (a decode
 * row and the same row of a prefill) give the same bits whatever the compiler decides to contract.
 * GCC and Clang vectorise __builtin_fmaf in loops (vfmadd on AVX2/AVX-512, fmla on NEON).
 */
#ifndef GPT2CY_MADD_H
#define GPT2CY_MADD_H

#if defined(__FMA__) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
#define GPT2CY_MADD(a, b, c) __builtin_fmaf((a), (b), (c))
#define GPT2CY_FUSED 1
#else
#define GPT2CY_MADD(a, b, c) ((a) * (b) + (c))
#define GPT2CY_FUSED 0
#endif

/* GPT2CY_IN_REGISTER(v): v stays in a register.  A vector loaded once and used by several FMAs is otherwise
 * folded into each of them as a memory operand by GCC, so a row-dot kernel loads it again for every use and
 * runs out of load ports before FMAs (_gemm.h's gemm_dot_rows4). */
#if defined(__GNUC__)
#define GPT2CY_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define GPT2CY_IN_REGISTER(v) ((void)0)
#endif

/* The 16 lanes of v summed in one fixed order (halves of 8, 4, 2, 1): the end of the row dots' 32-lane
 * reductions (_gemm.h's f32 rows, _lowp.h's bf16 rows), which must agree on it. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline float gpt2cy_hsum16(__m512 v)
{
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/* One 32-input step of two rows of w (lane halves u0, u1 and v0, v1, already floats) against one row of x:
 * each x vector loaded once into a register for its two FMAs (GPT2CY_IN_REGISTER).  The several-rows row
 * dots of both heads (_gemm.h's f32 gemm_dot_rows4, _lowp.h's bf16 rows) take this step, each product chain
 * that of the one-row path. */
static inline void gpt2cy_dot_step2(const float *x, __m512 u0, __m512 u1, __m512 v0, __m512 v1, __m512 *s0,
                                    __m512 *s1, __m512 *t0, __m512 *t1)
{
    __m512 xa = _mm512_loadu_ps(x), xb = _mm512_loadu_ps(x + 16);
    GPT2CY_IN_REGISTER(xa);
    GPT2CY_IN_REGISTER(xb);
    *s0 = _mm512_fmadd_ps(xa, u0, *s0);
    *s1 = _mm512_fmadd_ps(xb, u1, *s1);
    *t0 = _mm512_fmadd_ps(xa, v0, *t0);
    *t1 = _mm512_fmadd_ps(xb, v1, *t1);
}
#endif

/* The 32 lane sums s[8q + i] = v[q] lane i (four 256-bit vectors) reduced in the row dots' fixed order,
 * s[l] += s[l + 16], then halves of 8, 4, 2, 1: the portable loops' tree, so their bits (_gemm.h's f32 and
 * _lowp.h's bf16 rows at 256 bits). */
#if defined(__AVX2__)
#include <immintrin.h>
static inline float gpt2cy_hsum32x8(const __m256 *v)
{
    __m256 h = _mm256_add_ps(_mm256_add_ps(v[0], v[2]), _mm256_add_ps(v[1], v[3]));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
#endif

/* A compile-time check that works in C89..C23 and C++ (a negative array size is an error). */
#define GPT2CY_STATIC_ASSERT(cond, name) typedef char gpt2cy_static_assert_##name[(cond) ? 1 : -1]

#endif /* GPT2CY_MADD_H */
