"""`gpt2cy serve`: an OpenAI-compatible HTTP server (gpt2cy.serve) with a chat page at /.

Needs the optional extra: pip install 'gpt2cy[serve]' (Starlette and uvicorn). The imports happen in
run(), so `gpt2cy --help` stays fast and works without them. Flags are checked while parsing (exit 2
before any model loads); the port is bound before the model loads, so a taken port fails at once.
"""
from __future__ import annotations

import os
import sys

from .parser import _number

NAME = "serve"
HELP = "serve OpenAI's API over HTTP (with a chat page at /)"
DESCRIPTION = ("Serve the model over HTTP with OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models, "
               "plus /tokenize, /detokenize, /health, /metrics and a chat page at /. Sequences run together, "
               "--parallel at a time (continuous batching). Needs: pip install 'gpt2cy[serve]'.")
API_KEY_ENV = "GPT2CY_API_KEY"


def _port(text: str) -> int:
    return _number(int, "port", 0, 65535)(text)


_port.__name__ = "port"


def add_arguments(p) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    g.add_argument("--port", type=_port, default=8080, metavar="N", help="port (default 8080; 0: any free port)")
    g.add_argument("--parallel", "-np", type=_number(int, "parallel", 1, 256), default=4, metavar="N",
                   help="sequences generated at once, each in its own KV-cache slot (default 4)")
    g.add_argument("--queue", type=_number(int, "queue", 1), default=64, metavar="N",
                   help="requests waiting for a slot at most; beyond it 429 with Retry-After (default 64)")
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    g.add_argument("--alias", default=None, metavar="NAME", help="the model's id in the API (default: its name)")
    g.add_argument("--shutdown-timeout", type=_number(float, "shutdown-timeout", 0.0), default=5.0, metavar="S",
                   help="on SIGINT/SIGTERM, seconds in-flight requests may take to finish before they are "
                        "cancelled (default 5)")


def run(args) -> int:
    from .commands import EXIT_ERROR, EXIT_OK, error_line, load_model
    from .parser import UsageError
    from ..notices import notice
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if args.api_key is not None and not args.api_key.strip():
        raise UsageError("gpt2cy: --api-key must not be empty (see gpt2cy serve --help)")
    try:
        from ..serve.server import Server
    except ImportError as e:
        error_line(f"gpt2cy serve needs Starlette and uvicorn ({e.name or e} is missing): "
                   f"pip install 'gpt2cy[serve]'")
        return EXIT_ERROR
    try:
        sock = Server._bind(args.host, args.port)
    except OSError as e:
        error_line(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
        return EXIT_ERROR
    try:
        model, _ = load_model(args, n_slots=args.parallel)
    except BaseException:
        sock.close()
        raise
    server = Server(model, args.host, args.port, api_key=api_key, max_queue=args.queue, model_id=args.alias,
                    shutdown_timeout=args.shutdown_timeout, log_level="info" if args.verbose else "warning",
                    sock=sock)
    notice(f"serving {server.engine.model_id} on {server.url} ({args.parallel} slots"
           f"{', API key required' if api_key else ''}); chat page at {server.url}/ ; Ctrl-C stops")
    sys.stderr.flush()
    server.run()
    notice("server stopped")
    return EXIT_OK
