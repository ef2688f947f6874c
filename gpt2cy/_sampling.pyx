# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (every index below comes from these loops over validated lengths; the def entry points check their inputs)
"""The per-token hot path of gpt2cy.sampling with top-k on: select, soften, cut and draw in C.

numpy's argpartition plus a dozen small array calls cost ~70 us a token, close to 1% of a 124M decode
step; one pass with a k-entry min-heap and scalar loops over the k survivors costs a fraction of that.
gpt2cy.sampling.candidates is the readable reference; tests check this module draws the same tokens.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport exp
from libc.stdlib cimport malloc, free

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
    """The k best entries of x (NaN never chosen), sorted best first; returns how many (<= k)."""
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
            if v != v:
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
    """Ids of the k largest logits, largest first (ties: lower id first; NaN never chosen)."""
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
                 double min_p, double u):
    """Draw one token: top-k, then softmax(v / temperature) over the k, then top-p and min-p cuts,
    then the first survivor whose cumulative probability exceeds u (in [0, 1)) times the kept mass.

    Same rules and arithmetic order as gpt2cy.sampling.candidates + Sampler (float64 over the k).
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
            if min_p > 0.0:                     # p[0] is the largest
                j = 1
                while j < keep and p[j] >= min_p * p[0]:
                    j += 1
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
        raise ValueError("every logit is NaN")
    return chosen
