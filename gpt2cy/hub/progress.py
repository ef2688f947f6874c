"""Download progress on stderr: a redrawn bar on a terminal, one plain line per file otherwise.

stdout carries only model text, so everything here goes to stderr. `GPT2CY_NO_PROGRESS=1` silences the bar
and the per-file lines (announcements such as "downloading model 124M" are notices: gpt2cy.notices).
Byte counts are the real bytes written, never chunk sizes (jaymody/picoGPT#18, openai/gpt-2's over-count).
"""
from __future__ import annotations

import os
import sys
import time

_REDRAW_S = 0.1  # at most ten redraws a second: a terminal is slower than a fast download


def progress_enabled() -> bool:
    """False when GPT2CY_NO_PROGRESS is set to anything but '' or '0'."""
    return os.environ.get("GPT2CY_NO_PROGRESS", "").strip().lower() in ("", "0", "false", "no", "off")


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def format_duration(s: float) -> str:
    """75 -> '1:15', 3725 -> '1:02:05'."""
    s = int(max(0, s) + 0.5)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class FileProgress:
    """Progress of one file: `start(done, total)`, `advance(n)` per chunk written, then `finish()` or `close()`.

    `done` at start is the byte count already on disk (a resumed download); rate and ETA count only the bytes
    fetched now. `total` may be None when the server sends no length.
    """

    def __init__(self, label: str, stream=None, enabled: bool | None = None, tty: bool | None = None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = progress_enabled() if enabled is None else enabled
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.done = 0
        self.total = None
        self._t0 = self._last = 0.0
        self._start_done = 0
        self._drawn = False

    def start(self, done: int, total: int | None) -> None:
        """(Re)start the count: `done` bytes already present out of `total` (None = unknown)."""
        self.done, self.total = done, total
        self._start_done = done
        self._t0 = self._last = time.monotonic()
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def rate(self) -> float:
        """Bytes per second fetched since start()."""
        dt = time.monotonic() - self._t0
        return (self.done - self._start_done) / dt if dt > 0 else 0.0

    def line(self) -> str:
        """The bar's text: label, bytes done/total, percent, rate, ETA."""
        rate = self.rate()
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
            return (f"{self.label}  {format_bytes(self.done)} / {format_bytes(self.total)}  {pct:5.1f}%  "
                    f"{format_bytes(rate)}/s  ETA {eta}")
        return f"{self.label}  {format_bytes(self.done)}  {format_bytes(rate)}/s"

    def _draw(self, force: bool = False) -> None:
        if not (self.enabled and self.tty):
            return
        now = time.monotonic()
        if not force and now - self._last < _REDRAW_S:
            return
        self._last = now
        self._write("\r\x1b[2K" + self.line())
        self._drawn = True

    def finish(self) -> None:
        """The file is complete: end the bar's line (TTY) or print one summary line (not a TTY)."""
        if not self.enabled:
            return
        dt = time.monotonic() - self._t0
        fetched = self.done - self._start_done
        resumed = f", resumed at {format_bytes(self._start_done)}" if self._start_done else ""
        summary = (f"{self.label}  {format_bytes(self.done)} in {dt:.1f} s "
                   f"({format_bytes(fetched / dt if dt > 0 else 0.0)}/s{resumed})")
        if self.tty:
            self._write("\r\x1b[2K" + summary + "\n")
        else:
            self._write(f"gpt2cy: {summary}\n")
        self._drawn = False

    def close(self) -> None:
        """Abandoned (error or Ctrl-C): end a half-drawn bar's line so the error message starts clean."""
        if self._drawn:
            self._write("\n")
            self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False
