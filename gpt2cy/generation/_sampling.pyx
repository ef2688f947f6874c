# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (every index below comes from these loops over validated lengths; the def entry points check their inputs)
"""The per-token hot paths of gpt2cy.generation.sampling: select, soften, cut and draw in C.

With top-k on: numpy's argpartition plus a dozen small array calls cost ~70 us a token, close to 1% of a
124M decode step; one pass with a k-entry min-heap and scalar loops over the k survivors costs a fraction.
Top-p alone: a radix select finds the nucleus without sorting the vocabulary (see below); shift_scale and
normalise are the compiled halves of gpt2cy.generation.sampling.softmax around numpy's exp (the same bits, fewer passes).
gpt2cy.generation.sampling.candidates is the readable reference; tests check this module keeps the same sets and
(top-k) draws the same tokens.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport exp, INFINITY, NAN
from libc.stdlib cimport malloc, free
from libc.string cimport memset

cnp.import_array()


cdef inline bint _worse(float va, Py_ssize_t ia, float vb, Py_ssize_t ib) noexcept nogil:
    """Is (va, ia) ranked below (vb, ib)? Larger value first; on ties the lower id first."""
    return va < vb or (va == vb and ia > ib)


cdef void _sift_down(float* val, Py_ssize_t* idx, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Restore the heap (root = worst ranked) below position i."""
    cdef Py_ssize_t c
    cdef float v = val[i]
    cdef Py_ssize_t d = idx[i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _worse(val[c + 1], idx[c + 1], val[c], idx[c]):
            c += 1
        if not _worse(val[c], idx[c], v, d):
            break
        val[i], idx[i] = val[c], idx[c]
        i = c
    val[i], idx[i] = v, d


cdef enum:
    BLOCK = 32      # logits skipped per comparison pass once the heap is full (the common case)


cdef Py_ssize_t _top_k(const float* x,          # IN  [V] logits
                       Py_ssize_t V, Py_ssize_t k,
                       float* val,              # OUT [k] best values, best first
                       Py_ssize_t* idx          # OUT [k] their ids
                       ) noexcept nogil:
    """The k best entries of x (NaN and -inf never chosen), sorted best first; returns how many (<= k)."""
    cdef Py_ssize_t i, n = 0, j, b, end
    cdef float v, floor
    cdef int hit
    b = 0
    while b < V:
        end = b + BLOCK if b + BLOCK < V else V
        if n == k:
            # a branch-free pass the compiler vectorises: most blocks hold nothing above the heap's worst
            floor = val[0]
            hit = 0
            for i in range(b, end):
                hit = hit | (x[i] > floor)
            if not hit:
                b = end
                continue
        for i in range(b, end):
            v = x[i]
            if v != v or v == -INFINITY:        # NaN, or masked (logit_bias, ignore_eos)
                continue
            if n < k:                           # fill, then heapify once full
                val[n], idx[n] = v, i
                n += 1
                if n == k:
                    j = k // 2
                    while j > 0:
                        j -= 1
                        _sift_down(val, idx, k, j)
            elif v > val[0]:                    # ids rise, so a tie never beats the root
                val[0], idx[0] = v, i
                _sift_down(val, idx, k, 0)
        b = end
    if n < k:
        j = n // 2
        while j > 0:
            j -= 1
            _sift_down(val, idx, n, j)
    # heap-sort: swap the worst to the back, so the array ends best first
    cdef float tv
    cdef Py_ssize_t ti
    j = n
    while j > 1:
        j -= 1
        tv, ti = val[0], idx[0]
        val[0], idx[0] = val[j], idx[j]
        val[j], idx[j] = tv, ti
        _sift_down(val, idx, j, 0)
    return n


def top_k(const float[::1] logits not None, Py_ssize_t k):
    """Ids of the k largest logits, largest first (ties: lower id first; NaN and -inf never chosen)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    cdef Py_ssize_t V = logits.shape[0]
    k = min(k, V)
    out = np.empty(k, dtype=np.intp)
    vals = np.empty(k, dtype=np.float32)
    cdef cnp.intp_t[::1] o = out
    cdef float[::1] w = vals
    cdef Py_ssize_t n
    with nogil:
        n = _top_k(&logits[0], V, k, &w[0], <Py_ssize_t*>&o[0]) if k > 0 else 0
    return out[:n]


def sample_top_k(const float[::1] logits not None, Py_ssize_t k, double temperature, double top_p,
                 double min_p, double u, Py_ssize_t min_keep=1):
    """Draw one token: top-k, then softmax(v / temperature) over the k, then top-p and min-p cuts (each
    keeping at least min_keep), then the first survivor whose cumulative probability exceeds u (in
    [0, 1)) times the kept mass. NaN and -inf logits are never candidates; ValueError when none is left.

    Same rules and arithmetic order as gpt2cy.generation.sampling.candidates + Sampler (float64 over the k).
    """
    cdef Py_ssize_t V = logits.shape[0]
    if k <= 0 or V == 0:
        raise ValueError(f"need k > 0 and a non-empty row, got k={k}, {V} logits")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = min(k, V)
    cdef float* val = <float*>malloc(k * sizeof(float))
    cdef Py_ssize_t* idx = <Py_ssize_t*>malloc(k * sizeof(Py_ssize_t))
    cdef double* p = <double*>malloc(k * sizeof(double))
    if val == NULL or idx == NULL or p == NULL:
        free(val); free(idx); free(p)
        raise MemoryError()
    cdef Py_ssize_t n, j, keep, chosen
    cdef double s0, total, cum, target
    with nogil:
        n = _top_k(&logits[0], V, k, val, idx)
        chosen = -1
        if n > 0:
            s0 = <double>val[0] / temperature
            total = 0.0
            for j in range(n):
                p[j] = exp(<double>val[j] / temperature - s0)
                total = total + p[j]
            keep = n
            if top_p < 1.0:                     # smallest prefix whose mass reaches top_p
                cum = 0.0
                for j in range(n):
                    cum = cum + p[j]
                    if cum / total >= top_p:
                        keep = j + 1
                        break
                if keep < min_keep:
                    keep = min_keep if min_keep < n else n
            if min_p > 0.0:                     # p[0] is the largest
                j = 1
                while j < keep and p[j] >= min_p * p[0]:
                    j += 1
                if j < min_keep:
                    j = min_keep if min_keep < keep else keep
                keep = j
            total = 0.0
            for j in range(keep):
                total = total + p[j]
            target = u * total
            cum = 0.0
            chosen = idx[keep - 1]
            for j in range(keep):
                cum = cum + p[j]
                if cum > target:
                    chosen = idx[j]
                    break
    free(val); free(idx); free(p)
    if chosen < 0:
        raise ValueError("nothing can be sampled: every logit is -inf or NaN (masked by logit_bias, "
                         "ignore_eos or the caller)")
    return chosen


# ------------------------------------------------------------------------------------------------
# Top-p without top-k: the nucleus of a full-vocabulary distribution without sorting it.
#
# The reference (gpt2cy.generation.sampling.candidates) sorts the probabilities, best first (ties: lower id first),
# and keeps the shortest prefix whose float64 running sum reaches top_p. Here: one vectorised pass sums
# the mass at or above each of NT power-of-4 steps below the max (in 2^-60 fixed point: integer sums
# vectorise; the input must be a normalised distribution, as gpt2cy.generation.sampling.softmax makes it),
# which names the band the cut falls in; only that band's members are gathered, then narrowed by a radix
# select on their float32 bit patterns (monotone in the value for non-negative floats: 12-bit digits of
# the offset into the band, two levels for a 2-octave band), and only the last few are sorted. Summing
# in another order (or in fixed point) moves a sum of n <= V terms in [0, 1] by at most ~n * 2^-53, so
# whenever the running sums on both sides of the cut
# are further than NUCLEUS_SLACK * V * 2^-53 from top_p the reference makes the same cut; otherwise
# (about once in 10^6 tokens) the caller falls back to the reference.

cdef enum:
    NB = 4096               # buckets per radix level (12 bits)
    NT = 8                  # power-of-4 thresholds of the first pass: bands down to max * 4^-7
    SMALL = 24              # candidates few enough to sort outright
    BLK = 256               # tokens per block of the skip-ahead scans

cdef double NUCLEUS_SLACK = 8.0

cdef union _F32:
    float f
    unsigned int u


cdef inline unsigned int _bits(float v) noexcept nogil:
    cdef _F32 c
    c.f = v
    return c.u


cdef inline long long _fixed(float v) noexcept nogil:
    """v in [0, 1] in 2^-60 fixed point."""
    return <long long>(<double>v * 1152921504606846976.0)


cdef int _nucleus_cut(const float* x,            # IN  [V] probabilities (>= 0, summing to ~1)
                      Py_ssize_t V, double top_p,
                      float* vb,                 # OUT the value of the last kept token
                      Py_ssize_t* n_ties,        # OUT how many tokens equal to *vb are kept (lowest ids)
                      float* vmax,               # OUT the largest probability
                      double* kept_mass          # OUT the kept tokens' total (running-sum order)
                      ) noexcept nogil:
    """Where the reference's top-p cut falls. Returns 1 (keep every x > *vb and the first *n_ties ids
    with x == *vb), 2 (keep everything: the total never reaches top_p), 0 (too close to call, or an
    entry that is NaN, negative or above 1: use the reference), -1 (out of memory)."""
    cdef double eps = NUCLEUS_SLACK * (V + SMALL) * 1.1102230246251565e-16
    if V > 0x7FFFFFF0:                          # ids are kept as int below
        return 0
    cdef double above[NT + 1]
    cdef float thr[NT + 1]
    cdef float hi, lo
    cdef Py_ssize_t i, j, n, m, b, k, t
    cdef int shift, status = 0
    cdef unsigned int d, lb, up_bits, width
    cdef double cum, prev
    cdef float v
    # 1. one vectorised pass: the max, then the mass at or above NT power-of-4 steps below it
    hi = _max_checked(x, V)
    if not (hi >= 0.0 and hi <= 1.0):
        return 0
    vmax[0] = hi
    _F32_from_bits(_bits(hi) & 0x7F800000u, &thr[0])       # the power of two at or below the max
    for t in range(1, NT):
        thr[t] = thr[t - 1] * 0.25
    thr[NT] = 0.0                                           # everything: the total
    _masses_above(x, V, thr, above)
    if not (above[NT] > 0.999 and above[NT] < 1.001):     # not a normalised distribution
        return 0
    # 2. the band the running sum crosses top_p in: [thr[t], thr[t - 1])
    t = 0
    while t <= NT and above[t] < top_p:
        t += 1
    if t > NT:
        kept_mass[0] = above[NT]
        return 2 if above[NT] < top_p - eps else 0
    cum = above[t - 1] if t > 0 else 0.0
    lo = thr[t]
    # t == 0: every member lies in [thr[0], max] inside one octave; otherwise [thr[t], thr[t - 1])
    up_bits = _bits(thr[t - 1]) if t > 0 else _bits(thr[0]) + 0x800000u
    lb = _bits(lo)
    width = up_bits - lb
    n = _count_in(x, V, lb, up_bits)
    # 3. its members, in id order; then narrow them by 12-bit digits of (pattern - lb): a 2-octave band
    #    is 2^24 patterns, so two levels at most (the first usually leaves few enough to sort)
    cdef double* mass = <double*>malloc(NB * sizeof(double))
    cdef int* cand = <int*>malloc((n + 17) * sizeof(int))
    cdef unsigned short* digit = <unsigned short*>malloc((n + 17) * sizeof(unsigned short))
    if mass == NULL or cand == NULL or digit == NULL:
        free(mass); free(cand); free(digit)
        return -1
    m = n
    n = gpt2cy_collect(<const unsigned int*>x, V, lb, width, cand, m)
    while True:
        shift = 0                               # the smallest shift that puts the width in NB buckets
        while (width - 1) >> shift >= NB:
            shift += 1
        memset(mass, 0, NB * sizeof(double))
        for j in range(n):
            v = x[cand[j]]
            d = (_bits(v) - lb) >> shift
            digit[j] = <unsigned short>d        # kept for the compaction below
            mass[d] += v
        b = ((width - 1) >> shift)              # the highest bucket where the running sum reaches top_p
        while b >= 0:
            if cum + mass[b] >= top_p:          # (cum < top_p: an empty bucket never is)
                break
            cum += mass[b]
            b -= 1
        if b < 0:                               # the band's mass said otherwise: rounding, too close
            status = 0
            break
        n = gpt2cy_keep_digit(cand, digit, n, <unsigned short>b)
        lb += (<unsigned int>b) << shift
        width = 1u << shift
        if n <= SMALL or shift == 0:
            # sort the few left best first (insertion sort; ties keep id order); after the last level
            # they are all equal and already in order
            for j in range(1, n):
                k = cand[j]
                v = x[k]
                i = j - 1
                while i >= 0 and x[cand[i]] < v:
                    cand[i + 1] = cand[i]
                    i -= 1
                cand[i + 1] = k
            status = 0
            for j in range(n):
                prev = cum
                cum += x[cand[j]]
                if cum >= top_p:
                    if cum - top_p >= eps and top_p - prev >= eps:
                        vb[0] = x[cand[j]]
                        k = 0
                        for i in range(j + 1):
                            if x[cand[i]] == vb[0]:
                                k += 1
                        n_ties[0] = k
                        kept_mass[0] = cum
                        status = 1
                    break
            break
    free(mass); free(cand); free(digit)
    return status


cdef inline void _F32_from_bits(unsigned int u, float* out) noexcept nogil:
    cdef _F32 c
    c.u = u
    out[0] = c.f


cdef float _max_checked(const float* x, Py_ssize_t V) noexcept nogil:
    """max(x), or NaN when an entry is NaN, negative or above 1. For floats >= 0 the bit patterns
    order as the values do, and anything else has a pattern above 1.0's: one integer max (vectorised)."""
    cdef const unsigned int* u = <const unsigned int*>x
    cdef unsigned int m = 0
    cdef Py_ssize_t i
    cdef float r
    for i in range(V):
        m = u[i] if u[i] > m else m
    if m > 0x3F800000u:
        return <float>NAN
    _F32_from_bits(m, &r)
    return r


cdef void _masses_above(const float* x, Py_ssize_t V,
                        const float* thr,        # IN  [NT + 1] thresholds, falling
                        double* above            # OUT [NT + 1] sum of x[i] >= thr[t]
                        ) noexcept nogil:
    """Masses at or above each threshold in 2^-60 fixed point: integer sums vectorise (no float
    reassociation), and truncating V terms moves a sum by < V * 2^-60, far inside the slack."""
    cdef const unsigned int* u = <const unsigned int*>x
    cdef unsigned long long acc[NT + 1]         # unsigned: a row that is not normalised wraps, never UB
    cdef unsigned int tb[NT + 1]
    cdef unsigned long long q
    cdef unsigned int ui
    cdef Py_ssize_t i, t
    for t in range(NT + 1):
        acc[t] = 0
        tb[t] = _bits(thr[t])
    for i in range(V):
        ui = u[i]
        q = <unsigned long long>_fixed(x[i])
        for t in range(NT + 1):
            acc[t] += q if ui >= tb[t] else 0
    for t in range(NT + 1):
        above[t] = <double>acc[t] * 8.673617379884035e-19


cdef Py_ssize_t _count_in(const float* x, Py_ssize_t V, unsigned int lo, unsigned int up) noexcept nogil:
    """How many bit patterns lie in [lo, up) (vectorised)."""
    cdef const unsigned int* u = <const unsigned int*>x
    cdef Py_ssize_t i, n = 0
    cdef unsigned int width = up - lo
    for i in range(V):
        n += <Py_ssize_t>(u[i] - lo < width)        # lo <= u < up in one unsigned compare
    return n


cdef extern from *:
    """
    /* The ids i with lo <= bits[i] < lo + width, in order, into out (room for cap + 16): on a flat row
       most of the vocabulary, so AVX-512 packs 16 at a time; the scalar loop is branch-free. */
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #endif
    static Py_ssize_t gpt2cy_collect(const unsigned int* bits, Py_ssize_t V, unsigned int lo,
                                     unsigned int width, int* out, Py_ssize_t cap) {
        Py_ssize_t n = 0, j = 0;
    #if defined(__AVX512F__)
        const __m512i vlo = _mm512_set1_epi32((int)lo), vw = _mm512_set1_epi32((int)width);
        const __m512i step = _mm512_set1_epi32(16);
        __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; j + 16 <= V; j += 16) {
            __m512i v = _mm512_loadu_si512((const void*)(bits + j));
            __mmask16 k = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(v, vlo), vw);
            if (k) {
                int c = __builtin_popcount((unsigned int)k);
                if (n + c > cap) return n;   /* the row changed since it was counted */
                _mm512_storeu_si512((void*)(out + n), _mm512_maskz_compress_epi32(k, idx));
                n += c;
            }
            idx = _mm512_add_epi32(idx, step);
        }
    #endif
        for (; j < V; j++) {
            int hit = (bits[j] - lo) < width;
            if (hit && n >= cap) return n;
            out[n] = (int)j;
            n += hit;
        }
        return n;
    }

    /* Keep the cand[j] whose digit[j] == b, in order, in place (cand has room for n + 16). */
    static Py_ssize_t gpt2cy_keep_digit(int* cand, const unsigned short* digit, Py_ssize_t n,
                                        unsigned short b) {
        Py_ssize_t m = 0, j = 0;
    #if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
        const __m256i vb = _mm256_set1_epi16((short)b);
        for (; j + 16 <= n; j += 16) {
            __mmask16 k = _mm256_cmpeq_epi16_mask(_mm256_loadu_si256((const __m256i*)(digit + j)), vb);
            __m512i ids = _mm512_loadu_si512((const void*)(cand + j));
            _mm512_storeu_si512((void*)(cand + m), _mm512_maskz_compress_epi32(k, ids));
            m += __builtin_popcount((unsigned int)k);
        }
    #endif
        for (; j < n; j++) {
            cand[m] = cand[j];
            m += digit[j] == b;
        }
        return m;
    }
    """
    Py_ssize_t gpt2cy_keep_digit(int* cand, const unsigned short* digit, Py_ssize_t n,
                                 unsigned short b) noexcept nogil
    Py_ssize_t gpt2cy_collect(const unsigned int* bits, Py_ssize_t V, unsigned int lo, unsigned int width,
                              int* out, Py_ssize_t cap) noexcept nogil


cdef Py_ssize_t _draw(const float* x, Py_ssize_t V,
                      unsigned int low,          # tokens with bits >= low are kept
                      unsigned int tie,          # and the first n_ties with bits == tie (n_ties 0: none)
                      Py_ssize_t n_ties, double u) noexcept nogil:
    """Walk the kept tokens in id order and return the first whose running mass (2^-60 fixed point,
    exact integer sums) exceeds u times the kept total; -1 when the kept mass is 0 in fixed point.
    Blocks without a tie and short of the target are summed by a vectorised loop."""
    cdef const unsigned int* b = <const unsigned int*>x
    cdef long long total = 0, cum = 0, target, part, qt
    cdef Py_ssize_t i, j, end, seen = 0
    cdef int ties
    for i in range(V):
        total += _fixed(x[i]) if b[i] >= low else 0
    cdef float tf
    _F32_from_bits(tie, &tf)
    qt = _fixed(tf)
    if n_ties:
        total += n_ties * qt
    if total <= 0:
        return -1
    target = <long long>(u * <double>total)
    if target >= total:
        target = total - 1
    i = 0
    while i < V:
        end = i + BLK if i + BLK < V else V
        part = 0
        ties = 0
        for j in range(i, end):
            part += _fixed(x[j]) if b[j] >= low else 0
            ties += <int>(b[j] == tie)
        if (ties == 0 or n_ties == 0 or seen >= n_ties) and cum + part <= target:
            cum += part
            i = end
            continue
        for j in range(i, end):
            if b[j] >= low:
                cum += _fixed(x[j])
            elif n_ties and b[j] == tie and seen < n_ties:
                seen += 1
                cum += qt
            else:
                continue
            if cum > target:
                return j
        i = end
    return -1


cdef inline bint _kept(float v, int status, float vb, Py_ssize_t n_ties, Py_ssize_t* ties_seen,
                       double floor) noexcept nogil:
    """Is a token of probability v (met in id order) in the nucleus and above the min-p floor?"""
    if <double>v < floor:
        return False
    if status == 2 or v > vb:
        return True
    if v == vb and ties_seen[0] < n_ties:
        ties_seen[0] += 1
        return True
    return False


def nucleus(const float[::1] probs not None, double top_p, double min_p=0.0):
    """The ids (ascending) the reference keeps for top-p then min-p on a full distribution `probs` [V]
    (float32, as gpt2cy.generation.sampling.softmax makes it), or None when the cut is too close to call or
    `probs` is not a distribution."""
    cdef Py_ssize_t V = probs.shape[0], i, n = 0, seen = 0, n_ties = 0
    if V and not 0.999 < np.sum(np.asarray(probs), dtype=np.float64) < 1.001:
        return None
    cdef float vb = 0.0, hi = 0.0
    cdef double mass = 0.0
    cdef int status
    if V == 0:
        raise ValueError("empty distribution")
    with nogil:
        status = _nucleus_cut(&probs[0], V, top_p, &vb, &n_ties, &hi, &mass) if top_p < 1.0 else 3
    if status == -1:
        raise MemoryError()
    if status == 0:
        return None
    if status == 3:                             # top_p 1: min-p alone (the max still has to be found)
        hi = np.max(np.asarray(probs))
        status = 2
    out = np.empty(V, dtype=np.intp)
    cdef cnp.intp_t[::1] o = out
    cdef double floor = min_p * <double>hi if min_p > 0.0 else -1.0
    with nogil:
        for i in range(V):
            if _kept(probs[i], status, vb, n_ties, &seen, floor):
                o[n] = i
                n += 1
    return out[:n]


def sample_nucleus(const float[::1] probs not None, double top_p, double min_p, double u):
    """Draw one token from the top-p / min-p cut of `probs` [V] (float32 summing to 1, as
    gpt2cy.generation.sampling.softmax makes it: a row that does not is refused when seen, but not always seen;
    the same kept set as nucleus()), walking the kept tokens in id
    order: the first whose running mass exceeds u (in [0, 1)) times the kept total. Returns -1 when the
    cut is too close to call or the input is not a distribution (use the reference instead)."""
    cdef Py_ssize_t V = probs.shape[0], n_ties = 0, chosen = -1
    cdef float vb = 0.0, hi = 0.0, f
    cdef int status = 2
    cdef double total = 0.0, floor
    cdef unsigned int low = 0, tie = 0, fb = 0
    if V == 0:
        raise ValueError("empty distribution")
    if not 0.0 <= u < 1.0:
        raise ValueError(f"u must be in [0, 1), got {u}")
    with nogil:
        if top_p < 1.0:
            status = _nucleus_cut(&probs[0], V, top_p, &vb, &n_ties, &hi, &total)
        else:
            hi = _max_checked(&probs[0], V)
            if not hi >= 0.0:
                status = 0
        if status == 1 or status == 2:
            if status == 1:
                low, tie = _bits(vb) + 1, _bits(vb)
            if min_p > 0.0:                     # the float64 floor as a float32 bit pattern
                floor = min_p * <double>hi
                f = <float>floor
                fb = _bits(f)
                if <double>f < floor:
                    fb += 1
                if fb > low:
                    low = fb
                if status == 1 and tie < fb:
                    n_ties = 0
            chosen = _draw(&probs[0], V, low, tie, n_ties if status == 1 else 0, u)
    if status == -1:
        raise MemoryError()
    return chosen


def shift_scale(const float[::1] logits not None, float scale, float[::1] out not None):
    """out[i] = (logits[i] - max(logits)) * scale, rounded to float32 after each step, exactly as numpy's
    subtract then in-place multiply make it (NaN anywhere: a NaN max, as numpy's), in one pass after
    the max instead of three numpy passes. logits, out: [V] float32."""
    cdef Py_ssize_t V = logits.shape[0], i
    if out.shape[0] != V:
        raise ValueError(f"out has {out.shape[0]} entries, logits {V}")
    if V == 0:
        raise ValueError("empty logits")
    cdef float m, v
    cdef const float* x = &logits[0]
    cdef float* y = &out[0]
    cdef const unsigned int* u = <const unsigned int*>x
    cdef int key, kmax = -0x7FFFFFFF - 1
    cdef unsigned int a, amax = 0
    with nogil:
        # integer maxima vectorise where a float max (NaN rules) does not: a key that orders as the
        # floats do, and the largest magnitude pattern, which is above +inf's only for a NaN
        for i in range(V):
            a = u[i] & 0x7FFFFFFFu
            key = <int>(u[i] ^ ((<unsigned int>(<int>u[i] >> 31)) & 0x7FFFFFFFu))
            kmax = key if key > kmax else kmax
            amax = a if a > amax else amax
        _F32_from_bits(<unsigned int>(kmax ^ ((kmax >> 31) & 0x7FFFFFFF)), &m)
        if amax > 0x7F800000u:
            m = <float>NAN
        for i in range(V):
            v = x[i] - m
            y[i] = v * scale


cdef float _pairwise(const float* a, Py_ssize_t n) noexcept nogil:
    """numpy's pairwise float32 sum (8 running sums in blocks of up to 128, halves above that)."""
    cdef float r[8]
    cdef float res
    cdef Py_ssize_t i, j, n2
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    if n <= 128:
        for j in range(8):
            r[j] = a[j]
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r[j] += a[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(a, n2) + _pairwise(a + n2, n - n2)


def normalise(float[::1] p not None):
    """p *= float32(1 / sum(p)) in place, with numpy's pairwise float32 sum (the same bits as
    `p *= np.float32(1.0 / float(p.sum()))`, in two passes instead of numpy's slower sum). p: [V]."""
    cdef Py_ssize_t V = p.shape[0], i
    if V == 0:
        raise ValueError("empty distribution")
    cdef float* y = &p[0]
    cdef float f
    with nogil:
        f = <float>(1.0 / <double>_pairwise(y, V))
        for i in range(V):
            y[i] = y[i] * f
