# distutils: language = c++
# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# (directives must come before the docstring to take effect; indices are checked in Python or bounded by
# construction)
"""GPT-2's byte-level BPE: pre-tokenize, merge by rank, and join token bytes back, all in C++ without the GIL.

The Python-facing class is `BPECore`; gpt2cy/text/tokenizer.py validates the vocabulary files and builds it from
plain ids. Semantics are those of OpenAI's encoder.py: a piece starts as one token per byte and the adjacent
pair with the lowest merge rank is merged (leftmost first on ties) until no pair has a rank.

Data structures:
  * pair table: open addressing keyed by (left id, right id) -> (rank, merged id); one probe per pair lookup.
  * piece table: byte string -> id for tokens that BPE of their own bytes produces (checked at build time),
    so a piece that is exactly one token, the common case, skips the merge loop with no change in result.
  * piece cache: direct-mapped, fixed size (bounded memory), for recent short pieces that need merges.
  * merges: pieces up to SHORT_PIECE bytes use an O(n^2) scan over a small array (cache friendly, like
    tiktoken); longer ones a doubly linked list plus a min-heap of (rank, position), O(n log n); pieces from
    HUGE_PIECE bytes a bucket queue over ranks, O(n + n_merges) and sequential in memory, so a 1 MB word or
    emoji run is about linear. The bucket queue relies on merges being well founded (a merge only uses tokens
    made by earlier merges, checked in __init__): every pair a merge creates then has a higher rank than the
    merge itself, so ranks are visited in increasing order.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLong, PyLong_CheckExact, PyLong_FromLong
from cpython.pythread cimport (NOWAIT_LOCK, PyThread_acquire_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, PyThread_type_lock)
from cpython.ref cimport Py_INCREF, PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from libcpp.algorithm cimport is_sorted, sort
from libcpp.queue cimport priority_queue
from libcpp.vector cimport vector

from gpt2cy.text._pretokenize cimport piece_end

import operator

import numpy as np

from gpt2cy.errors import InvalidTokenError, TokenizerError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef enum:
    SHORT_PIECE = 64         # above this many bytes the heap merge beats the O(n^2) scan (measured)
    HUGE_PIECE = 4096        # from here the bucket queue beats the heap (its per-rank table costs ~0.1 ms)
    CACHE_BITS = 14          # 16384 slots x 64 B = 1 MiB of piece cache
    CACHE_KEY = 24           # pieces up to this many bytes are cached ...
    CACHE_IDS = 8            # ... when they merge to at most this many tokens
    RELEASE_GIL_BYTES = 2048 # shorter texts keep the GIL: releasing costs more than it frees
    MAX_TEXT_BYTES = 0x7FFFFFF0  # merge positions are int32

cdef uint32_t NO_RANK = 0xFFFFFFFFu
cdef uint64_t EMPTY_KEY = 0xFFFFFFFFFFFFFFFFu

ctypedef struct PairSlot:
    uint64_t key             # (left << 32) | right, or EMPTY_KEY
    uint32_t rank
    int32_t merged

ctypedef struct CacheSlot:
    uint32_t len             # 0: empty
    uint32_t n_ids
    uint8_t key[CACHE_KEY]
    int32_t ids[CACHE_IDS]


cdef inline uint64_t hash_bytes(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """64-bit hash of a short byte string: 8 bytes per multiply-xorshift round."""
    cdef uint64_t h = 0x9E3779B97F4A7C15u ^ <uint64_t>n, w
    while n >= 8:
        memcpy(&w, s, 8)
        h = (h ^ w) * 0xBF58476D1CE4E5B9u
        h ^= h >> 29
        s += 8
        n -= 8
    if n > 0:
        w = 0
        memcpy(&w, s, n)
        h = (h ^ w) * 0x94D049BB133111EBu
    h ^= h >> 32
    return h * 0xD6E8FEB86659FD93u


cdef inline void bucket_push(uint32_t rank, int32_t pos, vector[int32_t]& head, vector[int32_t]& tail,
                             vector[int32_t]& e_pos, vector[int32_t]& e_next) noexcept nogil:
    """Append pos to the bucket of `rank` (pairs without a rank are dropped)."""
    if rank == NO_RANK:
        return
    cdef int32_t e = <int32_t>e_pos.size()
    e_pos.push_back(pos)
    e_next.push_back(-1)
    if tail[rank] < 0:
        head[rank] = e
    else:
        e_next[tail[rank]] = e
    tail[rank] = e


cdef bint all_exact_ints(list items):
    cdef Py_ssize_t k
    for k in range(PyList_GET_SIZE(items)):
        if not PyLong_CheckExact(<object>PyList_GET_ITEM(items, k)):
            return False
    return True


cdef class BPECore:
    """The compiled tokenizer state built from validated ids (see gpt2cy.text.tokenizer.Tokenizer)."""
    cdef readonly int n_vocab
    cdef readonly int max_token_len
    cdef readonly int n_merges
    cdef tuple id_objects                 # the Python ints 0..n_vocab-1, handed out by encode
    cdef int32_t byte_tok[256]
    # pair table
    cdef vector[PairSlot] pairs
    cdef uint64_t pair_mask
    cdef int pair_shift
    # token bytes: token i is arena[offs[i]:offs[i+1]]
    cdef vector[uint8_t] arena
    cdef vector[int64_t] offs
    # piece table: slot -> token id or -1
    cdef vector[int32_t] pieces
    cdef uint64_t piece_mask
    # piece cache, guarded by a lock that encode only try-locks (a busy cache is skipped, never waited for)
    cdef CacheSlot* cache
    cdef PyThread_type_lock cache_lock

    def __cinit__(self):
        self.cache = NULL
        self.cache_lock = NULL

    def __init__(self, list token_bytes not None, list byte_ids not None, merges not None, mergeable=None):
        """token_bytes[i]: bytes of token i; byte_ids[b]: token of the single byte b;
        merges[r] = (left, right, merged) ids in rank order (triples, or an [n_merges, 3] integer array);
        mergeable[i]: False for special tokens."""
        cdef const int64_t[:, ::1] merge_arr = np.ascontiguousarray(merges, dtype=np.int64).reshape(-1, 3)
        cdef Py_ssize_t i, r, n = len(token_bytes), n_merges = merge_arr.shape[0]
        cdef int64_t left, right, merged
        cdef bytes tb
        cdef uint64_t key, slot
        if len(byte_ids) != 256:
            raise ValueError("byte_ids must map all 256 bytes")
        self.n_vocab = <int>n
        self.id_objects = tuple(range(n))
        self.offs.resize(n + 1)
        self.offs[0] = 0
        self.max_token_len = 0
        for i in range(n):
            tb = token_bytes[i]
            self.offs[i + 1] = self.offs[i] + len(tb)
            if len(tb) > self.max_token_len:
                self.max_token_len = <int>len(tb)
        self.arena.resize(self.offs[n] + 1)
        for i in range(n):
            tb = token_bytes[i]
            if len(tb):
                memcpy(&self.arena[self.offs[i]], PyBytes_AS_STRING(tb), len(tb))
        for i in range(256):
            self.byte_tok[i] = byte_ids[i]
            if not 0 <= self.byte_tok[i] < n:
                raise ValueError("byte id out of range")
        # pair table at most half full
        self.pair_shift = 64
        cap = 16
        while cap < 2 * n_merges + 16:
            cap *= 2
        while (<uint64_t>1 << (64 - self.pair_shift)) < <uint64_t>cap:
            self.pair_shift -= 1
        self.pair_mask = cap - 1
        cdef PairSlot empty
        empty.key = EMPTY_KEY
        empty.rank = NO_RANK
        empty.merged = -1
        self.pairs.assign(cap, empty)
        self.n_merges = <int>n_merges
        made = bytearray(n)                            # 1 once a byte or an earlier merge has made the token
        for i in range(256):
            made[self.byte_tok[i]] = 1
        for r in range(n_merges):
            left, right, merged = merge_arr[r, 0], merge_arr[r, 1], merge_arr[r, 2]
            if not (0 <= left < n and 0 <= right < n and 0 <= merged < n):
                raise ValueError("merge id out of range")
            if not made[left] or not made[right] or made[merged]:
                raise ValueError(f"merge {r} uses a token no earlier merge makes, or makes a token again")
            made[merged] = 1
            key = (<uint64_t>left << 32) | <uint32_t>right
            slot = self._pair_slot(key)
            if self.pairs[slot].key == EMPTY_KEY:     # a repeated pair keeps its first (lowest) rank
                self.pairs[slot].key = key
                self.pairs[slot].rank = <uint32_t>r
                self.pairs[slot].merged = merged
        # piece table: only tokens whose own BPE gives back exactly themselves, so the shortcut is exact
        cap = 16
        while cap < 2 * n + 16:
            cap *= 2
        self.piece_mask = cap - 1
        self.pieces.assign(cap, -1)
        cdef vector[int32_t] out
        for i in range(n):
            if mergeable is not None and not mergeable[i]:
                continue
            if self.offs[i + 1] == self.offs[i]:
                continue
            out.clear()
            self._merge(&self.arena[self.offs[i]], self.offs[i + 1] - self.offs[i], &out)
            if out.size() == 1 and out[0] == i:
                self._piece_insert(<int32_t>i)
        self.cache = <CacheSlot*>malloc(sizeof(CacheSlot) << CACHE_BITS)
        if self.cache == NULL:
            raise MemoryError()
        memset(self.cache, 0, sizeof(CacheSlot) << CACHE_BITS)
        self.cache_lock = PyThread_allocate_lock()
        if self.cache_lock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.cache)
        if self.cache_lock != NULL:
            PyThread_free_lock(self.cache_lock)

    # ---- tables --------------------------------------------------------------------------------------------

    cdef inline uint64_t _pair_slot(self, uint64_t key) noexcept nogil:
        """Slot holding `key`, or the empty slot where it would go (linear probing)."""
        cdef uint64_t slot = (key * 0x9E3779B97F4A7C15u) >> self.pair_shift
        while self.pairs[slot].key != key and self.pairs[slot].key != EMPTY_KEY:
            slot = (slot + 1) & self.pair_mask
        return slot

    cdef inline const PairSlot* _pair(self, int32_t left, int32_t right) noexcept nogil:
        return &self.pairs[self._pair_slot((<uint64_t>left << 32) | <uint32_t>right)]

    cdef void _piece_insert(self, int32_t tok) noexcept:
        cdef Py_ssize_t n = self.offs[tok + 1] - self.offs[tok]
        cdef uint64_t slot = hash_bytes(&self.arena[self.offs[tok]], n) & self.piece_mask
        while self.pieces[slot] >= 0:
            slot = (slot + 1) & self.piece_mask
        self.pieces[slot] = tok

    cdef inline int32_t _piece_lookup(self, const uint8_t* s, Py_ssize_t n, uint64_t h) noexcept nogil:
        """Token whose bytes are s[:n] (and which BPE would produce whole), or -1."""
        cdef uint64_t slot = h & self.piece_mask
        cdef int32_t tok
        while True:
            tok = self.pieces[slot]
            if tok < 0:
                return -1
            if (self.offs[tok + 1] - self.offs[tok] == n
                    and memcmp(&self.arena[self.offs[tok]], s, n) == 0):
                return tok
            slot = (slot + 1) & self.piece_mask

    # ---- merging -------------------------------------------------------------------------------------------

    cdef void _merge(self, const uint8_t* s, Py_ssize_t n, vector[int32_t]* out) noexcept nogil:
        """Append the BPE tokens of the piece s[:n] (n >= 1) to out."""
        if n >= HUGE_PIECE:
            self._merge_huge(s, n, out)
            return
        if n > SHORT_PIECE:
            self._merge_long(s, n, out)
            return
        cdef int32_t parts[SHORT_PIECE]
        cdef uint32_t ranks[SHORT_PIECE]
        cdef const PairSlot* p
        cdef Py_ssize_t k, best_k, m = n
        cdef uint32_t best
        for k in range(n):
            parts[k] = self.byte_tok[s[k]]
        for k in range(n - 1):
            ranks[k] = self._pair(parts[k], parts[k + 1]).rank
        while m > 1:
            best = NO_RANK
            best_k = -1
            for k in range(m - 1):
                if ranks[k] < best:               # strict: the leftmost of equal ranks wins
                    best = ranks[k]
                    best_k = k
            if best_k < 0:
                break
            parts[best_k] = self._pair(parts[best_k], parts[best_k + 1]).merged
            for k in range(best_k + 1, m - 1):
                parts[k] = parts[k + 1]
                ranks[k] = ranks[k + 1]
            m -= 1
            if best_k > 0:
                ranks[best_k - 1] = self._pair(parts[best_k - 1], parts[best_k]).rank
            if best_k < m - 1:
                ranks[best_k] = self._pair(parts[best_k], parts[best_k + 1]).rank
        for k in range(m):
            out.push_back(parts[k])

    cdef void _merge_long(self, const uint8_t* s, Py_ssize_t n, vector[int32_t]* out) noexcept nogil:
        """BPE of a long piece: doubly linked parts and a heap of (rank, position), stale entries skipped."""
        cdef vector[int32_t] tok, nxt, prv
        cdef priority_queue[uint64_t] heap          # max-heap of ~((rank << 32) | pos) == min (rank, pos)
        cdef Py_ssize_t k
        cdef int32_t p, q
        cdef uint64_t key
        cdef uint32_t rank
        cdef const PairSlot* ps
        tok.resize(n)
        nxt.resize(n)
        prv.resize(n)
        for k in range(n):
            tok[k] = self.byte_tok[s[k]]
            nxt[k] = <int32_t>(k + 1) if k + 1 < n else -1
            prv[k] = <int32_t>(k - 1)
        for k in range(n - 1):
            rank = self._pair(tok[k], tok[k + 1]).rank
            if rank != NO_RANK:
                heap.push(~((<uint64_t>rank << 32) | <uint64_t>k))
        while not heap.empty():
            key = ~heap.top()
            heap.pop()
            rank = <uint32_t>(key >> 32)
            p = <int32_t>(key & 0xFFFFFFFFu)
            if tok[p] < 0:
                continue
            q = nxt[p]
            if q < 0:
                continue
            ps = self._pair(tok[p], tok[q])
            if ps.rank != rank:                      # the pair at p changed since this entry was pushed
                continue
            tok[p] = ps.merged
            tok[q] = -1
            nxt[p] = nxt[q]
            if nxt[q] >= 0:
                prv[nxt[q]] = p
            if prv[p] >= 0:
                rank = self._pair(tok[prv[p]], tok[p]).rank
                if rank != NO_RANK:
                    heap.push(~((<uint64_t>rank << 32) | <uint64_t>prv[p]))
            if nxt[p] >= 0:
                rank = self._pair(tok[p], tok[nxt[p]]).rank
                if rank != NO_RANK:
                    heap.push(~((<uint64_t>rank << 32) | <uint64_t>p))
        p = 0
        while p >= 0:
            out.push_back(tok[p])
            p = nxt[p]

    cdef void _merge_huge(self, const uint8_t* s, Py_ssize_t n, vector[int32_t]* out) noexcept nogil:
        """BPE of a very long piece: doubly linked parts and a bucket queue indexed by rank.

        Ranks are visited in increasing order (a merge only creates pairs of higher rank), and each rank's
        positions left to right, which is exactly the order of the heap in _merge_long.
        """
        cdef vector[int32_t] tok, nxt, prv, head, tail, e_pos, e_next, batch
        cdef Py_ssize_t k, b
        cdef int32_t p, q, e, r
        cdef uint32_t rank
        cdef const PairSlot* ps
        tok.resize(n)
        nxt.resize(n)
        prv.resize(n)
        head.assign(self.n_merges, -1)
        tail.assign(self.n_merges, -1)
        e_pos.reserve(2 * n)
        e_next.reserve(2 * n)
        for k in range(n):
            tok[k] = self.byte_tok[s[k]]
            nxt[k] = <int32_t>(k + 1) if k + 1 < n else -1
            prv[k] = <int32_t>(k - 1)
        for k in range(n - 1):
            bucket_push(self._pair(tok[k], tok[k + 1]).rank, <int32_t>k, head, tail, e_pos, e_next)
        for r in range(self.n_merges):
            e = head[r]
            if e < 0:
                continue
            batch.clear()
            while e >= 0:
                batch.push_back(e_pos[e])
                e = e_next[e]
            if not is_sorted(batch.begin(), batch.end()):
                sort(batch.begin(), batch.end())
            for b in range(<Py_ssize_t>batch.size()):
                p = batch[b]
                q = nxt[p]
                if tok[p] < 0 or q < 0:
                    continue
                ps = self._pair(tok[p], tok[q])
                if ps.rank != <uint32_t>r:           # the pair at p changed since this entry was pushed
                    continue
                tok[p] = ps.merged
                tok[q] = -1
                nxt[p] = nxt[q]
                if nxt[q] >= 0:
                    prv[nxt[q]] = p
                if prv[p] >= 0:
                    bucket_push(self._pair(tok[prv[p]], tok[p]).rank, prv[p], head, tail, e_pos, e_next)
                if nxt[p] >= 0:
                    bucket_push(self._pair(tok[p], tok[nxt[p]]).rank, p, head, tail, e_pos, e_next)
        p = 0
        while p >= 0:
            out.push_back(tok[p])
            p = nxt[p]

    cdef void _encode_piece(self, const uint8_t* s, Py_ssize_t n, vector[int32_t]* out,
                            bint use_cache) noexcept nogil:
        cdef uint64_t h
        cdef int32_t tok
        cdef CacheSlot* slot
        cdef size_t start, k
        if n == 1:
            out.push_back(self.byte_tok[s[0]])
            return
        if n > self.max_token_len:
            self._merge(s, n, out)
            return
        h = hash_bytes(s, n)
        tok = self._piece_lookup(s, n, h)
        if tok >= 0:
            out.push_back(tok)
            return
        if not use_cache or n > CACHE_KEY:
            self._merge(s, n, out)
            return
        slot = &self.cache[(h >> 20) & ((1 << CACHE_BITS) - 1)]
        if slot.len == n and memcmp(slot.key, s, n) == 0:
            for k in range(slot.n_ids):
                out.push_back(slot.ids[k])
            return
        start = out.size()
        self._merge(s, n, out)
        if out.size() - start <= CACHE_IDS:
            slot.len = <uint32_t>n
            slot.n_ids = <uint32_t>(out.size() - start)
            memcpy(slot.key, s, n)
            for k in range(slot.n_ids):
                slot.ids[k] = out[0][start + k]

    cdef void _encode_utf8(self, const uint8_t* s, Py_ssize_t n, vector[int32_t]* out,
                           bint use_cache) noexcept nogil:
        """Pre-tokenize s[:n] (valid UTF-8) and append every piece's tokens to out."""
        cdef Py_ssize_t i = 0, j
        while i < n:
            j = piece_end(s, n, i)
            self._encode_piece(s + i, j - i, out, use_cache)
            i = j

    cdef vector[int32_t] _encode_str(self, object text) except *:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        cdef Py_ssize_t n
        cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
        cdef vector[int32_t] out
        cdef bint locked
        if n > MAX_TEXT_BYTES:
            raise ValueError(f"text of {n} bytes is over the {MAX_TEXT_BYTES}-byte limit; encode it in parts")
        out.reserve(n // 3 + 16)
        if n < RELEASE_GIL_BYTES:
            locked = PyThread_acquire_lock(self.cache_lock, NOWAIT_LOCK)
            self._encode_utf8(s, n, &out, locked)
            if locked:
                PyThread_release_lock(self.cache_lock)
        else:
            with nogil:                      # `text` stays referenced by the caller, so s stays valid
                locked = PyThread_acquire_lock(self.cache_lock, NOWAIT_LOCK)
                self._encode_utf8(s, n, &out, locked)
                if locked:
                    PyThread_release_lock(self.cache_lock)
        return out

    # ---- Python API ----------------------------------------------------------------------------------------

    def encode(self, text) -> list:
        """Token ids of `text` (ordinary text: no special tokens). Lone surrogates raise UnicodeEncodeError."""
        cdef vector[int32_t] ids = self._encode_str(text)
        cdef Py_ssize_t k, m = ids.size()
        cdef list out = PyList_New(m)
        cdef PyObject* item
        for k in range(m):                    # shared int objects: no allocation per token
            item = PyTuple_GET_ITEM(self.id_objects, ids[k])
            Py_INCREF(<object>item)
            PyList_SET_ITEM(out, k, <object>item)
        return out

    def encode_batch(self, list texts not None) -> list:
        """encode() of each text, the merging of all of them in one GIL-free stretch, so that threads
        running encode_batch on different lists run in parallel. A text that is not valid as UTF-8 (a lone
        surrogate) gives None in its place, for the caller to clean and encode alone; TypeError for a
        non-str."""
        cdef Py_ssize_t i, k, m, n_texts = PyList_GET_SIZE(texts), n, total = 0
        cdef vector[const uint8_t*] starts
        cdef vector[Py_ssize_t] sizes
        cdef vector[vector[int32_t]] outs
        cdef const uint8_t* s
        cdef bint locked
        cdef list keep = list(texts)         # our own references: the UTF-8 buffers live as long as they do
        starts.resize(n_texts)
        sizes.resize(n_texts)
        outs.resize(n_texts)
        for i in range(n_texts):
            text = <object>PyList_GET_ITEM(keep, i)
            if not isinstance(text, str):
                raise TypeError(f"text must be str, not {type(text).__name__} (item {i})")
            try:
                s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
            except UnicodeEncodeError:
                s = <const uint8_t*>NULL
                n = -1
            if n > MAX_TEXT_BYTES:
                raise ValueError(f"text {i} of {n} bytes is over the {MAX_TEXT_BYTES}-byte limit; encode it in parts")
            starts[i], sizes[i] = s, n
            if n > 0:
                total += n
        with nogil:
            locked = PyThread_acquire_lock(self.cache_lock, NOWAIT_LOCK)
            for i in range(n_texts):
                if sizes[i] > 0:
                    outs[i].reserve(sizes[i] // 3 + 16)
                    self._encode_utf8(starts[i], sizes[i], &outs[i], locked)
            if locked:
                PyThread_release_lock(self.cache_lock)
        cdef list result = PyList_New(n_texts)
        cdef list ids
        cdef PyObject* item
        for i in range(n_texts):
            if sizes[i] < 0:
                Py_INCREF(None)
                PyList_SET_ITEM(result, i, None)
                continue
            m = outs[i].size()
            ids = PyList_New(m)
            for k in range(m):
                item = PyTuple_GET_ITEM(self.id_objects, outs[i][k])
                Py_INCREF(<object>item)
                PyList_SET_ITEM(ids, k, <object>item)
            Py_INCREF(ids)
            PyList_SET_ITEM(result, i, ids)
        return result

    def encode_to_numpy(self, text):
        """Like encode, as a uint32 numpy array (tiktoken's dtype)."""
        cdef vector[int32_t] ids = self._encode_str(text)
        arr = np.empty(ids.size(), dtype=np.uint32)
        cdef uint32_t[::1] view = arr
        if ids.size():
            memcpy(&view[0], ids.data(), ids.size() * sizeof(int32_t))
        return arr

    def merge_piece(self, bytes piece not None, str method="auto") -> list:
        """BPE of one piece's bytes with no pre-tokenization and no shortcuts (tests use it).

        method: "auto" (by length, as encode does), "scan" (up to SHORT_PIECE bytes), "heap" or "buckets".
        """
        cdef vector[int32_t] out
        cdef const uint8_t* s = <const uint8_t*>PyBytes_AS_STRING(piece)
        cdef Py_ssize_t n = len(piece)
        if n == 0:
            return []
        if n > MAX_TEXT_BYTES:
            raise ValueError(f"piece of {n} bytes is over the {MAX_TEXT_BYTES}-byte limit")
        if method == "auto":
            self._merge(s, n, &out)
        elif method == "scan":
            if n > SHORT_PIECE:
                raise ValueError(f"the scan handles at most {SHORT_PIECE} bytes")
            self._merge(s, n, &out)
        elif method == "heap":
            self._merge_long(s, n, &out)
        elif method == "buckets":
            self._merge_huge(s, n, &out)
        else:
            raise ValueError(f"unknown method {method!r}")
        return list(out)

    def clear_cache(self):
        """Forget every cached piece (benchmarks use it to time cold encodes)."""
        PyThread_acquire_lock(self.cache_lock, 1)
        memset(self.cache, 0, sizeof(CacheSlot) << CACHE_BITS)
        PyThread_release_lock(self.cache_lock)

    cdef Py_ssize_t _join(self, ids, char** buf) except -1:
        """Concatenate the bytes of `ids` into a malloc'ed buffer (caller frees); returns its length."""
        cdef Py_ssize_t k, m, n, length = 0, cap
        cdef int64_t t
        cdef int64_t[::1] arr
        cdef char* b
        cdef char* grown
        cdef bint from_array = isinstance(ids, np.ndarray)
        if from_array:
            if ids.dtype.kind not in "iu":
                raise TypeError(f"token ids must be integers, not {ids.dtype}")
            if ids.dtype.kind == "u" and ids.dtype.itemsize == 8:   # >= 2**63 would wrap negative in int64
                big = np.flatnonzero(ids.reshape(-1) >= self.n_vocab)
                if big.size:
                    raise InvalidTokenError(f"token id {int(ids.reshape(-1)[big[0]])} (at index {big[0]}) is "
                                            f"outside the vocabulary [0, {self.n_vocab})")
            arr = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
            m = arr.shape[0]
        else:
            # Exact ints in a list are read in place (nothing below runs Python code that could change the list);
            # anything else is first copied into a private list of ints (TypeError for non-integers).
            if type(ids) is not list or not all_exact_ints(<list>ids):
                ids = [operator.index(x) for x in ids]
            m = PyList_GET_SIZE(ids)
        cap = m * 8 + 64
        b = <char*>malloc(cap)
        if b == NULL:
            raise MemoryError()
        try:
            for k in range(m):
                t = arr[k] if from_array else PyLong_AsLongLong(<object>PyList_GET_ITEM(ids, k))
                if t < 0 or t >= self.n_vocab:
                    raise InvalidTokenError(f"token id {t} (at index {k}) is outside the vocabulary "
                                            f"[0, {self.n_vocab})")
                n = self.offs[t + 1] - self.offs[t]
                if length + n > cap:
                    cap = 2 * cap + n
                    grown = <char*>realloc(b, cap)
                    if grown == NULL:
                        raise MemoryError()
                    b = grown
                memcpy(b + length, &self.arena[self.offs[t]], n)
                length += n
        except BaseException:
            free(b)
            raise
        buf[0] = b
        return length

    def decode_bytes(self, ids) -> bytes:
        """The bytes of the tokens `ids` joined; TokenizerError for an id outside the vocabulary."""
        cdef char* b = NULL
        cdef Py_ssize_t n = self._join(ids, &b)
        try:
            return PyBytes_FromStringAndSize(b, n)
        finally:
            free(b)

    def decode(self, ids, str errors="replace") -> str:
        """decode_bytes(ids) decoded as UTF-8 with the given error handler."""
        cdef char* b = NULL
        cdef Py_ssize_t n = self._join(ids, &b)
        cdef bytes err = errors.encode("ascii")
        try:
            return PyUnicode_DecodeUTF8(b, n, err)
        finally:
            free(b)

    def token_bytes(self, Py_ssize_t i) -> bytes:
        """The bytes of token i (range-checked)."""
        if i < 0 or i >= self.n_vocab:
            raise InvalidTokenError(f"token id {i} is outside the vocabulary [0, {self.n_vocab})")
        return PyBytes_FromStringAndSize(<char*>&self.arena[self.offs[i]], self.offs[i + 1] - self.offs[i])


def merge_ids(list token_bytes not None, str body not None, str alphabet not None):
    """Parse a merges file in C: `body` holds "left right" lines in GPT-2's byte alphabet (alphabet[b] spells
    byte b), joined by "\n". Returns the [n_merges, 3] int32 array of (left, right, merged) ids, looked up by the
    bytes they spell in token_bytes; None when any line is malformed or names a token that is not there (the
    caller then finds the line and says why). Whether the merges are consistent is BPECore's to check.
    """
    cdef Py_ssize_t n = len(token_bytes), i, k, size, cap = 16
    cdef int16_t utf8_byte[0x200]          # code point -> byte it spells, or -1 (the alphabet is below U+0200)
    cdef vector[int64_t] offs
    cdef vector[uint8_t] arena
    cdef vector[int32_t] table            # open addressing: hash of a token's bytes -> its id
    cdef vector[int32_t] out
    cdef uint8_t buf[3][1024]              # left, right, merged bytes of the current line
    cdef Py_ssize_t blen[2]
    cdef int part, cp
    cdef int32_t tok
    cdef uint64_t slot, mask
    cdef bytes tb
    cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(body, &size)
    for cp in range(0x200):
        utf8_byte[cp] = -1
    if len(alphabet) != 256 or max(map(ord, alphabet)) >= 0x200:
        raise ValueError("the alphabet must spell 256 bytes with characters below U+0200")
    for k, c in enumerate(alphabet):
        utf8_byte[ord(c)] = <int16_t>k
    offs.resize(n + 1)
    offs[0] = 0
    for i in range(n):
        tb = token_bytes[i]
        offs[i + 1] = offs[i] + len(tb)
    arena.resize(offs[n] + 1)
    for i in range(n):
        tb = token_bytes[i]
        if len(tb):
            memcpy(&arena[offs[i]], PyBytes_AS_STRING(tb), len(tb))
    while cap < 2 * n + 16:
        cap *= 2
    mask = cap - 1
    table.assign(cap, -1)
    for i in range(n):                     # bytes -> id (first id wins for equal bytes)
        slot = hash_bytes(&arena[offs[i]], offs[i + 1] - offs[i]) & mask
        while table[slot] >= 0:
            if (offs[table[slot] + 1] - offs[table[slot]] == offs[i + 1] - offs[i]
                    and memcmp(&arena[offs[table[slot]]], &arena[offs[i]], offs[i + 1] - offs[i]) == 0):
                break
            slot = (slot + 1) & mask
        if table[slot] < 0:
            table[slot] = <int32_t>i
    out.reserve(3 * (size // 8 + 1))
    k = 0
    while k < size:
        # one line: part 0 up to the space, part 1 up to "\n" or the end
        for part in range(2):
            blen[part] = 0
            while k < size and s[k] != 0x20 and s[k] != 0x0A:
                if s[k] < 0x80:
                    cp = s[k]
                    k += 1
                elif (s[k] & 0xE0) == 0xC0 and k + 1 < size:
                    cp = ((s[k] & 0x1F) << 6) | (s[k + 1] & 0x3F)
                    k += 2
                else:
                    return None
                if cp >= 0x200 or utf8_byte[cp] < 0 or blen[part] >= 512:
                    return None
                buf[part][blen[part]] = <uint8_t>utf8_byte[cp]
                blen[part] += 1
            if blen[part] == 0:
                return None
            if part == 0:
                if k >= size or s[k] != 0x20:
                    return None
                k += 1
        if k < size:                       # a second space, or "\n" with a line after it
            if s[k] != 0x0A or k + 1 >= size:
                return None
            k += 1
        memcpy(buf[2], buf[0], blen[0])
        memcpy(&buf[2][blen[0]], buf[1], blen[1])
        for part in range(3):
            i = blen[part] if part < 2 else blen[0] + blen[1]
            slot = hash_bytes(buf[part], i) & mask
            while True:
                tok = table[slot]
                if tok < 0:
                    return None
                if offs[tok + 1] - offs[tok] == i and memcmp(&arena[offs[tok]], buf[part], i) == 0:
                    break
                slot = (slot + 1) & mask
            out.push_back(tok)
    arr = np.empty((out.size() // 3, 3), dtype=np.int32)
    cdef int32_t[:, ::1] view = arr
    if out.size():
        memcpy(&view[0, 0], out.data(), out.size() * sizeof(int32_t))
    return arr
