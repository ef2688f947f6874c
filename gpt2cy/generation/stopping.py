"""Stop strings matched on decoded text, across token boundaries.

Text is released only once it can no longer be the start of a stop string: any tail of the
text seen so far that is a prefix of some stop string is held back. When a stop string appears,
the text before it is released and the stop string (and everything after it) is left out,
OpenAI's semantics. This avoids llama.cpp's "reverse prompt ignored every other time"
(ggml-org/llama.cpp#1224): matching never depends on how the text was split into tokens.
"""
from __future__ import annotations

from typing import Iterable, Tuple


class StopMatcher:
    """Feed decoded text piece by piece; get back the text that is safe to show.

    >>> m = StopMatcher(["\\nAlice:"])
    >>> m.feed("Hi.\\nAl")
    ('Hi.', False)
    >>> m.feed("ice: x")
    ('', True)
    """

    def __init__(self, stops: Iterable[str] = ()):
        stops = list(stops or ())
        for s in stops:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}")
            if not s:
                raise ValueError("stop strings must not be empty")
        self.stops = tuple(dict.fromkeys(stops))       # unique, order kept
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.stopped = False
        self.matched = None                            # the stop string that ended the text

    def feed(self, text: str) -> Tuple[str, bool]:
        """Add text; return (text to release now, True once a stop string has appeared)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        first, stop = self._first_match(buf)
        # text from `pending` on might still become a stop string (one that starts before `first`)
        pending = self._pending_start(buf, first if first >= 0 else len(buf))
        if first >= 0 and pending < 0:
            self._held, self.stopped, self.matched = "", True, stop
            return buf[:first], True
        if pending < 0:
            pending = len(buf)
        self._held = buf[pending:]
        return buf[:pending], False

    def flush(self) -> str:
        """The end of the text: release what was held back, up to a stop string found in it."""
        if self.stopped:
            return ""
        buf, self._held = self._held, ""
        first, stop = self._first_match(buf)
        if first >= 0:
            self.stopped, self.matched = True, stop
            return buf[:first]
        return buf

    def _first_match(self, buf: str):
        """(start, stop string) of the earliest complete stop string in buf, or (-1, None)."""
        first, stop = -1, None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (first < 0 or i < first):
                first, stop = i, s
        return first, stop

    def _pending_start(self, buf: str, limit: int) -> int:
        """The smallest j < limit where buf[j:] is a proper prefix of some stop string, else -1."""
        for j in range(max(0, len(buf) - self._longest + 1), limit):
            tail = buf[j:]
            for s in self.stops:
                if len(tail) < len(s) and s.startswith(tail):
                    return j
        return -1
