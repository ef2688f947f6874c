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

/* A compile-time check that works in C89..C23 and C++ (a negative array size is an error). */
#define GPT2CY_STATIC_ASSERT(cond, name) typedef char gpt2cy_static_assert_##name[(cond) ? 1 : -1]

#endif /* GPT2CY_MADD_H */
