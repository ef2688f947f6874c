"""Running the app: uvicorn on a socket we bind ourselves, the engine thread, and a bounded shutdown.

    with Server(model, port=0) as s:          # a background thread (tests, notebooks); s.url
        ...
    Server(model, port=8080).run()            # the foreground, as `gpt2cy serve` runs it

Shutdown (SIGINT or SIGTERM in the foreground, stop() in the background): /health turns 503 and new
generations are refused (503, Retry-After) at once; uvicorn stops accepting connections; what is in
flight may finish for `shutdown_timeout` seconds, then it is cancelled (a stream ends with an error event,
a waiting request gets 503); a second signal cancels at once. Then the engine thread stops and run()
returns, so the process exits 0.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Optional

import uvicorn

from .app import create_app
from .engine import Engine

log = logging.getLogger("gpt2cy.serve")


class _Uvicorn(uvicorn.Server):
    """uvicorn's server whose signal handler starts our shutdown (and never re-raises the signal, so the
    process exits 0 once everything has stopped)."""

    def __init__(self, config, owner: "Server"):
        super().__init__(config)
        self.owner = owner

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit:
            self.force_exit = True
            self.owner.engine.cancel_all()
        self.should_exit = True
        self.owner._begin_shutdown()


class Server:
    """An Engine over `model` behind uvicorn on host:port (port 0: any free port; see .port, .url).

    parallel sequences = the model's slots (gpt2cy.load(..., n_slots=N)). max_queue: choices waiting for a
    slot before 429. api_key: required as `Authorization: Bearer KEY` (None: open). model_id: the name
    /v1/models gives. shutdown_timeout: seconds in-flight work may take to finish once shutdown starts.
    """

    def __init__(self, model, host: str = "127.0.0.1", port: int = 8080, *, api_key: Optional[str] = None,
                 max_queue: Optional[int] = 64, model_id: Optional[str] = None, shutdown_timeout: float = 5.0,
                 log_level: str = "warning", sock: Optional[socket.socket] = None):
        self.engine = Engine(model, max_queue=max_queue, model_id=model_id)
        self.app = create_app(self.engine, api_key=api_key)
        self.host = host
        self.shutdown_timeout = float(shutdown_timeout)
        self.sock = sock if sock is not None else self._bind(host, port)   # sock: bound by the caller
        self.sock.listen(2048)                     # from now on connections wait for uvicorn, not fail
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=log_level, access_log=log_level in ("info", "debug", "trace"),
                                timeout_graceful_shutdown=self.shutdown_timeout + 1.0, lifespan="off",
                                timeout_keep_alive=5)
        self._uvicorn = _Uvicorn(config, self)
        self._thread: Optional[threading.Thread] = None
        self._cancel_timer: Optional[threading.Timer] = None
        self._shutdown_started = False

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        """Bind now, so a taken port is an OSError before the model has been wasted on it."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it Nagle held every small write (an SSE chunk, a response's body after its headers)
        # for the client's delayed ACK: 40 ms a response
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        return sock

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _begin_shutdown(self) -> None:
        if self._shutdown_started:
            return
        self._shutdown_started = True
        self.engine.drain()
        self._cancel_timer = threading.Timer(self.shutdown_timeout, self.engine.cancel_all)
        self._cancel_timer.daemon = True
        self._cancel_timer.start()

    def _finish(self) -> None:
        if self._cancel_timer is not None:
            self._cancel_timer.cancel()
        self.engine.stop(timeout=5.0)
        try:
            self.sock.close()
        except OSError:
            pass

    # -- the foreground
    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (main thread) or stop(); returns once everything has stopped."""
        self.engine.start()
        try:
            self._uvicorn.run(sockets=[self.sock])
        finally:
            self._finish()

    # -- a background thread
    def start(self, timeout: float = 30.0) -> "Server":
        """Serve from a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, name="gpt2cy-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        if not self._uvicorn.started:
            raise RuntimeError("the server failed to start")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down as a signal would, and wait for the thread."""
        self._begin_shutdown()
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
