# Matrix products of the forward pass. Weights stay in checkpoint layout [in, out] (row-major).

cdef enum:
    ACT_NONE = 0
    ACT_GELU = 1

# out[m, n] = act(sum_k x[m, k] * w[k, n] + bias[n])        (accumulate=0)
# out[m, n] += act(sum_k x[m, k] * w[k, n] + bias[n])       (accumulate=1: fused residual add)
#   x:    [M, K], row stride ldx >= K
#   w:    [K, N], contiguous
#   bias: [N] or NULL
#   out:  [M, N], row stride ldo >= N; must not alias x or w
# M == 1 takes the matrix-vector (decode) path. Parallel over output columns with n_threads.
cdef void matmul(const float* x, Py_ssize_t ldx, const float* w, const float* bias,
                 float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                 int act, bint accumulate, int n_threads) noexcept nogil

# out[m, n] = sum_k x[m, k] * wt[n, k]   (the tied lm_head: wt is wte [n_vocab, n_embd])
#   x:   [M, K], row stride ldx >= K
#   wt:  [N, K], contiguous
#   out: [M, N], row stride ldo >= N
cdef void matmul_nt(const float* x, Py_ssize_t ldx, const float* wt,
                    float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                    int n_threads) noexcept nogil
