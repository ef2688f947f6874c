# The non-matmul kernels of the forward pass (float32, row-major, raw pointers; callers validate shapes).
#
# KV cache layout, per layer (both allocated once and written in place):
#   k_cache: [H, D, cap]  keys stored transposed, so q . k over all cached positions is an axpy over
#                         contiguous positions (vectorises without -ffast-math)
#   v_cache: [H, cap, D]  values by position, so sum_j p[j] v[j] is an axpy over contiguous D
# cap = kv_capacity(n_ctx): n_ctx rounded up to KV_ALIGN, so score blocks may read (never use) the padding
# (H = n_head, D = head_dim, C = n_embd = H * D)

cdef enum:
    QB = 4              # query rows per attention block (the scratch holds QB score rows per thread)
    KV_ALIGN = 64       # cache rows are padded to a multiple of this (>= every score block width)

cdef inline Py_ssize_t kv_capacity(Py_ssize_t n_ctx) noexcept nogil:
    return (n_ctx + KV_ALIGN - 1) // KV_ALIGN * KV_ALIGN

# y[t] = (x[t] - mean) / sqrt(var + eps) * g + b for each of T rows
#   x: [T, C] row stride ldx;  g, b: [C];  y: [T, C] row stride ldy (may equal x)
cdef void layernorm(const float* x, Py_ssize_t ldx, const float* g, const float* b,
                    float* y, Py_ssize_t ldy, Py_ssize_t T, Py_ssize_t C, float eps,
                    int n_threads) noexcept nogil

# x[i] = gelu(x[i]) (GPT-2's tanh form) for i < n
cdef void gelu_inplace(float* x, Py_ssize_t n, int n_threads) noexcept nogil

# x[:n] = softmax(x[:n]), max-subtracted; returns nothing, one row, serial
cdef void softmax_inplace(float* x, Py_ssize_t n) noexcept nogil

# out[t] += x[t] (+ bias when not NULL) for T rows of C   (bias/residual add, when not fused into matmul)
#   x: [T, C] stride ldx;  bias: [C] or NULL;  out: [T, C] stride ldo
cdef void add_rows(const float* x, Py_ssize_t ldx, const float* bias, float* out, Py_ssize_t ldo,
                   Py_ssize_t T, Py_ssize_t C) noexcept nogil

# out[t] = wte[ids[t]] + wpe[pos0 + t]
#   ids: [T] each in [0, n_vocab);  wte: [n_vocab, C];  wpe: [n_ctx, C], pos0 + T <= n_ctx;  out: [T, C] contiguous
cdef void embed(const Py_ssize_t* ids, Py_ssize_t T, Py_ssize_t pos0, const float* wte,
                const float* wpe, float* out, Py_ssize_t C) noexcept nogil

# Copy the new tokens' keys and values from qkv into the cache at positions n_past .. n_past+T-1.
#   qkv: [T, 3C] stride ldq, columns [q | k | v], head h at h*D within each;  n_past + T <= n_ctx <= cap
cdef void kv_store(const float* qkv, Py_ssize_t ldq, float* k_cache, float* v_cache,
                   Py_ssize_t T, Py_ssize_t n_past, Py_ssize_t H, Py_ssize_t D,
                   Py_ssize_t cap) noexcept nogil

# Causal multi-head attention of T new queries over the cache (which already holds them):
# query t (position n_past + t) attends to positions 0 .. n_past + t.
#   qkv:     [T, 3C] stride ldq (only the q columns are read)
#   k_cache: [H, D, cap];  v_cache: [H, cap, D]  (cap = kv_capacity(n_ctx), n_past + T <= n_ctx)
#   out:     [T, C] stride ldo, head h written to columns h*D .. h*D+D-1
#   scratch: [n_threads, QB * cap] (QB score rows per thread)
cdef void attention(const float* qkv, Py_ssize_t ldq, const float* k_cache, const float* v_cache,
                    float* out, Py_ssize_t ldo, float* scratch, Py_ssize_t T, Py_ssize_t n_past,
                    Py_ssize_t H, Py_ssize_t D, Py_ssize_t cap, int n_threads) noexcept nogil
