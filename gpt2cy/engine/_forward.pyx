# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# (Engine checks ids, slots, positions and the output shape before the nogil block; kernels index raw pointers)
"""The engine: GPT-2's block loop over per-sequence KV-cache slots, in nogil code calling the kernels.

A forward takes a batch of rows, each tagged (slot, position): the rows of one slot are one contiguous run
at consecutive positions after that slot's cached ones, so one call can carry a prefill chunk of one
sequence and single decode tokens of others. Every kernel computes a row the same way whatever else is in
the batch (the matmuls by contract, the attention in blocks that never span two sequences, the last-row
logits one row at a time), so each sequence's logits have the bits of running it alone.

Weights are never copied: the engine keeps pointers into the caller's arrays (views of the mapped checkpoint),
described per tensor (weights.WeightTensor), and calls the matmul weights' kernels through the per-dtype table
(_dtypes.pxd). The KV cache and the activation buffers are allocated once; numpy's large allocations are
lazily backed, so pages count only once written.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
import numpy as np

from ._matmul cimport ACT_NONE, ACT_GELU
from ._kernels cimport layernorm, add_positions, kv_store, attention, QB, kv_capacity, Segment
from ._dtypes cimport WeightDesc, DTypeKernels, dtype_kernels, LAYOUT_IN_OUT, LAYOUT_OUT_IN

# absolute imports: this source is also built as gpt2cy.engine._isa_<variant>._forward (isa.py)
from gpt2cy.engine import aligned
from gpt2cy.engine.weights import DTYPES, IN_OUT, OUT_IN, VECTOR, WeightTensor, describe_all, supported
from gpt2cy.tensors import EMBEDDING, MATMUL, POSITIONS, tensor_specs

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #include <unistd.h>
    #endif
    /* No transparent huge pages for the whole pages inside [p, p + n). numpy asks for huge pages on large
       arrays; a value cache is written a position at a time into per-head blocks, so with 2 MiB pages the
       first position of a sequence would fault in the whole cache (1558M: 300 MB for a three-token chat). */
    static void gpt2cy_small_pages(void *p, size_t n) {
    #if defined(__linux__) && defined(MADV_NOHUGEPAGE)
        long pg = sysconf(_SC_PAGESIZE);
        if (pg <= 0) return;
        uintptr_t a = ((uintptr_t)p + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
        uintptr_t e = ((uintptr_t)p + n) & ~((uintptr_t)pg - 1);
        if (e > a) (void)madvise((void *)a, e - a, MADV_NOHUGEPAGE);
    #else
        (void)p; (void)n;
    #endif
    }
    """
    void gpt2cy_small_pages(void* p, size_t n) nogil

cdef float LN_EPS = 1e-5

# A block's float32 vectors and its four matmul weights, indexed by these (the names are tensors.py's)
cdef enum:
    LN1_G, LN1_B, ATTN_B, PROJ_B, LN2_G, LN2_B, FC_B, MPROJ_B, N_VEC
cdef enum:
    ATTN_W, PROJ_W, FC_W, MPROJ_W, N_MAT

_VECTOR_INDEX = {"ln_1.g": LN1_G, "ln_1.b": LN1_B, "attn.c_attn.b": ATTN_B, "attn.c_proj.b": PROJ_B,
                 "ln_2.g": LN2_G, "ln_2.b": LN2_B, "mlp.c_fc.b": FC_B, "mlp.c_proj.b": MPROJ_B}
_MATMUL_INDEX = {"attn.c_attn.w": ATTN_W, "attn.c_proj.w": PROJ_W, "mlp.c_fc.w": FC_W,
                 "mlp.c_proj.w": MPROJ_W}

ctypedef struct Weight:
    WeightDesc desc
    const DTypeKernels* k          # the kernels of desc.dtype

ctypedef struct Block:
    const float* vec[N_VEC]
    Weight mat[N_MAT]


cdef inline void _linear(const Weight* w, const float* x, Py_ssize_t ldx, const float* bias, float* out,
                         Py_ssize_t ldo, Py_ssize_t M, int act, bint accumulate, int nt) noexcept nogil:
    w.k.linear(x, ldx, &w.desc, bias, out, ldo, M, act, accumulate, nt)


cdef class Engine:
    """GPT-2 forward pass over n_slots KV caches. Model (model.py) is the public face; this class trusts
    nothing about ids, slots or positions either, but leaves the friendly messages to Model."""

    # n_ctx: positions allocated per slot, at most the config's (the checkpoint's wpe rows)
    cdef readonly Py_ssize_t n_vocab, n_ctx, n_embd, n_head, n_layer, head_dim, n_slots, max_rows
    cdef Py_ssize_t _cap                     # cache row length: n_ctx padded (kv_capacity)
    cdef Py_ssize_t _slot_stride             # floats between two slots' caches (all layers)
    cdef int _threads
    cdef bint _busy                          # a forward is running (its buffers must not change)
    cdef bint _ready                         # __init__ completed: every pointer is set
    cdef list _arrays                        # the weight arrays and our buffers, kept alive
    cdef Block* _blocks
    cdef Weight _wte                         # [V, C] "out_in": embedding rows and the tied lm_head
    cdef const float* _wpe                   # [n_ctx, C]
    cdef const float* _lnf_g                 # [C]
    cdef const float* _lnf_b                 # [C]
    cdef float* _k_cache                     # [S, L, H, D, cap]  (keys transposed, see _kernels.pxd)
    cdef float* _v_cache                     # [S, L, H, cap, D]
    cdef Py_ssize_t* _past                   # [S] positions held per slot
    cdef Py_ssize_t* _version                # [S] bumped by every change of a slot
    cdef Segment* _segs                      # [max_rows] the batch's segments
    cdef Py_ssize_t* _task0                  # [max_rows + 1] attention's task offsets
    cdef Py_ssize_t* _lrows                  # [max_rows] rows whose logits are wanted
    cdef float* _x                           # [max_rows, C]   residual stream
    cdef float* _xn                          # [max_rows, C]   layer-norm output
    cdef float* _qkv                         # [max_rows, 3C]
    cdef float* _att                         # [max_rows, C]   attention output (heads side by side)
    cdef float* _h                           # [max_rows, 4C]  MLP hidden
    cdef float* _scratch                     # [threads, QB * cap] attention scores
    cdef object _scratch_arr

    def __cinit__(self):
        self._blocks = NULL
        self._past = NULL
        self._version = NULL
        self._segs = NULL
        self._task0 = NULL
        self._lrows = NULL

    def __init__(self, config, weights not None, int threads=1, n_ctx=None, n_slots=1, max_rows=None):
        """config: anything with n_vocab, n_ctx, n_embd, n_head, n_layer. weights: canonical name ->
        WeightTensor (weights.describe_all) or float32 array. n_ctx: positions per slot (default and maximum:
        config.n_ctx). n_slots: KV-cache slots (sequences held at once). max_rows: rows one forward may carry
        (default n_ctx)."""
        cdef Py_ssize_t V = config.n_vocab, P = config.n_ctx, C = config.n_embd
        cdef Py_ssize_t H = config.n_head, L = config.n_layer, i
        cdef Py_ssize_t N = P if n_ctx is None else n_ctx
        cdef Py_ssize_t S = n_slots
        cdef Py_ssize_t R = N if max_rows is None else max_rows
        cdef Block* b
        if min(V, P, C, H, L) < 1 or C % H:
            raise ValueError(f"invalid config {config!r}")
        if not 1 <= N <= P:
            raise ValueError(f"n_ctx must be in [1, {P}], got {N}")
        if S < 1:
            raise ValueError(f"n_slots must be >= 1, got {S}")
        if R < 1:
            raise ValueError(f"max_rows must be >= 1, got {R}")
        self.n_vocab, self.n_ctx, self.n_embd, self.n_head, self.n_layer = V, N, C, H, L
        self.head_dim = C // H
        self.n_slots, self.max_rows = S, R
        self._busy = False
        self._ready = False
        self._arrays = []
        self._free()                         # __init__ called again: start over
        descs = describe_all(config, weights)
        self._blocks = <Block*>malloc(L * sizeof(Block))
        self._past = <Py_ssize_t*>malloc(S * sizeof(Py_ssize_t))
        self._version = <Py_ssize_t*>malloc(S * sizeof(Py_ssize_t))
        self._segs = <Segment*>malloc(R * sizeof(Segment))
        self._task0 = <Py_ssize_t*>malloc((R + 1) * sizeof(Py_ssize_t))
        self._lrows = <Py_ssize_t*>malloc(R * sizeof(Py_ssize_t))
        if (self._blocks == NULL or self._past == NULL or self._version == NULL or self._segs == NULL
                or self._task0 == NULL or self._lrows == NULL):
            self._free()
            raise MemoryError()
        for i in range(S):
            self._past[i] = 0
            self._version[i] = 0
        for spec in tensor_specs(config):
            wt = descs[spec.name]
            if spec.layer is not None:
                b = &self._blocks[spec.layer]
                if spec.role == MATMUL:
                    self._weight(&b.mat[_MATMUL_INDEX[spec.leaf]], wt, True)
                else:
                    b.vec[_VECTOR_INDEX[spec.leaf]] = self._vector(wt)
            elif spec.role == EMBEDDING:
                self._weight(&self._wte, wt, False)
            elif spec.role == POSITIONS:
                self._wpe = self._vector(wt)     # rows past N are never read
            elif spec.name == "ln_f.g":
                self._lnf_g = self._vector(wt)
            elif spec.name == "ln_f.b":
                self._lnf_b = self._vector(wt)
            else:
                raise ValueError(f"the engine has no place for tensor '{spec.name}'")
        self._cap = kv_capacity(N)
        self._slot_stride = L * C * self._cap
        self._k_cache = self._buffer(S * self._slot_stride)
        self._v_cache = self._buffer(S * self._slot_stride)
        gpt2cy_small_pages(self._v_cache, S * self._slot_stride * sizeof(float))   # resident as it fills
        self._x = self._buffer(R * C)
        self._xn = self._buffer(R * C)
        self._qkv = self._buffer(R * 3 * C)
        self._att = self._buffer(R * C)
        self._h = self._buffer(R * 4 * C)
        self.threads = threads
        self._ready = True

    cdef void _free(self):
        free(self._blocks)
        free(self._past)
        free(self._version)
        free(self._segs)
        free(self._task0)
        free(self._lrows)
        self._blocks = NULL
        self._past = NULL
        self._version = NULL
        self._segs = NULL
        self._task0 = NULL
        self._lrows = NULL

    def __dealloc__(self):
        self._free()

    cdef int _weight(self, Weight* w, wt, bint matmul) except -1:
        # a matmul weight or wte: its descriptor and its dtype's kernels (a matmul weight in the layout its
        # dtype's linear kernel reads; wte always "out_in")
        dt = DTYPES.get(wt.dtype)
        cdef const DTypeKernels* k = dtype_kernels(dt.code) if dt is not None else NULL
        if k == NULL:
            raise ValueError(f"tensor '{wt.name}' has dtype {wt.dtype!r}; the engine has kernels for: "
                             f"{supported()}")
        cdef int layout = LAYOUT_OUT_IN if wt.layout == OUT_IN else LAYOUT_IN_OUT
        if (matmul and layout != k.matmul_layout) or (not matmul and layout != LAYOUT_OUT_IN):
            raise ValueError(f"tensor '{wt.name}': {wt.dtype} in layout {wt.layout!r} has no kernels")
        a = wt.data
        self._arrays.append(a)
        if wt.scales is not None:
            self._arrays.append(wt.scales)
        w.k = k
        w.desc.dtype = dt.code
        w.desc.layout = layout
        w.desc.data = <const void*><size_t>a.ctypes.data
        w.desc.scales = <const void*><size_t>wt.scales.ctypes.data if wt.scales is not None else NULL
        w.desc.rows = wt.shape[0]
        w.desc.cols = wt.shape[1]
        w.desc.ld = dt.row_bytes(wt.shape[1])
        return 0

    cdef const float* _vector(self, wt) except NULL:
        # biases, layer norms, wpe: float32 (describe_all checked dtype, shape and contiguity)
        a = wt.data
        if wt.dtype != "f32" or a.dtype != np.float32:
            raise ValueError(f"tensor '{wt.name}' must be f32")
        self._arrays.append(a)
        cdef const float[::1] flat = a.reshape(-1)
        return &flat[0]

    cdef float* _buffer(self, Py_ssize_t n) except NULL:
        # np.empty underneath: large blocks come from mmap, so untouched pages (most of the cache) cost no RSS;
        # the data starts on a cache line (engine/aligned.py)
        a = aligned.empty(n, np.float32)
        self._arrays.append(a)
        cdef float[::1] v = a
        return &v[0]

    # -------------------------------------------------------------------------------- state

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
        a = aligned.empty((n, QB * self._cap), np.float32)
        cdef float[:, ::1] v = a
        self._scratch_arr = a
        self._scratch = &v[0, 0]
        self._threads = n

    @property
    def n_past(self):
        """Positions held in slot 0's cache."""
        return self.past(0)

    @property
    def kv_cache_bytes(self):
        """Bytes allocated for the KV caches of all slots (keys and values, padded rows)."""
        return 2 * self.n_slots * self._slot_stride * sizeof(float)

    cdef int _check_slot(self, Py_ssize_t slot) except -1:
        if not self._ready:
            raise RuntimeError("Engine.__init__ did not complete")
        if slot < 0 or slot >= self.n_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.n_slots})")
        return 0

    def past(self, Py_ssize_t slot=0):
        """Positions held in `slot`'s cache."""
        self._check_slot(slot)
        return self._past[slot]

    def version(self, Py_ssize_t slot=0):
        """A counter bumped by every change of `slot`'s cache (forward, step, truncate, reset)."""
        self._check_slot(slot)
        return self._version[slot]

    def reset(self, Py_ssize_t slot=0):
        """Forget `slot`'s cached positions (the cache memory is kept and overwritten)."""
        self._check_slot(slot)
        if self._busy:
            raise RuntimeError("cannot reset while the model is running in another thread")
        self._past[slot] = 0
        self._version[slot] += 1

    def truncate(self, Py_ssize_t n, Py_ssize_t slot=0):
        """Keep the first n cached positions of `slot` (0 <= n <= its n_past); later ones are overwritten by
        the next forward. Positions are absolute, so what stays is exactly the cache of those n tokens."""
        self._check_slot(slot)
        if n < 0 or n > self._past[slot]:
            raise ValueError(f"cannot truncate to {n} positions: the cache holds {self._past[slot]}")
        if self._busy:
            raise RuntimeError("cannot truncate while the model is running in another thread")
        self._past[slot] = n
        self._version[slot] += 1

    # -------------------------------------------------------------------------------- forward

    cdef int _enter(self) except -1:
        # one forward at a time: the flag is tested and set under the GIL, so two Python threads sharing a
        # model get an error instead of interleaving in the same buffers
        if self._busy:
            raise RuntimeError("the model is already running in another thread; use one model per thread")
        self._busy = True
        return 0

    def forward(self, const Py_ssize_t[::1] ids not None, float[:, ::1] out not None, bint all_rows,
                Py_ssize_t slot=0):
        """Run ids at positions n_past.. of `slot` and append them to its cache.

        out: [len(ids), n_vocab] when all_rows (the dense path), else [1, n_vocab] for the last position only.
        """
        cdef Py_ssize_t T = ids.shape[0], i
        self._check_slot(slot)
        if T < 1 or T > self.max_rows or self._past[slot] + T > self.n_ctx:
            raise ValueError(f"{T} positions after {self._past[slot]} do not fit in n_ctx {self.n_ctx} "
                             f"(or max_rows {self.max_rows})")
        for i in range(T):
            if ids[i] < 0 or ids[i] >= self.n_vocab:
                raise ValueError(f"token id {ids[i]} out of range [0, {self.n_vocab})")
        if out.shape[0] != (T if all_rows else 1) or out.shape[1] != self.n_vocab:
            raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]})")
        self._enter()
        try:
            self._segs[0].slot, self._segs[0].row0 = slot, 0
            self._segs[0].count, self._segs[0].pos0 = T, self._past[slot]
            self._lrows[0] = T - 1
            with nogil:
                self._run(&ids[0], T, 1, 0 if all_rows else 1, &out[0, 0])
            self._past[slot] += T
            self._version[slot] += 1
        finally:
            self._busy = False

    def step(self, Py_ssize_t token, float[::1] out not None, Py_ssize_t slot=0):
        """Run one token at position n_past of `slot` and append it: out [n_vocab] gets its logits (the
        decode path: no arrays made per token)."""
        self._check_slot(slot)
        if self._past[slot] + 1 > self.n_ctx:
            raise ValueError(f"position {self._past[slot]} does not fit in n_ctx {self.n_ctx}")
        if token < 0 or token >= self.n_vocab:
            raise ValueError(f"token id {token} out of range [0, {self.n_vocab})")
        if out.shape[0] != self.n_vocab:
            raise ValueError(f"out has {out.shape[0]} entries, expected {self.n_vocab}")
        self._enter()
        try:
            self._segs[0].slot, self._segs[0].row0 = slot, 0
            self._segs[0].count, self._segs[0].pos0 = 1, self._past[slot]
            self._lrows[0] = 0
            with nogil:
                self._run(&token, 1, 1, 1, &out[0])
            self._past[slot] += 1
            self._version[slot] += 1
        finally:
            self._busy = False

    def forward_batch(self, const Py_ssize_t[::1] ids not None, const Py_ssize_t[::1] slots not None,
                      const Py_ssize_t[::1] pos not None, const Py_ssize_t[::1] logit_rows not None,
                      float[:, ::1] out not None, bint all_rows=False):
        """Run a batch of rows, row t being token ids[t] of the sequence in slot slots[t] at position pos[t],
        and append each row to its slot's cache.

        The rows of a slot must be one contiguous run of the batch at consecutive positions starting at
        that slot's n_past, within n_ctx. logit_rows: increasing row indices whose logits go to out
        [len(logit_rows), n_vocab], each computed alone (the bits of a single sequence's last row).
        all_rows: logits by the dense (tiled) path, as forward's all_rows (scoring): of every row into out
        [len(ids), n_vocab] when logit_rows is empty, else of the logit_rows only (a scoring window's
        counted rows: its context rows cost no lm_head).
        """
        cdef Py_ssize_t T = ids.shape[0], R = logit_rows.shape[0], t, s, n_seg = 0, row0 = 0
        if not self._ready:
            raise RuntimeError("Engine.__init__ did not complete")
        if T < 1 or T > self.max_rows:
            raise ValueError(f"a batch holds 1 to max_rows={self.max_rows} rows, got {T}")
        if slots.shape[0] != T or pos.shape[0] != T:
            raise ValueError(f"ids, slots and pos must have the same length, got {T}, {slots.shape[0]}, "
                             f"{pos.shape[0]}")
        if out.shape[0] != (T if all_rows and not R else R) or out.shape[1] != self.n_vocab:
            raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]}), expected "
                             f"({T if all_rows and not R else R}, {self.n_vocab})")
        for t in range(R):
            if logit_rows[t] < 0 or logit_rows[t] >= T or (t and logit_rows[t] <= logit_rows[t - 1]):
                raise ValueError(f"logit_rows must be increasing rows of the batch [0, {T}), got "
                                 f"{list(logit_rows)}")
        seen = set()
        for t in range(T):
            if ids[t] < 0 or ids[t] >= self.n_vocab:
                raise ValueError(f"row {t}: token id {ids[t]} out of range [0, {self.n_vocab})")
            s = slots[t]
            if s < 0 or s >= self.n_slots:
                raise ValueError(f"row {t}: slot {s} out of range [0, {self.n_slots})")
            if t == 0 or s != slots[t - 1]:
                if s in seen:
                    raise ValueError(f"row {t}: the rows of slot {s} must be one contiguous run of the batch")
                seen.add(s)
                row0 = t
            if pos[t] != self._past[s] + (t - row0):
                raise ValueError(f"row {t}: slot {s} holds {self._past[s]} positions, so this row must be at "
                                 f"position {self._past[s] + (t - row0)}, got {pos[t]}")
            if pos[t] >= self.n_ctx:
                raise ValueError(f"row {t}: position {pos[t]} of slot {s} does not fit in n_ctx {self.n_ctx}")
        self._enter()
        try:
            for t in range(T):
                if t == 0 or slots[t] != slots[t - 1]:
                    self._segs[n_seg].slot, self._segs[n_seg].row0 = slots[t], t
                    self._segs[n_seg].count, self._segs[n_seg].pos0 = 0, pos[t]
                    n_seg += 1
                self._segs[n_seg - 1].count += 1
            for t in range(R):
                self._lrows[t] = logit_rows[t]
            with nogil:
                self._run(&ids[0], T, n_seg, R, &out[0, 0] if R or all_rows else NULL, all_rows)
            for s in range(n_seg):
                self._past[self._segs[s].slot] += self._segs[s].count
                self._version[self._segs[s].slot] += 1
        finally:
            self._busy = False

    cdef void _run(self, const Py_ssize_t* ids, Py_ssize_t T, Py_ssize_t n_seg, Py_ssize_t n_logits,
                   float* out, bint dense=False) noexcept nogil:
        # T rows in self._segs[:n_seg]; logits of rows self._lrows[:n_logits] into out, one by one, or by
        # the dense path when dense; of every row by the dense path when n_logits == 0 and out != NULL
        cdef Py_ssize_t C = self.n_embd, H = self.n_head, D = self.head_dim, N = self._cap
        cdef Py_ssize_t l, i, layer_kv = C * N, S = self._slot_stride
        cdef int nt = self._threads
        cdef Block* b
        cdef float* kc
        cdef float* vc
        cdef const Segment* segs = self._segs
        self._wte.k.embed_rows(&self._wte.desc, ids, T, self._x, C)                 # x = wte[ids]
        add_positions(self._x, C, segs, n_seg, self._wpe, C)                        # x += wpe[pos]
        for l in range(self.n_layer):
            b = &self._blocks[l]
            kc = self._k_cache + l * layer_kv                                       # slot 0's layer l
            vc = self._v_cache + l * layer_kv
            layernorm(self._x, C, b.vec[LN1_G], b.vec[LN1_B], self._xn, C, T, C, LN_EPS, nt)
            _linear(&b.mat[ATTN_W], self._xn, C, b.vec[ATTN_B], self._qkv, 3 * C, T,  # qkv = xn @ w + b
                    ACT_NONE, 0, nt)
            kv_store(self._qkv, 3 * C, kc, vc, S, segs, n_seg, H, D, N, nt)
            attention(self._qkv, 3 * C, kc, vc, S, self._att, C, self._scratch, segs, n_seg, self._task0,
                      H, D, N, nt)
            _linear(&b.mat[PROJ_W], self._att, C, b.vec[PROJ_B], self._x, C, T,      # x += att @ w + b
                    ACT_NONE, 1, nt)
            layernorm(self._x, C, b.vec[LN2_G], b.vec[LN2_B], self._xn, C, T, C, LN_EPS, nt)
            _linear(&b.mat[FC_W], self._xn, C, b.vec[FC_B], self._h, 4 * C, T,       # h = gelu(xn @ w + b)
                    ACT_GELU, 0, nt)
            _linear(&b.mat[MPROJ_W], self._h, 4 * C, b.vec[MPROJ_B], self._x, C, T,   # x += h @ w + b
                    ACT_NONE, 1, nt)
        if out == NULL:
            return
        # ln_f and the tied output projection only on the rows whose logits are wanted
        if n_logits == 0:                                                           # every row, tiled
            layernorm(self._x, C, self._lnf_g, self._lnf_b, self._xn, C, T, C, LN_EPS, nt)
            self._wte.k.logits_dense(self._xn, C, &self._wte.desc, out, self.n_vocab, T, nt)
        elif dense:                                                                 # chosen rows, tiled
            for i in range(n_logits):                   # gathered first: layernorm then runs them all at once
                memcpy(self._att + i * C, self._x + self._lrows[i] * C, C * sizeof(float))
            layernorm(self._att, C, self._lnf_g, self._lnf_b, self._xn, C, n_logits, C, LN_EPS, nt)
            self._wte.k.logits_dense(self._xn, C, &self._wte.desc, out, self.n_vocab, n_logits, nt)
        else:                                                                       # row by row
            for i in range(n_logits):
                layernorm(self._x + self._lrows[i] * C, C, self._lnf_g, self._lnf_b, self._xn + i * C, C,
                          1, C, LN_EPS, nt)
            self._wte.k.logits_rows(self._xn, C, &self._wte.desc, out, self.n_vocab, n_logits, nt)
