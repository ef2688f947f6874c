"""What reaches the user's terminal and what comes from the user's files.

Model text is untrusted: GPT-2 can emit ESC, BEL, backspace, carriage returns and C1 controls, which a
terminal would act on (clear the screen, retitle the window, hide text, move the cursor). On a terminal they
are shown escaped (`\\x1b`); piped output, --json and --raw-output keep every byte as generated.

Input files, stdin and --preamble files are decoded as UTF-8. Bytes that are not UTF-8 become U+FFFD with a
notice naming the first bad byte's offset, or, with --strict, fail the command.
"""
from __future__ import annotations

import re

from ..notices import notice

# C0 controls except tab and newline, DEL, and the C1 controls (U+0080-U+009F: U+009B is a one-character CSI)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Control characters (not tab or newline) as visible escapes: "\\x1b[2J" for ESC [2J."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def wants_escaping(stream, raw: bool) -> bool:
    """Escape control characters on `stream`: only when it is a terminal and raw output was not asked for."""
    if raw:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class InputEncodingError(ValueError):
    """Input that is not UTF-8 under --strict (one line, exit 1)."""


def decode_input(data: bytes, what: str, strict: bool = False) -> str:
    """UTF-8 text from `data`; bytes that are not UTF-8 become U+FFFD with a notice naming the offset of
    the first (strict: InputEncodingError instead). `what` names the source ("prompt file x.txt")."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        first, byte = e.start, data[e.start]
    if strict:
        raise InputEncodingError(f"{what} is not valid UTF-8: byte 0x{byte:02x} at offset {first} "
                                 f"(without --strict such bytes become U+FFFD)")
    text = data.decode("utf-8", "replace")
    n = text.count("\ufffd") - data.count("\ufffd".encode("utf-8"))
    notice(f"{what} is not valid UTF-8: {n} invalid sequence{'' if n == 1 else 's'}, the first at byte "
           f"offset {first} (0x{byte:02x}), replaced by U+FFFD (--strict refuses such input)")
    return text
