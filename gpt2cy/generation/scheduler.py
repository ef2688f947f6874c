"""Continuous batching: many generations share one Model, one forward over all of their rows per step.

    sched = Scheduler(model)                       # model = gpt2cy.load(..., n_slots=8)
    h = sched.submit(Request(ids, Sampler(SamplingParams(), seed=1), max_new_tokens=50, stop=["\\n"]))
    for chunk in h: ...                            # GenerationChunk, as generation.loop streams them
    h.response                                     # the Response (finish_reason, usage, timings, seed)

A Scheduler owns the model's KV-cache slots. Sequences join (submit) and leave (finish, or cancel) between
steps; each step runs ONE Model.forward_batch over every active sequence's rows: one decode token per
sequence that is generating, and prefill chunks of the prompts that are still being read, at most
`token_budget` rows in all (decode rows always run; prefill chunks share what is left, oldest prompt
first, at least one row per step), so a long prompt advances a chunk per step while the others keep
decoding (vLLM's and Sarathi's chunked prefill). forward_batch gives each sequence logits bit-identical to
running it alone, and every other decision (sampling, stop strings, the UTF-8 stream decoder, finish
reasons) is made per sequence exactly as generation.loop makes it, so each output is bit-identical to
`generate(...)` of the same prompt and seed on a one-slot model, whatever runs beside it.

Prefix reuse: each slot remembers which tokens its cache holds (checked against Model.cache_version and
Model.past before it is trusted, so a slot someone else used is rebuilt from what it must hold, never
continued). A new sequence takes the free slot whose cache shares the longest prefix with its prompt
(else the least recently used) and prefills only the rest; the records are kept per model, so the next
batch, or the next turn of a chat pinned to its slot with Request(slot=...), reuses them too.

Driving it: call `step()` in a loop (`run_until_idle()`), or iterate a handle, which steps the scheduler
itself when no engine thread runs; or `start()` an engine thread, after which other threads only
`submit`, iterate their handles (blocking) and `cancel()` (the slot is freed at the next step). One step
runs at a time per model. `Scheduler.for_model(model)` is the model's shared scheduler (generate_batch's),
so batches from several threads run in the same steps; separate Schedulers over one model also work
(they never hand out the same slot, and take turns at the engine) but batch only their own sequences.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ContextLengthError, GPT2CyError
from ..ids import check_ids, is_int
from ..notices import notice
from .loop import GenerationChunk, _Run, _common_prefix, check_finite, context_size
from .response import Response
from .sampling import mask_tokens
from .stopping import StopMatcher

__all__ = ["DEFAULT_TOKEN_BUDGET", "Handle", "QueueFullError", "Request", "Scheduler"]

# Rows per step. On a 2-core CPU a 124M step costs ~0.5 ms a row once it is past ~32 rows, so 128 rows
# bound what a prompt adds to the others' next token to ~60 ms while prefill still runs at full speed.
DEFAULT_TOKEN_BUDGET = 128


class QueueFullError(GPT2CyError):
    """submit() found the scheduler's bounded queue full (max_queue); try again later."""


@dataclass
class Request:
    """One generation to run: what stream_generate takes, for the scheduler.

    ids: the prompt's token ids, already fitting the context (generation.loop.prepare_prompt makes them).
    sampler: picks a token, sampler(logits [V], ids so far) -> int (a Sampler, or a function around one).
    max_new_tokens: None or negative: until a stop, eos or the end of the context.
    stop, ignore_eos, context_shift, on_notice: as generation.loop.generate.
    seed: what the Response reports (default: sampler.seed).
    slot: run in this KV-cache slot (e.g. a chat session's own, for its prefix); None: the free slot whose
        cache shares the longest prefix with ids. tag: the caller's label, kept on the handle.
    """
    ids: Sequence[int]
    sampler: Callable[[np.ndarray, Sequence[int]], int]
    max_new_tokens: Optional[int] = 128
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    context_shift: bool = False
    seed: Optional[int] = None
    slot: Optional[int] = None
    tag: Any = None
    on_notice: Optional[Callable[[str], None]] = field(default=notice, repr=False)


_END = object()


class Handle:
    """A submitted Request: an iterator of its GenerationChunk, its Response once done, and cancel().

    Iterating blocks until the next chunk (stepping the scheduler itself when no engine thread runs) and
    stops after the chunk with the finish_reason, or when the sequence is cancelled (response then has
    finish_reason "interrupted" and the text released so far). An exception raised for this sequence
    alone (its sampler failing, say) is raised by the iteration; the others go on.
    """

    def __init__(self, scheduler: "Scheduler", request: Request, ids: List[int], listener=None):
        self._scheduler = scheduler
        self.request = request
        self.tag = request.tag
        self.prompt_ids = ids
        self.seed = request.seed if request.seed is not None else getattr(request.sampler, "seed", None)
        self.slot: Optional[int] = None            # assigned when the sequence starts
        self.response: Optional[Response] = None
        self.error: Optional[BaseException] = None
        self._items: Deque = collections.deque()
        self._cv = threading.Condition()
        self._cancelled = False
        self._finished = False                     # the scheduler is done with it (an _END is queued)
        self._listener = listener

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def done(self) -> bool:
        """True once the scheduler is done with this sequence (finished, cancelled or failed)."""
        return self._finished

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop this sequence; its slot is freed at the next step. Safe from any thread."""
        self._cancelled = True
        self._scheduler._wake()

    def __iter__(self) -> "Handle":
        return self

    def __next__(self) -> GenerationChunk:
        while True:
            item = self._pop()
            if item is None:
                if self._finished:
                    raise StopIteration
                if self._scheduler.running:
                    with self._cv:
                        self._cv.wait_for(lambda: self._items or self._finished, timeout=0.5)
                else:
                    self._scheduler.step_or_wait()
                continue
            if item is _END:
                raise StopIteration
            if isinstance(item, BaseException):
                raise item
            return item

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the scheduler is done with this sequence (an engine thread must be running)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._finished, timeout)

    def result(self) -> Response:
        """Run to the end (dropping the chunks not yet read) and return the Response."""
        for _ in self:
            pass
        return self.response

    # -- the scheduler's side
    def _pop(self):
        with self._cv:
            return self._items.popleft() if self._items else None

    def _put(self, item) -> None:
        with self._cv:
            self._items.append(item)
            if item is _END or isinstance(item, BaseException):
                self._finished = True
            self._cv.notify_all()
        if self._listener is not None:
            self._listener(self)


class _Slot:
    """What one KV-cache slot holds: ids (None: unknown, rebuild before use) as of cache version `version`;
    owner: a weak reference to the Scheduler running a sequence in it (None: free)."""

    def __init__(self):
        self.ids: Optional[List[int]] = None       # unknown until first trusted: the model may be in use
        self.version = None
        self.last_used = 0
        self.owner = None


class _Shared:
    """Per model, shared by every Scheduler over it: the slot records (so prefix reuse outlives a Scheduler:
    generate_batch makes one a call) and the lock one step holds (the engine runs one forward at a time)."""

    def __init__(self, n_slots: int):
        self.slots = [_Slot() for _ in range(n_slots)]
        self.lock = threading.Lock()
        self.scheduler = None                      # a weak reference to Scheduler.for_model's scheduler


_SHARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.RLock()               # for_model makes a Scheduler, which looks it up
_CLOCK = itertools.count(1)                        # slot use order, across schedulers


def _shared(model) -> _Shared:
    n_slots = int(getattr(model, "n_slots", 1))
    with _SHARED_LOCK:
        try:
            state = _SHARED.get(model)
        except TypeError:                          # not weak-referenceable: nothing shared
            return _Shared(n_slots)
        if state is None or len(state.slots) != n_slots:
            state = _SHARED[model] = _Shared(n_slots)
        return state


def _stops(stop) -> List[str]:
    return [stop] if isinstance(stop, str) else list(stop or ())


class _Sequence:
    """One running generation: the per-token decisions of generation.loop._loop, fed by the scheduler.

    Invariant while it holds a slot (and the slot is trusted): slot.ids + todo == held, where held is what
    the cache must hold before the next token is sampled, and todo the rows still to run."""

    def __init__(self, handle: Handle, model, tokenizer, n_ctx: int):
        req = handle.request
        self.handle = handle
        self.ids = list(handle.prompt_ids)         # prompt and generated tokens: the sampler's history
        self.sampler = req.sampler
        self.limit = None if req.max_new_tokens is None or req.max_new_tokens < 0 else int(req.max_new_tokens)
        self.matcher = StopMatcher(_stops(req.stop))
        self.ignore_eos = req.ignore_eos
        self.context_shift = req.context_shift
        self.on_notice = req.on_notice
        self.model = model
        self.run = _Run(model, len(self.ids), handle.seed)
        self.decoder = tokenizer.stream_decoder()
        self.eos = tokenizer.eot_token
        self.n_ctx = n_ctx
        self.held = list(self.ids)
        self.todo: List[int] = []
        self.prefilled = False                     # the prompt has been read (t1 set)
        self.prompt_tps = 0.0
        self.n_gen = 0
        self.order = 0                             # admission order: prefill is first come, first served

    def on_logits(self, logits: np.ndarray, now: float) -> Optional[GenerationChunk]:
        """The rows are in: sample, decide, and return the chunk (its finish_reason set if it ended)."""
        run = self.run
        if not self.prefilled:
            self.prefilled = True
            run.t1 = now
            n_new = run.n_prompt - run.n_cached
            self.prompt_tps = n_new / (now - run.t0) if n_new > 0 and now > run.t0 else 0.0
        check_finite(logits, self.model, len(self.held))
        banned = self.ignore_eos and self.eos is not None           # ignore_eos: <|endoftext|> never sampled
        token = self.sampler(mask_tokens(logits, (self.eos,)) if banned else logits, self.ids)
        self.ids.append(token)
        self.n_gen += 1
        finish = None
        if token == self.eos and not self.ignore_eos:
            text, finish = "", "eos"
        else:
            text, stopped = self.matcher.feed(self.decoder.feed(token))
            if stopped:
                finish = "stop"
        if finish is None and self.limit is not None and self.n_gen >= self.limit:
            finish = "length"
        context_full = finish is None and len(self.held) >= self.n_ctx and not self.context_shift
        if context_full:
            finish = "length"
        if finish in ("length", "eos"):
            tail, stopped = self.matcher.feed(self.decoder.flush())
            text += tail if stopped else tail + self.matcher.flush()
            finish = "stop" if self.matcher.stopped else finish
        now = time.perf_counter()
        run.tokens.append(token)
        run.parts.append(text)
        run.t_last = now
        if finish:
            run.response = run.build(finish)
            if context_full and self.on_notice:
                self.on_notice(f"context full ({self.n_ctx} tokens): stopped")
        t1 = run.t1
        return GenerationChunk(text, token, finish, self.prompt_tps, self.n_gen / (now - t1) if now > t1 else 0.0,
                               run.n_prompt, self.n_gen, run.n_cached, run.response)

    def next_rows(self) -> bool:
        """After a chunk that did not finish: the next rows to run. True when the slot must be emptied
        first (the context is full and context_shift re-reads the newest half)."""
        token = self.ids[-1]
        if len(self.held) >= self.n_ctx:
            self.held = self.ids[-max(1, self.n_ctx // 2):]
            if self.on_notice:
                self.on_notice(f"context full ({self.n_ctx} tokens): continuing from the last {len(self.held)}")
            self.todo = list(self.held)
            return True
        self.held.append(token)
        self.todo = [token]
        return False


class Scheduler:
    """Continuous batching over one Model's KV-cache slots (see the module docstring).

    token_budget: rows one step runs at most (decode rows always run; prefill chunks share the rest, at
    least one row a step). max_queue: requests waiting for a slot at most (None: unbounded); submit raises
    QueueFullError beyond it.
    """

    def __init__(self, model, *, token_budget: int = DEFAULT_TOKEN_BUDGET, max_queue: Optional[int] = None):
        if not is_int(token_budget) or token_budget < 1:
            raise ValueError(f"token_budget must be a positive integer, got {token_budget!r}")
        if max_queue is not None and (not is_int(max_queue) or max_queue < 0):
            raise ValueError(f"max_queue must be a non-negative integer or None, got {max_queue!r}")
        self.model = model
        self.token_budget = int(token_budget)
        self.max_queue = max_queue
        self.n_ctx = context_size(model)
        self.n_slots = int(getattr(model, "n_slots", 1))
        shared = _shared(model)
        self._slots = shared.slots
        self._active: Dict[int, _Sequence] = {}    # slot -> sequence
        self._waiting: Deque[Handle] = collections.deque()
        self._lock = threading.Lock()              # guards _waiting and the counters read by stats()
        self._step_lock = shared.lock              # one step at a time, of any Scheduler over this model
        self._cv = threading.Condition(self._lock)
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._tokenizer = None
        # counters (the server's /metrics)
        self.steps = 0
        self.prompt_tokens = 0                     # prompt rows run (cached ones not counted)
        self.completion_tokens = 0
        self.finished = 0

    @classmethod
    def for_model(cls, model, *, token_budget: Optional[int] = None) -> "Scheduler":
        """The model's shared Scheduler (made on first use, kept while anything refers to it): what
        generate_batch runs on, so batches from several callers or threads share its steps, and a paused
        stream's sequences keep going when another batch steps. token_budget: set it (else as it was)."""
        shared = _shared(model)
        with _SHARED_LOCK:
            sched = shared.scheduler() if shared.scheduler is not None else None
            if sched is None:
                sched = cls(model, **({} if token_budget is None else {"token_budget": token_budget}))
                shared.scheduler = weakref.ref(sched)
        if token_budget is not None and token_budget != sched.token_budget:
            if not is_int(token_budget) or token_budget < 1:
                raise ValueError(f"token_budget must be a positive integer, got {token_budget!r}")
            sched.token_budget = int(token_budget)
        return sched

    # ------------------------------------------------------------------------------ the callers' side

    def submit(self, request: Request, listener: Optional[Callable[[Handle], None]] = None) -> Handle:
        """Queue a generation; returns its Handle at once. Checks the request now (ids, context, stop
        strings, slot) and raises ValueError, InvalidTokenError, ContextLengthError, QueueFullError.
        listener(handle), if given, is called (from the stepping thread) whenever the handle has news."""
        ids = check_ids(request.ids, self.model.config.n_vocab).tolist()
        if len(ids) > self.n_ctx:
            raise ContextLengthError(f"the prompt is {len(ids)} tokens but the model's context holds {self.n_ctx}")
        if not callable(request.sampler):
            raise ValueError(f"sampler must be callable, got {request.sampler!r}")
        StopMatcher(_stops(request.stop))          # a bad stop string fails here, not in a step
        if request.max_new_tokens is not None and not is_int(request.max_new_tokens):
            raise ValueError(f"max_new_tokens must be an integer or None, got {request.max_new_tokens!r}")
        if request.slot is not None and (not is_int(request.slot) or not 0 <= request.slot < self.n_slots):
            raise ValueError(f"slot must be an integer in [0, {self.n_slots}), got {request.slot!r}")
        handle = Handle(self, request, ids, listener)
        with self._cv:
            if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting for a slot (the limit)")
            self._waiting.append(handle)
            self._cv.notify_all()
        return handle

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        return not self._waiting and not self._active

    @property
    def running(self) -> bool:
        """True while an engine thread (start()) steps the scheduler."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        """Queue depth, busy slots and totals, for monitoring."""
        with self._lock:
            return {"waiting": len(self._waiting), "busy_slots": len(self._active), "n_slots": self.n_slots,
                    "steps": self.steps, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "finished": self.finished}

    def run_until_idle(self) -> None:
        """Step until every submitted sequence has finished (the caller's thread drives the model)."""
        while not self.idle:
            self.step_or_wait()

    def start(self) -> None:
        """Step in a background engine thread from now on (submit/iterate/cancel from any thread)."""
        if self.running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="gpt2cy-scheduler", daemon=True)
        self._thread.start()

    def stop(self, cancel: bool = True, timeout: Optional[float] = None) -> None:
        """Stop the engine thread: with cancel, every sequence is cancelled first; else it stops once idle."""
        if cancel:
            self.cancel_all()
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def cancel_all(self) -> None:
        with self._lock:
            handles = list(self._waiting) + [s.handle for s in self._active.values()]
        for h in handles:
            h.cancel()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while self.idle and not self._stopping:
                    self._cv.wait()
                if self._stopping and self.idle:
                    return
            try:
                self.step_or_wait()
            except Exception as e:                 # the engine failed: every running sequence gets it
                with self._step_lock:
                    for seq in list(self._active.values()):
                        seq.handle.error = e
                        seq.handle.response = seq.run.build("interrupted")
                        self._finish(seq, e)

    # ------------------------------------------------------------------------------ one step

    def step(self) -> int:
        """Admit waiting sequences to free slots, drop cancelled ones, run one forward over every active
        sequence's rows, and hand out the chunks. Returns the number of rows run (0: nothing to run)."""
        with self._step_lock:
            return self._step()

    def step_or_wait(self) -> int:
        """step(); when it could run nothing (every free slot is another Scheduler's), sleep a moment
        rather than spin."""
        n = self.step()
        if n == 0 and not self.idle:
            time.sleep(0.001)
        return n

    def _trusted(self, slot: int) -> bool:
        rec = self._slots[slot]
        return (rec.ids is not None and rec.version == self.model.cache_version(slot)
                and self.model.past(slot) == len(rec.ids))

    def _empty_slot(self, slot: int) -> None:
        rec = self._slots[slot]
        rec.ids = None
        self.model.reset(slot)
        rec.ids, rec.version = [], self.model.cache_version(slot)

    def _finish(self, seq: _Sequence, item=_END) -> None:
        slot = seq.handle.slot
        if slot is not None and self._active.get(slot) is seq:
            del self._active[slot]
            self._slots[slot].owner = None
        with self._lock:
            self.finished += 1
        seq.handle._put(item)

    def _taken(self, slot: int) -> bool:
        owner = self._slots[slot].owner
        return slot in self._active or (owner is not None and owner() is not None)

    def _pick_slot(self, handle: Handle) -> Optional[int]:
        want = handle.request.slot
        if want is not None:
            return want if not self._taken(want) else None
        best, best_key = None, None
        for s in range(self.n_slots):
            if self._taken(s):
                continue
            rec = self._slots[s]
            common = _common_prefix(rec.ids, handle.prompt_ids) if self._trusted(s) else 0
            key = (common, -rec.last_used)         # the longest shared prefix, else the least recently used
            if best_key is None or key > best_key:
                best, best_key = s, key
        return best

    def _admit(self) -> None:
        if self._waiting and self._tokenizer is None:
            self._tokenizer = self.model.tokenizer
        with self._lock:
            waiting = list(self._waiting)
        for handle in waiting:
            if handle.request.max_new_tokens == 0:  # as generation.loop: nothing runs, one empty chunk
                with self._lock:
                    self._waiting.remove(handle)
                seq = _Sequence(handle, self.model, self._tokenizer, self.n_ctx)
                seq.run.response = handle.response = seq.run.build("length")
                handle._put(GenerationChunk("", None, "length", prompt_tokens=seq.run.n_prompt,
                                            response=handle.response))
                self._finish(seq)
                continue
            slot = self._pick_slot(handle)
            if slot is None:
                continue
            with self._lock:
                self._waiting.remove(handle)
            seq = _Sequence(handle, self.model, self._tokenizer, self.n_ctx)
            seq.order = next(self._order)
            handle.slot = slot
            ids, rec = seq.held, self._slots[slot]
            common = _common_prefix(rec.ids, ids) if self._trusted(slot) else 0
            if common == len(ids):
                common -= 1                        # run the last prompt token again for its logits
            if common == 0:
                self._empty_slot(slot)
            elif common < len(rec.ids):
                rec.ids = None
                self.model.truncate(common, slot)
                rec.ids, rec.version = ids[:common], self.model.cache_version(slot)
            else:
                rec.ids = list(rec.ids)
            rec.last_used = next(_CLOCK)
            rec.owner = weakref.ref(self)
            seq.todo = ids[common:]
            seq.run.n_cached = common
            seq.run.t0 = time.perf_counter()
            self._active[slot] = seq

    def reap(self) -> None:
        """Drop cancelled sequences now (their Response: "interrupted"), without running a step."""
        with self._step_lock:
            self._reap()

    def _reap(self) -> None:
        for seq in list(self._active.values()):
            if seq.handle._cancelled:
                seq.handle.response = seq.run.response or seq.run.build("interrupted")
                self._finish(seq)
        with self._lock:
            gone = [h for h in self._waiting if h._cancelled]
            for h in gone:
                self._waiting.remove(h)
        for h in gone:
            seq = _Sequence(h, self.model, self._tokenizer or self.model.tokenizer, self.n_ctx)
            h.response = seq.run.build("interrupted")
            self._finish(seq)

    def _plan(self) -> list:
        """[(sequence, rows)] for this step: each decode row, then prefill chunks in the budget's room."""
        decode = [s for s in self._active.values() if len(s.todo) == 1]
        prefill = sorted((s for s in self._active.values() if len(s.todo) > 1), key=lambda s: s.order)
        batch = [(s, 1) for s in decode]
        room = self.token_budget - len(decode)
        for i, seq in enumerate(prefill):
            n = min(len(seq.todo), room)
            if n <= 0:
                if i:
                    break
                n = 1                              # a prompt always advances, whatever decodes
            batch.append((seq, n))
            room -= n
        return batch

    def _step(self) -> int:
        # 1. cancelled sequences leave; waiting ones take the free slots
        self._reap()
        self._admit()
        if not self._active:
            return 0
        for slot, seq in self._active.items():
            if not self._trusted(slot):            # someone else used the slot: rebuild it from held
                self._empty_slot(slot)
                seq.todo = list(seq.held)
        # 2. one forward over every sequence's rows; a failure (Ctrl-C) leaves those caches unknown, so
        #    their slots are rebuilt at the next step
        batch = self._plan()
        reqs = [(seq.handle.slot, seq.todo[:n]) for seq, n in batch]
        before = []
        for slot, _ in reqs:
            rec = self._slots[slot]
            before.append(rec.ids)
            rec.ids = None
        logits = self.model.forward_batch(reqs)
        now = time.perf_counter()
        n_prompt = n_gen = 0
        # 3. the sequences whose rows are all in sample their next token
        for (seq, n), (slot, rows), held, row_logits in zip(batch, reqs, before, logits):
            rec = self._slots[slot]
            held.extend(rows)
            rec.ids, rec.version = held, self.model.cache_version(slot)
            seq.todo = seq.todo[n:]
            if not seq.prefilled:
                n_prompt += n
            if seq.todo:
                continue
            try:
                chunk = seq.on_logits(row_logits, now)
            except Exception as e:                 # this sequence alone fails
                seq.handle.error = e
                seq.handle.response = seq.run.build("interrupted")
                self._finish(seq, e)
                continue
            n_gen += 1
            if chunk.finish_reason:
                seq.handle.response = chunk.response
                seq.handle._put(chunk)
                self._finish(seq)
            else:
                if seq.next_rows():
                    self._empty_slot(slot)
                seq.handle._put(chunk)
        with self._lock:
            self.steps += 1
            self.prompt_tokens += n_prompt
            self.completion_tokens += n_gen
        return len(reqs) and sum(n for _, n in batch)
