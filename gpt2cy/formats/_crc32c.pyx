# cython: boundscheck=False, wraparound=False, initializedcheck=False
# (bounds are the buffer's own length; the C loops index nothing else)
"""CRC-32C (Castagnoli), the checksum TensorFlow stores for every tensor and index block of a checkpoint.

x86-64 uses the SSE4.2 `crc32` instruction (picked at run time, so portable builds keep it); elsewhere a
slice-by-8 table loop. Both release the GIL. `checksum_f32` folds a count of non-finite float32 values
into the same pass, so `verify` reads each tensor's bytes once.
"""

from libc.stdint cimport uint32_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* Reflected Castagnoli polynomial; table k advances a byte that sits k bytes further back. */
    static uint32_t gpt2cy_crc_table[8][256];

    static void gpt2cy_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int b = 0; b < 8; b++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
            gpt2cy_crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int k = 1; k < 8; k++) {
                uint32_t c = gpt2cy_crc_table[k - 1][i];
                gpt2cy_crc_table[k][i] = (c >> 8) ^ gpt2cy_crc_table[0][c & 0xff];
            }
    }

    /* Count float32 values (two per 64-bit word, little-endian words) whose exponent is all ones. */
    #define GPT2CY_NONFINITE2(w) ((((uint32_t)(w) & 0x7f800000u) == 0x7f800000u) + \\
                                  ((((uint32_t)((w) >> 32)) & 0x7f800000u) == 0x7f800000u))

    static uint32_t gpt2cy_crc_sw(uint32_t crc, const unsigned char *p, size_t n,
                                  int count, uint64_t *nonfinite) {
        const uint32_t (*T)[256] = (const uint32_t (*)[256])gpt2cy_crc_table;
        uint64_t bad = 0;
        crc = ~crc;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (n >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (count) bad += GPT2CY_NONFINITE2(w);
            uint32_t lo = (uint32_t)w ^ crc, hi = (uint32_t)(w >> 32);
            crc = T[7][lo & 0xff] ^ T[6][(lo >> 8) & 0xff] ^ T[5][(lo >> 16) & 0xff] ^ T[4][lo >> 24] ^
                  T[3][hi & 0xff] ^ T[2][(hi >> 8) & 0xff] ^ T[1][(hi >> 16) & 0xff] ^ T[0][hi >> 24];
            p += 8; n -= 8;
        }
    #endif
        if (count) {  /* tail (or a big-endian host): whole float32 values, in file byte order */
            for (size_t i = 0; i + 4 <= n; i += 4)
                bad += (p[i + 3] & 0x7f) == 0x7f && (p[i + 2] & 0x80);
        }
        while (n--) crc = T[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        if (count) *nonfinite += bad;
        return ~crc;
    }

    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <nmmintrin.h>
    #define GPT2CY_CRC_HW 1
    __attribute__((target("sse4.2")))
    static uint32_t gpt2cy_crc_hw(uint32_t crc, const unsigned char *p, size_t n,
                                  int count, uint64_t *nonfinite) {
        uint64_t c = (uint32_t)~crc, bad = 0;
        /* One 8-byte crc32 per step: latency-bound at about 8 bytes per 3 cycles, far above what
           the page cache delivers, so no 3-way interleave. */
        while (n >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (count) bad += GPT2CY_NONFINITE2(w);
            c = _mm_crc32_u64(c, w);
            p += 8; n -= 8;
        }
        if (count) {
            for (size_t i = 0; i + 4 <= n; i += 4)
                bad += (p[i + 3] & 0x7f) == 0x7f && (p[i + 2] & 0x80);
        }
        while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
        if (count) *nonfinite += bad;
        return ~(uint32_t)c;
    }
    static int gpt2cy_crc_hw_available(void) {
    #ifdef __SSE4_2__
        return 1;
    #else
        __builtin_cpu_init();
        return __builtin_cpu_supports("sse4.2");
    #endif
    }
    #else
    #define GPT2CY_CRC_HW 0
    static uint32_t gpt2cy_crc_hw(uint32_t crc, const unsigned char *p, size_t n,
                                  int count, uint64_t *nonfinite) {
        return gpt2cy_crc_sw(crc, p, n, count, nonfinite);
    }
    static int gpt2cy_crc_hw_available(void) { return 0; }
    #endif
    """
    void gpt2cy_crc_init() noexcept nogil
    int gpt2cy_crc_hw_available() noexcept nogil
    uint32_t gpt2cy_crc_sw(uint32_t crc, const unsigned char *p, size_t n,
                           int count, uint64_t *nonfinite) noexcept nogil
    uint32_t gpt2cy_crc_hw(uint32_t crc, const unsigned char *p, size_t n,
                           int count, uint64_t *nonfinite) noexcept nogil

gpt2cy_crc_init()
cdef bint _use_hw = gpt2cy_crc_hw_available() != 0


cdef inline uint32_t _crc(uint32_t crc, const unsigned char *p, size_t n, int count,
                          uint64_t *nonfinite, bint hw) noexcept nogil:
    if hw:
        return gpt2cy_crc_hw(crc, p, n, count, nonfinite)
    return gpt2cy_crc_sw(crc, p, n, count, nonfinite)


def hardware_accelerated():
    """True when this CPU's SSE4.2 crc32 instruction is used (else a slice-by-8 table loop)."""
    return bool(_use_hw)


def crc32c(const unsigned char[::1] data not None, uint32_t crc=0, bint hardware=True):
    """CRC-32C of a contiguous buffer (bytes, memoryview, numpy array viewed as uint8).

    `crc` continues a previous result: crc32c(b, crc32c(a)) == crc32c(a + b).
    `hardware=False` forces the portable table loop (tests compare the two).
    """
    cdef size_t n = data.shape[0]
    cdef uint64_t unused = 0
    cdef bint hw = hardware and _use_hw
    if n == 0:
        return crc
    with nogil:
        crc = _crc(crc, &data[0], n, 0, &unused, hw)
    return crc


def checksum_f32(const unsigned char[::1] data not None, uint32_t crc=0, bint hardware=True):
    """(CRC-32C, count of non-finite values) of little-endian float32 bytes, in one pass.

    The count covers whole 4-byte values only; a trailing partial value is checksummed, not counted.
    """
    cdef size_t n = data.shape[0]
    cdef uint64_t nonfinite = 0
    cdef bint hw = hardware and _use_hw
    if n == 0:
        return crc, 0
    with nogil:
        crc = _crc(crc, &data[0], n, 1, &nonfinite, hw)
    return crc, nonfinite
