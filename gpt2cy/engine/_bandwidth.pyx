# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A memory read-bandwidth probe for the benchmarks (bench/bench_forward.py): not used by the engine.

Decode is bound by how fast the weights stream from memory, so the benchmarks compare tokens/s with the
machine's read bandwidth measured the same way the matrix-vector kernel reads: several long runs side by
side per thread (one sequential stream per core leaves memory bandwidth unused).
"""
from cython.parallel cimport prange

cdef enum:
    LANES = 16               # partial sums per stream: one AVX-512 register, two AVX2 ones
    STREAM_CHUNK = 1 << 18   # floats per task (1 MiB)
    STREAMS = 4              # sub-ranges each task reads side by side


cdef inline double _sum_streams(const float* x, Py_ssize_t n) noexcept nogil:
    # sum of x[:n] over STREAMS equal parts read side by side, LANES float partial sums each
    cdef float acc[STREAMS * LANES]
    cdef Py_ssize_t part = n // (STREAMS * LANES) * LANES       # floats per part, a multiple of LANES
    cdef Py_ssize_t i, k, p
    cdef double s = 0.0
    for k in range(STREAMS * LANES):
        acc[k] = 0.0
    for i in range(part // LANES):
        for p in range(STREAMS):
            for k in range(LANES):
                acc[p * LANES + k] = acc[p * LANES + k] + x[p * part + i * LANES + k]
    for k in range(STREAMS * LANES):
        s = s + acc[k]
    for i in range(STREAMS * part, n):
        s = s + x[i]
    return s


cdef double _stream_sum(const float* x, Py_ssize_t n, int n_threads) noexcept nogil:
    cdef Py_ssize_t c, n_chunks = (n + STREAM_CHUNK - 1) // STREAM_CHUNK
    cdef double total = 0.0
    for c in prange(n_chunks, num_threads=n_threads, schedule="static"):
        total += _sum_streams(x + c * STREAM_CHUNK, min(STREAM_CHUNK, n - c * STREAM_CHUNK))
    return total


def stream_sum(const float[::1] x not None, int n_threads=1):
    """Sum of a float32 array, read once from memory by n_threads threads (time it for read bandwidth)."""
    if n_threads < 1:
        raise ValueError("n_threads must be >= 1")
    cdef double total = 0.0
    if x.shape[0]:
        with nogil:
            total = _stream_sum(&x[0], x.shape[0], n_threads)
    return total
