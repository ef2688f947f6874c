/* gpt2cy/engine/_amx.h: Intel AMX tiles (AMX-TILE + AMX-INT8), found and switched on at run time.
 *
 * Our own code, written from Intel's SDM (vol. 1 ch. 18, vol. 2 TILELOADD / TDPBSSD / LDTILECFG) and the
 * Linux kernel's Documentation/arch/x86/xstate.rst.  The instructions are written as inline assembly (binutils
 * >= 2.36 knows them), so any x86-64 build holds them and only a CPU that has them, and an OS that allows
 * them, ever runs them:
 * - qa_amx_probe() checks CPUID.(7,0):EDX bits 24/25 (AMX-TILE, AMX-INT8), that the OS saves tile state
 *   (XCR0 bits 17/18), and asks Linux for the tile data permission (arch_prctl ARCH_REQ_XCOMP_PERM): without
 *   it the first tile instruction would kill the process.  The permission is per process, so one call, at
 *   import, covers every thread.
 * - The tile configuration lives in static storage, filled once by the probe and only read after: GCC 12 at
 *   -O3 drops the stores into a local config before LDTILECFG (the crash llama.cpp's AMX build has on
 *   Sapphire Rapids), and an asm "m" operand on static data cannot lose them.
 * - Each kernel call loads the configuration on its own thread (tile state is per thread) and releases it
 *   at the end (TILERELEASE), so a thread that is not in a kernel carries no tile state.
 *
 * Tiles (the one configuration): tmm0, tmm1: 16 rows x 32 int8 (a block of 16 activation rows); tmm2, tmm3:
 * 8 rows x 64 int8 (a block of 16 weight rows in the dword layout TDPBSSD reads, which is qa_pack_group's);
 * tmm4, tmm5: 16 x 16 int32 products.
 */
#ifndef GPT2CY_AMX_H
#define GPT2CY_AMX_H

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define QA_AMX_BUILD 1
#include <stddef.h>
#include <cpuid.h>
#include <unistd.h>
#include <sys/syscall.h>
#else
#define QA_AMX_BUILD 0
#endif

static int qa_amx_ok = 0;          /* the probe found tiles usable */
static int qa_amx_on = 0;          /* the kernels use them (qa_amx_set) */
static long qa_amx_calls = 0;      /* kernel calls that ran on tiles (tests check the tiles do run) */

#if QA_AMX_BUILD
static unsigned char qa_amx_cfg[64] __attribute__((aligned(64)));

static inline void qa_amx_fill_cfg(void)
{
    unsigned char *c = qa_amx_cfg;
    for (int i = 0; i < 64; i++)
        c[i] = 0;
    c[0] = 1;                                               /* palette 1 */
    static const int colsb[6] = {32, 32, 64, 64, 64, 64}, rows[6] = {16, 16, 8, 8, 16, 16};
    for (int t = 0; t < 6; t++) {
        c[16 + 2 * t] = (unsigned char)colsb[t];            /* bytes per row, little-endian uint16 */
        c[16 + 2 * t + 1] = 0;
        c[48 + t] = (unsigned char)rows[t];
    }
}

static inline int qa_amx_probe(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, 0) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 24) & 1) || !((d >> 25) & 1))
        return 0;
    __cpuid(1, a, b, c, d);
    if (!((c >> 27) & 1))                                   /* OSXSAVE: XGETBV is allowed */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17))                    /* XTILECFG and XTILEDATA */
        return 0;
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0)
        return 0;
    qa_amx_fill_cfg();
    return 1;
}

#define QA_AMX_BEGIN() do {                                                                      \
        __atomic_fetch_add(&qa_amx_calls, 1, __ATOMIC_RELAXED);                                      \
        __asm__ volatile("ldtilecfg %0" :: "m"(*(const unsigned char (*)[64])qa_amx_cfg));          \
    } while (0)
#define QA_AMX_END() __asm__ volatile("tilerelease" ::: "memory")
/* tile T <- rows of `stride` bytes from p */
#define QA_AMX_LOAD(T, p, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #T :: "r"(p), "r"((ptrdiff_t)(stride)) : "memory")
#define QA_AMX_ZERO(T) __asm__ volatile("tilezero %%tmm" #T ::)
/* C += A (signed bytes) . B (signed bytes), dword by dword */
#define QA_AMX_DPBSSD(C, A, B) __asm__ volatile("tdpbssd %%tmm" #B ", %%tmm" #A ", %%tmm" #C ::)
#define QA_AMX_STORE(T, p, stride) \
    __asm__ volatile("tilestored %%tmm" #T ", (%0,%1,1)" :: "r"(p), "r"((ptrdiff_t)(stride)) : "memory")
#else
static inline int qa_amx_probe(void) { return 0; }
#define QA_AMX_BEGIN() ((void)0)
#define QA_AMX_END() ((void)0)
#endif

/* Whether the tiles can be used (probed once; the first call asks the OS). */
static inline int qa_amx_available(void)
{
    static int probed = 0;
    if (!probed) {
        qa_amx_ok = qa_amx_probe();
        probed = 1;
    }
    return qa_amx_ok;
}

/* Use the tiles (when available) or not; returns whether they are used.  Called at import, before any
 * kernel runs. */
static inline int qa_amx_set(int want)
{
    qa_amx_on = want && qa_amx_available();
    return qa_amx_on;
}

#endif /* GPT2CY_AMX_H */
