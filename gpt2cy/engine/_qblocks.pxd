# Block-quantised products (ggml's q8_0 and q4_0 blocks, _lowp.h): w is [N, K] as N rows of K / 32 blocks,
# row stride ldw bytes; qtype: Q_Q8 (34-byte blocks) or Q_Q4 (18-byte blocks).
from libc.stdint cimport uint8_t

cdef enum:
    Q_Q8 = 0          # = LP_Q8 in _lowp.h
    Q_Q4 = 1          # = LP_Q4

# out[M, N] = act(x[M, K] @ W.T + bias), or out += x @ W.T + bias when accumulate (act then ACT_NONE)
#   x: [M, K] row stride ldx;  bias: [N] or NULL;  out: [M, N] row stride ldo;  K a multiple of 32
# A row's bits do not depend on M or n_threads.
cdef void q_linear(int qtype, const float* x, Py_ssize_t ldx, const uint8_t* w, Py_ssize_t ldw,
                   const float* bias, float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                   int act, bint accumulate, int n_threads) noexcept nogil

# out[t, :K] = W[ids[t], :] dequantized, t < T
cdef void q_rows(int qtype, const uint8_t* w, Py_ssize_t ldw, Py_ssize_t K, const Py_ssize_t* ids,
                 Py_ssize_t T, float* out, Py_ssize_t ldo) noexcept nogil
