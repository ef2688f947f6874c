"""A loopback HTTP file server for the download tests, with the faults real servers and networks produce.

    with ModelServer(root) as srv:            # serves root/<SIZE>/<FILE> at srv.base_url/<SIZE>/<FILE>
        srv.set_mode("model.ckpt.index", "drop_once")
        ...                                   # srv.requests: what was asked for and what was sent

Modes (per file name, or "*" for every file; several may be combined):
  normal        200, or 206 for `Range: bytes=N-`, 416 past the end
  404, 500      that status with a short text body
  truncate      the file appears cut at half its size: bytes past it are never sent, though promised
  drop_once     the first response for the file stops half way and closes the connection; later ones are whole
  drop_every    every response stops after `drop_every` bytes and closes the connection
  cl_bigger     Content-Length claims 1000 bytes more than the file has (ranges too), then the connection closes
  cl_smaller    Content-Length claims 1000 bytes fewer than the file has, and the whole file is sent
  ignore_range  always 200 with the whole file, whatever Range says
  wrong_range   answer `Range: bytes=N-` with a 206 for the whole file (Content-Range bytes 0-...)
  stall         send the headers and 1 KiB, then go silent for `stall_s` seconds (or until the server stops)
  html200       200 with a small HTML error page (text/html)
  html_octet    the same page, labelled application/octet-stream
  slow          sleep `slow_s` between 64 KiB chunks (to make concurrent clients overlap)
  md5           send the file's MD5 as Azure does: x-ms-blob-content-md5 always, Content-MD5 on a 200
  md5_bad       send a wrong x-ms-blob-content-md5
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Error</title></head>"
             b"<body><h1>The specified blob does not exist.</h1></body></html>\n")
_RANGE = re.compile(r"^bytes=(\d+)-$")
_CHUNK = 64 * 1024


class ModelServer:
    """ThreadingHTTPServer on 127.0.0.1, port chosen by the OS, run in a daemon thread."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self.modes = {}            # file name or "*" -> set of modes
        self.requests = []         # one dict per request: path, name, range, status, sent (body bytes)
        self.stall_s = 10.0
        self.slow_s = 0.0
        self.drop_every = 50_000
        self._dropped = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self._thread = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def set_mode(self, name: str, *modes: str) -> None:
        """Give file `name` (or "*") these fault modes; no modes = normal."""
        with self._lock:
            self.modes[name] = set(modes)

    def modes_for(self, name: str) -> set:
        with self._lock:
            return set(self.modes.get(name, set())) | set(self.modes.get("*", set()))

    def served(self, name: str | None = None) -> list:
        """The request records (for one file name, or all)."""
        with self._lock:
            return [dict(r) for r in self.requests if name is None or r["name"] == name]

    def bytes_sent(self, name: str) -> int:
        return sum(r["sent"] for r in self.served(name))

    def start(self) -> "ModelServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _record(self, rec: dict) -> dict:
        with self._lock:
            self.requests.append(rec)
        return rec

    def _first_drop(self, name: str) -> bool:
        with self._lock:
            if name in self._dropped:
                return False
            self._dropped.add(name)
            return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv: ModelServer = self.server.owner
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        rec = srv._record({"path": "/" + rel, "name": name, "range": self.headers.get("Range"),
                           "status": None, "sent": 0})
        modes = srv.modes_for(name)
        full = os.path.realpath(os.path.join(srv.root, rel))
        if "404" in modes or not full.startswith(srv.root + os.sep) or not os.path.isfile(full):
            return self._simple(rec, 404, b"not found\n")
        if "500" in modes:
            return self._simple(rec, 500, b"internal error\n")
        if modes & {"html200", "html_octet"}:
            ctype = "text/html; charset=utf-8" if "html200" in modes else "application/octet-stream"
            return self._simple(rec, 200, HTML_PAGE, ctype)
        with open(full, "rb") as f:
            data = f.read()
        size = len(data)
        claimed = size + 1000 if "cl_bigger" in modes else size
        available = size // 2 if "truncate" in modes else size  # bytes this server will ever send

        start = 0
        m = _RANGE.match(rec["range"] or "")
        if m and "wrong_range" in modes:
            rec["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{size - 1}/{size}")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(data)
            rec["sent"] = size
            return
        if m and "ignore_range" not in modes:
            start = int(m.group(1))
            if start >= claimed:
                rec["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{claimed}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        status = 206 if start else 200
        length = claimed - start
        if "cl_smaller" in modes and not start:
            length = size - 1000
        stop = min(available, start + length)   # exclusive end of what is really sent
        if "cl_smaller" in modes:
            stop = available  # more than promised; the connection then closes
        if "drop_once" in modes and srv._first_drop(name):
            stop = min(stop, start + (size - start) // 2)
        if "drop_every" in modes:
            stop = min(stop, start + srv.drop_every)
        closing = stop < start + length or bool(modes & {"stall", "cl_smaller"})

        rec["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{claimed - 1}/{claimed}")
        if modes & {"md5", "md5_bad"}:
            digest = hashlib.md5(data if "md5" in modes else data + b"!").digest()
            self.send_header("x-ms-blob-content-md5", base64.b64encode(digest).decode())
            if status == 200 and "md5" in modes:
                self.send_header("Content-MD5", base64.b64encode(digest).decode())
        if closing:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            pos = start
            if "stall" in modes:
                piece = data[pos:min(stop, pos + 1024)]
                self.wfile.write(piece)
                self.wfile.flush()
                rec["sent"] += len(piece)
                srv._stop.wait(srv.stall_s)
                return
            while pos < stop:
                piece = data[pos:min(stop, pos + _CHUNK)]
                self.wfile.write(piece)
                rec["sent"] += len(piece)
                pos += len(piece)
                if srv.slow_s:
                    self.wfile.flush()
                    time.sleep(srv.slow_s)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine
            self.close_connection = True

    def _simple(self, rec, status, body, ctype="text/plain; charset=utf-8"):
        rec["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        rec["sent"] = len(body)
