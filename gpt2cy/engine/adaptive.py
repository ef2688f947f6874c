"""An Engine whose thread count follows a ThreadGovernor (gpt2cy.threads): each forward, step and batch
is timed and the next one's thread count chosen from that, so the default never stays the slow case on a
busy machine. Everything else is the Engine's own. Setting `threads` fixes the count (the governor stops).
"""
from __future__ import annotations

from time import perf_counter

from ..threads import ThreadGovernor


class AdaptiveEngine:
    """Wraps an engine._forward.Engine; same methods and attributes."""

    def __init__(self, engine, governor: ThreadGovernor):
        self._e = engine
        self._gov = governor

    def __getattr__(self, name):
        return getattr(self._e, name)

    @property
    def governor(self):
        """The ThreadGovernor in charge, or None once threads were set by hand."""
        return self._gov

    @property
    def threads(self) -> int:
        return self._e.threads

    @threads.setter
    def threads(self, n) -> None:
        self._e.threads = n
        self._gov = None

    def _timed(self, rows: int, fn, *args):
        gov = self._gov
        if gov is None:
            return fn(*args)
        kind = gov.kind_of(rows)
        n = gov.choose(kind)
        if n != self._e.threads:
            self._e.threads = n
        t0 = perf_counter()
        result = fn(*args)
        gov.record(kind, n, perf_counter() - t0, rows)
        return result

    def forward(self, ids, out, all_rows, slot=0):
        return self._timed(len(ids), self._e.forward, ids, out, all_rows, slot)

    def step(self, token, out, slot=0):
        return self._timed(1, self._e.step, token, out, slot)

    def forward_batch(self, ids, slots, pos, logit_rows, out, all_rows=False):
        return self._timed(len(ids), self._e.forward_batch, ids, slots, pos, logit_rows, out, all_rows)
