# Matrix products of the forward pass. Weights stay in checkpoint layout [in, out] (row-major).

cdef enum:
    ACT_NONE = 0
    ACT_GELU = 1

# element types of w for matmul_typed / matmul_nt_typed (bf16: uint16 bit patterns. matmul_typed rounds x
# to bf16 and multiplies in pairs, VDPBF16PS's arithmetic (_bf16dot.h); matmul_nt* widen wt exactly and keep
# f32's arithmetic. The determinism below holds for both)
cdef enum:
    W_F32 = 0
    W_BF16 = 1

# out[m, n] = act(sum_k x[m, k] * w[k, n] + bias[n])        (accumulate=0)
# out[m, n] += sum_k x[m, k] * w[k, n] + bias[n]            (accumulate=1: fused residual add, act must be
#                                                           ACT_NONE: GPT-2 never adds an activation's output)
#   x:    [M, K], row stride ldx >= K
#   w:    [K, N], contiguous
#   bias: [N] or NULL
#   out:  [M, N], row stride ldo >= N; must not alias x or w
# M <= 16 streams w once (decode path); larger M runs cache-blocked tiles. Parallel over output columns
# (and row blocks when N is small) with n_threads; never reads outside the [M, K], [K, N], [N] extents.
# Determinism: each out[m, n] is summed in one fixed order (a multiply-add chain over k in blocks of 192, blocks
# combined in order, bias added with the first block), independent of n_threads and of M: a row gives the
# same bits in decode as inside a prefill.
cdef void matmul(const float* x, Py_ssize_t ldx, const float* w, const float* bias,
                 float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                 int act, bint accumulate, int n_threads) noexcept nogil

# out[m, n] = sum_k x[m, k] * wt[n, k]   (the tied lm_head: wt is wte [n_vocab, n_embd])
#   x:   [M, K], row stride ldx >= K
#   wt:  [N, K], contiguous
#   out: [M, N], row stride ldo >= N; must not alias x or wt
# M == 1: row dot products streaming wt once, parallel over N; M > 1: tiles, wt streamed once per call.
# Deterministic across thread counts (M == 1 and M > 1 sum in different fixed orders).
cdef void matmul_nt(const float* x, Py_ssize_t ldx, const float* wt,
                    float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                    int n_threads) noexcept nogil

# out[m, n] = sum_k x[m, k] * wt[n, k] for M rows of x, each row's bits those of matmul_nt with M == 1 (the
# decode row dots), wt read from memory once for all M rows (the last rows of a batch of sequences, each of
# which must get the logits it gets alone).  Shapes as matmul_nt; wtype as below.
cdef void matmul_nt_rows_typed(int wtype, const float* x, Py_ssize_t ldx, const void* wt, float* out,
                               Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                               int n_threads) noexcept nogil

# The same two products with w (wt) of element type wtype (W_F32: float, W_BF16: uint16 bf16 bits), same
# shapes, strides and determinism; matmul and matmul_nt are the W_F32 cases.
cdef void matmul_typed(int wtype, const float* x, Py_ssize_t ldx, const void* w, const float* bias,
                       float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                       int act, bint accumulate, int n_threads) noexcept nogil
cdef void matmul_nt_typed(int wtype, const float* x, Py_ssize_t ldx, const void* wt,
                          float* out, Py_ssize_t ldo, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N,
                          int n_threads) noexcept nogil
