"""The server's side of the engine: one Scheduler, its engine thread, and the bridge to asyncio.

One thread owns the model: the Scheduler's engine thread (Scheduler.start()) runs every forward pass.
Request handlers never touch the model; they turn a GenerationSpec into Requests, submit them, read
their Handles' chunks as they come, and cancel() them when the client goes away (the slot is freed at
the next step). The bridge is the Handle's listener: the engine thread calls it once per item it queues
on a handle, and it posts the choice's index to the request's asyncio queue, so a coroutine reads
exactly one item (never blocking the event loop) per notice.

The one exception is echo with logprobs, which needs every prompt position's logits (Model.logits):
`score()` runs it between two steps, holding the model's step lock, on a slot no sequence holds.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, List, Optional, Tuple

import numpy as np

from ..generation.chat import no_empty_reply, reply_enders, reply_stops
from ..generation.loop import GenerationChunk
from ..generation.response import model_name
from ..generation.sampling import Sampler
from ..generation.scheduler import DEFAULT_TOKEN_BUDGET, QueueFullError, Request, Scheduler
from .logprobs import Recorder
from .metrics import Metrics
from .protocol import APIError, GenerationSpec

RETRY_AFTER_S = 1


class Engine:
    """A Model served to many clients: continuous batching over its slots, a bounded queue, counters.

    max_queue: requests (choices) waiting for a slot at most; beyond it submit() answers 429.
    model_id: what /v1/models calls the model (default: its name).
    """

    def __init__(self, model, *, max_queue: Optional[int] = 64, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 model_id: Optional[str] = None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.scheduler = Scheduler(model, token_budget=token_budget, max_queue=max_queue)
        self.metrics = Metrics()
        self.model_id = model_id or model_name(model)
        self.draining = False
        self._enders: Optional[np.ndarray] = None
        self._newline = tuple(self.tokenizer.encode("\n"))

    # -- lifetime
    def start(self) -> None:
        """Start the engine thread (and scan the vocabulary for the chat's reply enders once)."""
        self.enders()
        self.scheduler.start()

    def drain(self) -> None:
        """Refuse new work from now on (503); what runs goes on."""
        self.draining = True

    def cancel_all(self) -> None:
        self.scheduler.cancel_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the engine thread."""
        self.draining = True
        self.scheduler.stop(cancel=True, timeout=timeout)

    def stats(self) -> dict:
        return self.scheduler.stats()

    def enders(self) -> np.ndarray:
        if self._enders is None:
            self._enders = reply_enders(self.tokenizer, self.model.config.n_vocab)
        return self._enders

    # -- work
    def requests(self, spec: GenerationSpec) -> Tuple[List[Request], List[Optional[Recorder]]]:
        """One Request per choice (prompt i, sample k -> index i * n + k), with its logprob recorder."""
        reqs, recs = [], []
        chat = spec.kind == "chat"
        stop = reply_stops(False, spec.stop) if chat else list(spec.stop)
        for i, ids in enumerate(spec.prompts):
            for k in range(spec.n):
                sampler = Sampler(spec.params, spec.choice_seed(k), exempt=self._newline if chat else ())
                pick = no_empty_reply(sampler, self.enders()) if chat else sampler
                rec = Recorder(pick, spec.logprobs) if spec.logprobs is not None else None
                reqs.append(Request(ids, rec or pick, max_new_tokens=spec.max_tokens, stop=stop,
                                    ignore_eos=spec.ignore_eos, seed=sampler.seed, tag=i * spec.n + k,
                                    on_notice=None))
                recs.append(rec)
        return reqs, recs

    def submit(self, spec: GenerationSpec) -> "Job":
        """Queue every choice of spec; APIError 503 while draining, 429 when the queue is full."""
        if self.draining:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        reqs, recs = self.requests(spec)
        job = Job(self, spec, recs)
        try:
            for r in reqs:
                job.handles.append(self.scheduler.submit(r, listener=job._notify))
        except QueueFullError as e:
            job.cancel(count=False)
            self.metrics.busy()
            raise APIError(429, f"the server is busy: {e}; retry shortly", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        return job

    def score(self, ids: List[int], timeout: float = 30.0) -> np.ndarray:
        """Logits [len(ids), V] of a prompt (for echo + logprobs): between two steps, under the model's
        step lock, in a slot no sequence holds (the scheduler rebuilds a slot it sees changed). Blocking:
        call it from a worker thread."""
        sched = self.scheduler
        deadline = time.monotonic() + timeout
        while True:
            with sched._step_lock:                 # the engine runs one forward at a time
                free = [s for s in range(sched.n_slots) if not sched._taken(s)]
                if free:
                    return self.model.logits(ids, free[-1])
            if time.monotonic() > deadline:
                raise APIError(503, "no slot came free to score the prompt; retry shortly", type="server_error",
                               code="busy", headers={"Retry-After": str(RETRY_AFTER_S)})
            time.sleep(0.005)


class Job:
    """The choices of one HTTP request: their Handles, logprob recorders, and an asyncio queue of news."""

    def __init__(self, engine: Engine, spec: GenerationSpec, recorders: List[Optional[Recorder]]):
        self.engine = engine
        self.spec = spec
        self.recorders = recorders
        self.handles = []
        self.loop = asyncio.get_running_loop()
        self.news: asyncio.Queue = asyncio.Queue()
        self._open = len(recorders)

    def _notify(self, handle) -> None:              # the engine thread: one call per item on the handle
        try:
            self.loop.call_soon_threadsafe(self.news.put_nowait, handle.tag)
        except RuntimeError:                        # the event loop is gone (server stopped)
            pass

    async def events(self) -> AsyncIterator[Tuple[int, Optional[GenerationChunk]]]:
        """(choice index, chunk) as the engine makes them; (index, None) when that choice is over (its
        Handle's response is then set). A choice's failure (its sampler, non-finite logits) is raised."""
        while self._open:
            index = await self.news.get()
            try:
                item = next(self.handles[index])    # never blocks: the engine queued an item first
            except StopIteration:
                self._open -= 1
                yield index, None
                continue
            yield index, item

    @property
    def open(self) -> int:
        return self._open

    def cancel(self, count: bool = True) -> None:
        """Cancel the choices still running (the client went away); counted in the metrics."""
        live = [h for h in self.handles if not h.done and not h.cancelled]
        for h in live:
            h.cancel()
        if count and live:
            self.engine.metrics.cancel(len(live))
