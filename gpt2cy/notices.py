"""The one sink for notices: things a user should hear about that are not errors ("context full", "prompt
truncated", "downloading 124M").

Every module reports through `notice(message)`. Notices go to the standard `logging` logger "gpt2cy" at
level WARNING; the library adds no handler of its own (only a NullHandler), so nothing reaches stderr unless
the program asks: `logging.basicConfig()`, a handler on logging.getLogger("gpt2cy"), or a callback with
`set_notice_handler(fn)`. The command line installs `stderr_line` (`to_stderr()`), which prints
"gpt2cy: <message>", and holds notices back with `deferred()` while model text is streaming, so that they
land after the text on their own line.
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

logger = logging.getLogger("gpt2cy")
logger.addHandler(logging.NullHandler())

NoticeHandler = Callable[[str], None]
_handler: Optional[NoticeHandler] = None


def notice(message: str) -> None:
    """Report one notice: to the callback when one is set, else to the "gpt2cy" logger (WARNING)."""
    h = _handler
    if h is not None:
        h(message)
    else:
        logger.warning(message)


def set_notice_handler(handler: Optional[NoticeHandler]) -> Optional[NoticeHandler]:
    """Send every notice to `handler(message)` instead of the logger (None: back to the logger).
    Returns the previous handler."""
    global _handler
    old, _handler = _handler, handler
    return old


def stderr_line(message: str) -> None:
    """A handler: one line "gpt2cy: <message>" on stderr, flushed. A closed or broken stderr is ignored
    (a notice must never fail the work it reports on)."""
    try:
        print(f"gpt2cy: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def to_stderr() -> Optional[NoticeHandler]:
    """Print notices on stderr (what the command line asks for). Returns the previous handler, for
    set_notice_handler() to restore."""
    return set_notice_handler(stderr_line)


@contextmanager
def captured() -> Iterator[List[str]]:
    """Collect the notices raised inside the block into a list (tests, and callers that report later)."""
    got: List[str] = []
    old = set_notice_handler(got.append)
    try:
        yield got
    finally:
        set_notice_handler(old)


@contextmanager
def deferred() -> Iterator[List[str]]:
    """Hold the notices raised inside the block and pass them on, in order, when it ends (also when it
    ends by an exception): the command line wraps streamed model text in it, so a "context full" notice
    follows the text instead of landing in the middle of its line."""
    got: List[str] = []
    old = set_notice_handler(got.append)
    try:
        yield got
    finally:
        set_notice_handler(old)
        for message in got:
            notice(message)
