# The weights the engine multiplies by, described per tensor, and the per-dtype table of kernels that read
# them (after ggml's type traits: ggml/src/ggml.c `type_traits`).  The block loop in _forward.pyx calls only
# through this table, so a new weight type is its kernels plus one entry in _dtypes.pyx's table (and its
# geometry in weights.py's DTYPES); the block loop does not change.
#
# Activations, biases, layer norms and wpe are always float32; only the four matmul weights of each block
# and wte (looked up by id, and the tied output projection) take other types.

# One weight tensor, as stored: `rows` rows of `cols` values, `ld` bytes apart.
#   a matmul weight, layout "in_out":  rows = K (inputs),  cols = N (outputs)   [in, out], Conv1D's layout
#   a matmul weight, layout "out_in":  rows = N (outputs), cols = K (inputs)    [out, in] (q8_0: blocks along K)
#   wte (layout "out_in"):             rows = n_vocab,      cols = n_embd        [out, in] as the lm_head
# Each dtype's linear kernel takes one layout (DTypeKernels.matmul_layout); the engine checks it.
cdef enum:
    LAYOUT_IN_OUT = 0
    LAYOUT_OUT_IN = 1

ctypedef struct WeightDesc:
    int dtype                  # index into the table (weights.DTYPES[name].code)
    int layout                 # LAYOUT_IN_OUT or LAYOUT_OUT_IN
    const void* data           # rows * ld bytes
    const void* scales         # per-block scales of block-quantised types; NULL for f32
    Py_ssize_t rows
    Py_ssize_t cols
    Py_ssize_t ld              # row stride in bytes

# out[M, N] = act(x[M, K] @ W + bias), or out += x @ W + bias when accumulate (then act is ACT_NONE)
#   x: [M, K] row stride ldx;  W: [K, N] "in_out" or [N, K] "out_in" (matmul_layout);  bias: [N] or NULL
#   out: [M, N] row stride ldo
# A row's bits do not depend on M or n_threads (decode equals prefill).
ctypedef void (*linear_fn)(const float* x, Py_ssize_t ldx, const WeightDesc* w, const float* bias,
                           float* out, Py_ssize_t ldo, Py_ssize_t M, int act, bint accumulate,
                           int n_threads) noexcept nogil

# out[M, V] = x[M, C] @ W.T   (W: "out_in" [V, C]: the tied lm_head)
#   logits_rows: each row computed alone (the bits of a one-row call): the last row of every sequence
#   logits_dense: all M rows at once (tiles; the bits may differ from logits_rows): logits of every row
ctypedef void (*logits_fn)(const float* x, Py_ssize_t ldx, const WeightDesc* w, float* out, Py_ssize_t ldo,
                           Py_ssize_t M, int n_threads) noexcept nogil

# out[t, :] = W[ids[t], :] as float32, for t < T (the token embedding lookup)
#   W: "out_in" [V, C];  ids: [T] in [0, V);  out: [T, C] row stride ldo
ctypedef void (*rows_fn)(const WeightDesc* w, const Py_ssize_t* ids, Py_ssize_t T, float* out,
                         Py_ssize_t ldo) noexcept nogil

ctypedef struct DTypeKernels:
    const char* name           # "f32", ...: the key of weights.DTYPES
    int matmul_layout          # the layout `linear` reads (LAYOUT_IN_OUT or LAYOUT_OUT_IN)
    linear_fn linear
    logits_fn logits_rows
    logits_fn logits_dense
    rows_fn embed_rows

# The kernels of dtype `code`, or NULL when the engine has none.
cdef const DTypeKernels* dtype_kernels(int code) noexcept nogil
