"""The one sink for notices: things a user should hear about that are not errors ("context full", "prompt
truncated", "downloading 124M").

Every module reports through `notice(message)`. Notices go to the standard `logging` logger "gpt2cy" at
level WARNING; the library adds no handler of its own (only a NullHandler), so a script or notebook decides
where they go: `logging.basicConfig()`, a handler on logging.getLogger("gpt2cy"), or a callback with
`set_notice_handler(fn)`. The command line installs `to_stderr()`, which prints "gpt2cy: <message>".
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

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
    """A handler: one line "gpt2cy: <message>" on stderr, flushed."""
    print(f"gpt2cy: {message}", file=sys.stderr, flush=True)


def to_stderr() -> None:
    """Print notices on stderr (what the command line asks for)."""
    set_notice_handler(stderr_line)


@contextmanager
def captured() -> Iterator[list]:
    """Collect the notices raised inside the block into a list (tests, and callers that report later)."""
    got: list = []
    old = set_notice_handler(got.append)
    try:
        yield got
    finally:
        set_notice_handler(old)
