# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (Engine.forward checks ids, positions and the output shape before the nogil block; kernels index raw pointers)
"""The engine: GPT-2's block loop over the KV cache, in nogil code calling the kernels.

Weights are never copied: the engine keeps pointers into the caller's float32 arrays (views of the mapped
checkpoint) and holds references so they stay alive. The KV cache and the activation buffers are allocated
once, for n_ctx positions; numpy's large allocations are lazily backed, so pages count only once written.
"""
from libc.stdlib cimport malloc, free
import numpy as np

from ._matmul cimport matmul, matmul_nt, ACT_NONE, ACT_GELU
from ._kernels cimport layernorm, embed, kv_store, attention, QB, kv_capacity

cdef float LN_EPS = 1e-5

ctypedef struct Block:
    const float* ln1_g     # [C]
    const float* ln1_b     # [C]
    const float* attn_w    # [C, 3C]
    const float* attn_b    # [3C]
    const float* proj_w    # [C, C]
    const float* proj_b    # [C]
    const float* ln2_g     # [C]
    const float* ln2_b     # [C]
    const float* fc_w      # [C, 4C]
    const float* fc_b      # [4C]
    const float* mproj_w   # [4C, C]
    const float* mproj_b   # [C]


cdef const float* _ptr(object arrays, dict tensors, str name, tuple shape) except NULL:
    """Address of tensors[name] after checking it is a float32 C-contiguous array of `shape`."""
    a = tensors.get(name)
    if a is None:
        raise ValueError(f"missing tensor '{name}'")
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"tensor '{name}' must be a C-contiguous float32 numpy array")
    if a.shape != shape:
        raise ValueError(f"tensor '{name}' has shape {a.shape}, expected {shape}")
    arrays.append(a)                      # keep it alive as long as the engine
    cdef const float[::1] flat = a.reshape(-1)
    return &flat[0]


cdef class Engine:
    """GPT-2 forward pass with a KV cache. Model (model.py) is the public face; this class trusts nothing
    about ids or positions either, but leaves the friendly messages to Model."""

    # n_ctx: the positions allocated, at most the config's (the checkpoint's wpe rows)
    cdef readonly Py_ssize_t n_vocab, n_ctx, n_embd, n_head, n_layer, head_dim
    cdef readonly Py_ssize_t n_past          # positions held in the KV cache
    cdef Py_ssize_t _cap                     # cache row length: n_ctx padded (kv_capacity)
    cdef int _threads
    cdef bint _busy                          # a forward is running (its buffers must not change)
    cdef bint _ready                         # __init__ completed: every pointer is set
    cdef list _arrays                        # the weight arrays and our buffers, kept alive
    cdef Block* _blocks
    cdef const float* _wte                   # [V, C]
    cdef const float* _wpe                   # [n_ctx, C]
    cdef const float* _lnf_g                 # [C]
    cdef const float* _lnf_b                 # [C]
    cdef float* _k_cache                     # [L, H, D, cap]  (keys transposed, see _kernels.pxd)
    cdef float* _v_cache                     # [L, H, cap, D]
    cdef float* _x                           # [n_ctx, C]   residual stream
    cdef float* _xn                          # [n_ctx, C]   layer-norm output
    cdef float* _qkv                         # [n_ctx, 3C]
    cdef float* _att                         # [n_ctx, C]   attention output (heads side by side)
    cdef float* _h                           # [n_ctx, 4C]  MLP hidden
    cdef float* _scratch                     # [threads, QB * cap] attention scores
    cdef object _scratch_arr

    def __cinit__(self):
        self._blocks = NULL

    def __init__(self, config, dict tensors not None, int threads=1, n_ctx=None):
        """config: anything with n_vocab, n_ctx, n_embd, n_head, n_layer; tensors: canonical names -> arrays.
        n_ctx: positions to allocate the KV cache and buffers for (default and maximum: config.n_ctx)."""
        cdef Py_ssize_t V = config.n_vocab, P = config.n_ctx, C = config.n_embd
        cdef Py_ssize_t H = config.n_head, L = config.n_layer, i
        cdef Py_ssize_t N = P if n_ctx is None else n_ctx
        if min(V, P, C, H, L) < 1 or C % H:
            raise ValueError(f"invalid config {config!r}")
        if not 1 <= N <= P:
            raise ValueError(f"n_ctx must be in [1, {P}], got {N}")
        self.n_vocab, self.n_ctx, self.n_embd, self.n_head, self.n_layer = V, N, C, H, L
        self.head_dim = C // H
        self.n_past = 0
        self._busy = False
        self._ready = False
        self._arrays = []
        free(self._blocks)                   # __init__ called again: start over
        self._blocks = NULL
        self._wte = _ptr(self._arrays, tensors, "wte", (V, C))
        self._wpe = _ptr(self._arrays, tensors, "wpe", (P, C))     # rows past N are never read
        self._lnf_g = _ptr(self._arrays, tensors, "ln_f.g", (C,))
        self._lnf_b = _ptr(self._arrays, tensors, "ln_f.b", (C,))
        self._blocks = <Block*>malloc(L * sizeof(Block))
        if self._blocks == NULL:
            raise MemoryError()
        for i in range(L):
            p = f"h{i}."
            b = &self._blocks[i]
            b.ln1_g = _ptr(self._arrays, tensors, p + "ln_1.g", (C,))
            b.ln1_b = _ptr(self._arrays, tensors, p + "ln_1.b", (C,))
            b.attn_w = _ptr(self._arrays, tensors, p + "attn.c_attn.w", (C, 3 * C))
            b.attn_b = _ptr(self._arrays, tensors, p + "attn.c_attn.b", (3 * C,))
            b.proj_w = _ptr(self._arrays, tensors, p + "attn.c_proj.w", (C, C))
            b.proj_b = _ptr(self._arrays, tensors, p + "attn.c_proj.b", (C,))
            b.ln2_g = _ptr(self._arrays, tensors, p + "ln_2.g", (C,))
            b.ln2_b = _ptr(self._arrays, tensors, p + "ln_2.b", (C,))
            b.fc_w = _ptr(self._arrays, tensors, p + "mlp.c_fc.w", (C, 4 * C))
            b.fc_b = _ptr(self._arrays, tensors, p + "mlp.c_fc.b", (4 * C,))
            b.mproj_w = _ptr(self._arrays, tensors, p + "mlp.c_proj.w", (4 * C, C))
            b.mproj_b = _ptr(self._arrays, tensors, p + "mlp.c_proj.b", (C,))
        self._cap = kv_capacity(N)
        self._k_cache = self._buffer(L * C * self._cap)
        self._v_cache = self._buffer(L * C * self._cap)
        self._x = self._buffer(N * C)
        self._xn = self._buffer(N * C)
        self._qkv = self._buffer(N * 3 * C)
        self._att = self._buffer(N * C)
        self._h = self._buffer(N * 4 * C)
        self.threads = threads
        self._ready = True

    def __dealloc__(self):
        free(self._blocks)

    cdef float* _buffer(self, Py_ssize_t n) except NULL:
        # np.empty: large blocks come from mmap, so untouched pages (most of the cache) cost no RSS
        a = np.empty(n, dtype=np.float32)
        self._arrays.append(a)
        cdef float[::1] v = a
        return &v[0]

    @property
    def threads(self):
        """Threads the kernels use."""
        return self._threads

    @threads.setter
    def threads(self, int n):
        if n < 1:
            raise ValueError("threads must be >= 1")
        if self._busy:
            raise RuntimeError("cannot change threads while the model is running in another thread")
        a = np.empty((n, QB * self._cap), dtype=np.float32)
        cdef float[:, ::1] v = a
        self._scratch_arr = a
        self._scratch = &v[0, 0]
        self._threads = n

    def reset(self):
        """Forget the cached positions (the cache memory is kept and overwritten)."""
        if self._busy:
            raise RuntimeError("cannot reset while the model is running in another thread")
        self.n_past = 0

    def truncate(self, Py_ssize_t n):
        """Keep the first n cached positions (0 <= n <= n_past); later ones are overwritten by the next
        forward. Positions are absolute, so what stays is exactly the cache of those n tokens."""
        if n < 0 or n > self.n_past:
            raise ValueError(f"cannot truncate to {n} positions: the cache holds {self.n_past}")
        if self._busy:
            raise RuntimeError("cannot truncate while the model is running in another thread")
        self.n_past = n

    def forward(self, const Py_ssize_t[::1] ids not None, float[:, ::1] out not None, bint all_rows):
        """Run ids at positions n_past.. and append them to the cache.

        out: [len(ids), n_vocab] when all_rows, else [1, n_vocab] for the last position only.
        """
        cdef Py_ssize_t T = ids.shape[0], i
        if not self._ready:
            raise RuntimeError("Engine.__init__ did not complete")
        if T < 1 or self.n_past + T > self.n_ctx:
            raise ValueError(f"{T} positions after {self.n_past} do not fit in n_ctx {self.n_ctx}")
        for i in range(T):
            if ids[i] < 0 or ids[i] >= self.n_vocab:
                raise ValueError(f"token id {ids[i]} out of range [0, {self.n_vocab})")
        if out.shape[0] != (T if all_rows else 1) or out.shape[1] != self.n_vocab:
            raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]})")
        # one forward at a time: the flag is tested and set under the GIL, so two Python threads sharing a
        # model get an error instead of interleaving in the same buffers
        if self._busy:
            raise RuntimeError("the model is already running in another thread; use one model per thread")
        self._busy = True
        try:
            with nogil:
                self._run(&ids[0], T, &out[0, 0], all_rows)
            self.n_past += T
        finally:
            self._busy = False

    def step(self, Py_ssize_t token, float[::1] out not None):
        """Run one token at position n_past and append it: out [n_vocab] gets its logits (the decode path:
        no arrays made per token)."""
        if not self._ready:
            raise RuntimeError("Engine.__init__ did not complete")
        if self.n_past + 1 > self.n_ctx:
            raise ValueError(f"position {self.n_past} does not fit in n_ctx {self.n_ctx}")
        if token < 0 or token >= self.n_vocab:
            raise ValueError(f"token id {token} out of range [0, {self.n_vocab})")
        if out.shape[0] != self.n_vocab:
            raise ValueError(f"out has {out.shape[0]} entries, expected {self.n_vocab}")
        if self._busy:
            raise RuntimeError("the model is already running in another thread; use one model per thread")
        self._busy = True
        try:
            with nogil:
                self._run(&token, 1, &out[0], False)
            self.n_past += 1
        finally:
            self._busy = False

    cdef void _run(self, const Py_ssize_t* ids, Py_ssize_t T, float* out, bint all_rows) noexcept nogil:
        cdef Py_ssize_t C = self.n_embd, H = self.n_head, D = self.head_dim, N = self._cap
        cdef Py_ssize_t l, r0, R, layer_kv = C * N
        cdef int nt = self._threads
        cdef Block* b
        cdef float* kc
        cdef float* vc
        embed(ids, T, self.n_past, self._wte, self._wpe, self._x, C)                  # x = wte[ids] + wpe[pos]
        for l in range(self.n_layer):
            b = &self._blocks[l]
            kc = self._k_cache + l * layer_kv
            vc = self._v_cache + l * layer_kv
            layernorm(self._x, C, b.ln1_g, b.ln1_b, self._xn, C, T, C, LN_EPS, nt)
            matmul(self._xn, C, b.attn_w, b.attn_b, self._qkv, 3 * C, T, C, 3 * C,   # qkv = xn @ w + b
                   ACT_NONE, 0, nt)
            kv_store(self._qkv, 3 * C, kc, vc, T, self.n_past, H, D, N)
            attention(self._qkv, 3 * C, kc, vc, self._att, C, self._scratch, T, self.n_past, H, D, N, nt)
            matmul(self._att, C, b.proj_w, b.proj_b, self._x, C, T, C, C,           # x += att @ w + b
                   ACT_NONE, 1, nt)
            layernorm(self._x, C, b.ln2_g, b.ln2_b, self._xn, C, T, C, LN_EPS, nt)
            matmul(self._xn, C, b.fc_w, b.fc_b, self._h, 4 * C, T, C, 4 * C,         # h = gelu(xn @ w + b)
                   ACT_GELU, 0, nt)
            matmul(self._h, 4 * C, b.mproj_w, b.mproj_b, self._x, C, T, 4 * C, C,    # x += h @ w + b
                   ACT_NONE, 1, nt)
        # ln_f and the tied output projection only on the rows whose logits are wanted
        r0 = 0 if all_rows else T - 1
        R = T - r0
        layernorm(self._x + r0 * C, C, self._lnf_g, self._lnf_b, self._xn, C, R, C, LN_EPS, nt)
        matmul_nt(self._xn, C, self._wte, out, self.n_vocab, R, C, self.n_vocab, nt)  # logits = xn @ wte.T
