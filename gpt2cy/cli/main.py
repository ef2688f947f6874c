"""The `gpt2cy` command: chat (the default), generate, tokenize, download, list, verify, serve, perplexity,
convert.

    parser.py    the arguments and their checks (every bad value exits 2 before a model loads)
    commands.py  one function per command, over the library's public calls
    repl.py      the terminal chat
    serve.py, perplexity.py, convert.py  those commands: their arguments (add_arguments) and run(args)
    main.py      this: dispatch, notices to stderr, exceptions to exit statuses

stdout carries only model text (or the command's own output); banners, notices and timings go to stderr.

Exit status: 0 ok, 1 runtime error, 2 usage error, 3 model missing (offline), 4 download failed,
5 prompt longer than the context, 130 Ctrl-C, 141 stdout closed (a broken pipe).
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from ..errors import ContextLengthError, DownloadError, GPT2CyError, ModelNotFound
from ..notices import set_notice_handler, to_stderr
from .commands import (EXIT_CONTEXT, EXIT_DOWNLOAD, EXIT_ERROR, EXIT_INTERRUPT, EXIT_NOT_FOUND, EXIT_OK,
                       EXIT_USAGE, cmd_chat, cmd_download, cmd_generate, cmd_info, cmd_list, cmd_tokenize,
                       cmd_verify, describe, error_line)
from . import convert, perplexity, serve
from .parser import UsageError, build_parser, with_default_command

EXIT_PIPE = 141


def _exit_code(e: BaseException) -> int:
    if isinstance(e, ModelNotFound):
        return EXIT_NOT_FOUND
    if isinstance(e, DownloadError):
        return EXIT_DOWNLOAD
    if isinstance(e, ContextLengthError):
        return EXIT_CONTEXT
    return EXIT_ERROR


def _tolerant_streams() -> None:
    """Odd bytes on stdin and unencodable characters on stdout must never raise."""
    for stream, errors in ((sys.stdin, "replace"), (sys.stdout, "replace"), (sys.stderr, "backslashreplace")):
        try:
            stream.reconfigure(errors=errors)
        except (AttributeError, ValueError, OSError):
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status. Notices print on stderr while it runs (the
    handler in place before is restored on return, so an in-process call leaves the library quiet)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _tolerant_streams()
    previous = to_stderr()
    try:
        return _run(argv)
    finally:
        set_notice_handler(previous)


def _run(argv: List[str]) -> int:
    debug = False                                   # from the parsed flags: a prompt may contain "--debug"
    try:
        args = build_parser().parse_args(with_default_command(argv))
        debug = bool(getattr(args, "debug", False))
        if args.info:
            return cmd_info()
        return {"chat": cmd_chat, "generate": cmd_generate, "tokenize": cmd_tokenize,
                "download": cmd_download, "list": cmd_list, "verify": cmd_verify,
                "serve": serve.run, "perplexity": perplexity.run, "convert": convert.run}[args.command](args)
    except UsageError as e:
        print(str(e), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except SystemExit as e:                         # --help / --version
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPT
    except BrokenPipeError:                         # `gpt2cy generate ... | head`: leave quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_PIPE
    except (GPT2CyError, OSError, ValueError) as e:
        if debug:
            import traceback
            traceback.print_exc()
        error_line(describe(e))
        return _exit_code(e)
    except Exception as e:  # a bug of ours: still one line for the user, the traceback on request
        if debug:
            import traceback
            traceback.print_exc()
        error_line(f"internal error: {type(e).__name__}: {describe(e)} (run with --debug for the traceback)")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
