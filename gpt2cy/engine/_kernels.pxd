# The non-matmul kernels of the forward pass (float32, row-major, raw pointers; callers validate shapes).
#
# KV cache layout, per slot and layer (allocated once and written in place):
#   k_cache: [H, cap / KVB, D, KVB]  keys in blocks of KVB positions, each block transposed: q . k over
#                         KVB positions is an axpy over one vector of positions (vectorises without
#                         -ffast-math), and a block's D x KVB floats are one contiguous 4 KB run that the
#                         hardware prefetcher follows (a [H, D, cap] layout put every d of a decode step's
#                         scores in another page, 64 cold misses per head)
#   v_cache: [H, cap, D]  values by position, so sum_j p[j] v[j] is an axpy over contiguous D
# Slot s of a layer starts slot_stride floats after slot 0 (the engine's layout is [slots, layers, ...]).
# cap = kv_capacity(n_ctx): n_ctx rounded up to KV_ALIGN, so score blocks may read (never use) the padding;
# _kernels.pyx asserts at compile time that KV_ALIGN is a multiple of every score block width.
# (H = n_head, D = head_dim, C = n_embd = H * D)

cdef extern from *:
    """
    #ifndef GPT2CY_KV_ALIGN
    #define GPT2CY_KV_ALIGN 64  /* cache rows are padded to a multiple of this (>= every score block) */
    #endif
    #define GPT2CY_KV_BLOCK 16  /* positions per key block (one AVX-512 vector of scores) */
    """
    enum: GPT2CY_KV_ALIGN
    enum: GPT2CY_KV_BLOCK

cdef enum:
    KVB = GPT2CY_KV_BLOCK
    QB = 4              # query rows per attention block (the scratch holds QB score rows per thread)

cdef inline Py_ssize_t kv_capacity(Py_ssize_t n_ctx) noexcept nogil:
    return (n_ctx + GPT2CY_KV_ALIGN - 1) // GPT2CY_KV_ALIGN * GPT2CY_KV_ALIGN

# A segment of a batch: `count` consecutive rows (from row `row0`) of one sequence, held in KV-cache slot
# `slot`, at positions pos0 .. pos0 + count - 1 (pos0 = the slot's n_past before this forward).
# The engine checks that segments do not overlap, that each slot has at most one, and that they fit n_ctx.
ctypedef struct Segment:
    Py_ssize_t slot
    Py_ssize_t row0
    Py_ssize_t count
    Py_ssize_t pos0

# y[t] = (x[t] - mean) / sqrt(var + eps) * g + b for each of T rows
#   x: [T, C] row stride ldx;  g, b: [C];  y: [T, C] row stride ldy (may equal x)
cdef void layernorm(const float* x, Py_ssize_t ldx, const float* g, const float* b,
                    float* y, Py_ssize_t ldy, Py_ssize_t T, Py_ssize_t C, float eps,
                    int n_threads) noexcept nogil

# x[row0 + t] += wpe[pos0 + t] for every segment and t < count (the token rows are already in x)
#   x: [rows, C] row stride ldx;  wpe: [n_ctx, C], pos0 + count <= n_ctx
cdef void add_positions(float* x, Py_ssize_t ldx, const Segment* segs, Py_ssize_t n_seg, const float* wpe,
                        Py_ssize_t C) noexcept nogil

# Copy each segment's new keys and values from qkv into its slot's cache at positions pos0 .. pos0+count-1
# (one task per segment and head, on up to n_threads threads).
#   qkv: [rows, 3C] stride ldq, columns [q | k | v], head h at h*D within each;  pos0 + count <= cap
cdef void kv_store(const float* qkv, Py_ssize_t ldq, float* k_cache, float* v_cache, Py_ssize_t slot_stride,
                   const Segment* segs, Py_ssize_t n_seg, Py_ssize_t H, Py_ssize_t D,
                   Py_ssize_t cap, int n_threads) noexcept nogil

# Causal multi-head attention of each segment's rows over its slot's cache (which already holds them):
# row row0 + t (position pos0 + t) attends to positions 0 .. pos0 + t of its own slot.
#   qkv:     [rows, 3C] stride ldq (only the q columns are read)
#   k_cache: [H, cap / KVB, D, KVB] per slot;  v_cache: [H, cap, D] per slot, slots slot_stride floats apart
#   out:     [rows, C] stride ldo, head h written to columns h*D .. h*D+D-1
#   scratch: [n_threads, QB * cap] (QB score rows per thread)
#   task0:   SCRATCH [n_seg + 1]
# Blocks of QB rows never cross a segment, so a sequence gets the same bits whatever else is in the batch.
cdef void attention(const float* qkv, Py_ssize_t ldq, const float* k_cache, const float* v_cache,
                    Py_ssize_t slot_stride, float* out, Py_ssize_t ldo, float* scratch,
                    const Segment* segs, Py_ssize_t n_seg, Py_ssize_t* task0,
                    Py_ssize_t H, Py_ssize_t D, Py_ssize_t cap, int n_threads) noexcept nogil
