"""Fetch one file over HTTP(S) so that a failure can never leave a partial or wrong file under its final name.

HTTP is the standard library's urllib/http.client, not requests or httpx: gpt2cy then needs nothing but numpy at
run time, and urllib already does what this needs (HTTPS with the system's certificates, HTTPS_PROXY/NO_PROXY,
redirects, socket timeouts) while leaving every status code, Range and Content-Range header to this module.
One stream per file keeps the resume rule simple enough to test exhaustively; parallel ranged parts (ollama uses
16), which help where the bucket is slow per stream, are not done here.

The rules, per file (`fetch`):
- Any status but 200 or 206 fails; 5xx, 408 and 429 are retried first. An error page is never saved.
- Bytes go to `<file>.incomplete` beside the target. The caller holds the model's lock (`FileLock`), so no other
  process writes that name; it is the process-unique temp file.
- A dropped connection, short body or timeout is retried (bounded, exponential backoff) and resumes with
  `Range: bytes=N-`. Only a 206 whose Content-Range starts at N and names the expected total is appended; a 200
  means the server ignored the range, so the file restarts from zero.
- The size must equal Content-Length and, when the caller knows it (the official bucket), the published size;
  `sha256` is checked when given, and so is an MD5 the server states (Content-MD5 or Azure's
  x-ms-blob-content-md5, hashed while streaming). Then fsync, atomic rename, fsync of the directory.
- Nothing ever touches `<file>` but the final rename: a file already under the final name stays exactly as it
  was until the rename replaces it with a whole, checked one.
- Ctrl-C, and transient failures that outlast the retries, keep `<file>.incomplete` (with a notice saying so):
  its bytes are a prefix of what the server sent for this URL, so the next fetch resumes it with a Range
  request (as it does the leftover of a killed process). The resumed bytes are proved as a whole by the size
  checks, the server's MD5, the sha256 or the checkpoint's CRC32C verification that follows a model download,
  and the caller's lock keeps two processes from writing the same partial file. Any other failure (a bad
  status, a web page, a size or checksum mismatch, a local write error) removes it.
- Errors writing locally (disk full) fail at once; they are not mistaken for network trouble and retried.
- `GPT2CY_OFFLINE=1` makes `fetch` refuse before any socket is opened.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import math
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..errors import DownloadError
from ..notices import notice
from .progress import FileProgress

PARTIAL_SUFFIX = ".incomplete"
CHUNK = 1 << 20                # bytes per read: large enough for ~GB/s, small enough for a smooth bar
MAX_BACKOFF_S = 30.0
MAX_ATTEMPTS_WITH_PROGRESS = 100  # a link that drops every few MB may still finish; one that never moves may not

_TRUE = ("1", "true", "yes", "on")


def offline_env() -> bool:
    """True when GPT2CY_OFFLINE is set to 1/true/yes/on."""
    return os.environ.get("GPT2CY_OFFLINE", "").strip().lower() in _TRUE


def _env_number(name: str, default, kind):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise DownloadError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0 or not math.isfinite(value):
        raise DownloadError(f"{name}={raw!r} must be a finite number, not negative")
    return value


@dataclass(frozen=True)
class HttpSettings:
    """timeout: seconds a connect or a read may stall; retries: failed attempts in a row (without a byte of
    progress) before giving up; backoff: first wait in seconds, doubled per failure, capped at 30 s."""
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0

    @classmethod
    def from_env(cls) -> "HttpSettings":
        """Defaults overridden by GPT2CY_HTTP_TIMEOUT, GPT2CY_HTTP_RETRIES, GPT2CY_HTTP_BACKOFF."""
        return cls(timeout=_env_number("GPT2CY_HTTP_TIMEOUT", cls.timeout, float) or cls.timeout,
                   retries=_env_number("GPT2CY_HTTP_RETRIES", cls.retries, int),
                   backoff=_env_number("GPT2CY_HTTP_BACKOFF", cls.backoff, float))


class _Retry(Exception):
    """A transient failure: retry the request (resuming); `progressed` = the partial file grew past its size
    before this attempt (a restart that falls short again is no progress)."""

    def __init__(self, reason: str, progressed: bool = False):
        super().__init__(reason)
        self.progressed = progressed


# --- locking --------------------------------------------------------------------------------------------------

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


class FileLock:
    """An exclusive advisory lock on `path` (created if missing), held for the `with` block.

    flock locks belong to the open file, so two threads of one process exclude each other as two processes do.
    The lock dies with its process: a killed download never leaves a stale lock. `on_wait()` is called once if
    another holder makes us wait.
    """

    def __init__(self, path: str, on_wait=None):
        self.path = path
        self.on_wait = on_wait
        self._fd = None

    def __enter__(self):
        waited = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._try(fd):
                    if self.on_wait is not None and not waited:
                        self.on_wait()
                    waited = True
                    self._wait(fd)
                if self._still_at_path(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)            # the holder removed the file before letting go (remove()): lock the new one
        self._fd = fd
        return self

    def _still_at_path(self, fd) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        here = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)

    def remove(self) -> None:
        """Delete the lock file while holding it (a waiter then locks a new file, never this one)."""
        try:
            os.unlink(self.path)
        except OSError:
            pass

    @staticmethod
    def _try(fd) -> bool:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    @classmethod
    def _wait(cls, fd) -> None:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        while not cls._try(fd):
            time.sleep(0.2)

    def __exit__(self, *exc):
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        finally:
            os.close(fd)


# --- HTTP -----------------------------------------------------------------------------------------------------

class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs (urllib would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")):
            raise DownloadError(f"{req.full_url}: redirected to a non-HTTP URL ({newurl})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # No FileHandler/FTPHandler/DataHandler: a model URL is http(s) and nothing else.
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirects(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")


def _user_agent() -> str:
    from .. import __version__
    return f"gpt2cy/{__version__}"


def fetch(url: str, dest: str, *, expected_size: int | None = None, sha256: str | None = None,
          settings: HttpSettings | None = None, progress: FileProgress | None = None, check=None) -> int:
    """Download `url` to the file `dest` (atomically) and return its size in bytes.

    expected_size: the published size, when known; a server that disagrees fails the download.
    sha256: hex digest the finished file must have, when known. (An MD5 the server sends in Content-MD5 or
        x-ms-blob-content-md5, as Azure does, is checked too.)
    settings: timeouts/retries/backoff (default HttpSettings.from_env()).
    progress: a FileProgress to report to (default: a new one labelled with the file name).
    check: called with the finished temp file's path before the rename; raise DownloadError to reject it.
    The caller must hold a FileLock covering `dest` (hub.download_models does). A `dest + '.incomplete'` left
    by an interrupted or killed run is resumed. Raises DownloadError; on any failure, and on Ctrl-C, `dest` is
    untouched; the partial file is kept for a resume after Ctrl-C or when the retries ran out, else removed.
    """
    if offline_env():
        raise DownloadError(f"GPT2CY_OFFLINE is set: refusing to fetch {url}")
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs can be downloaded")
    job = _Transfer(url, dest + PARTIAL_SUFFIX, expected_size, settings or HttpSettings.from_env(),
                    progress or FileProgress(os.path.basename(dest)))
    try:
        size = job.run()
        if sha256 is not None:
            digest = _file_digest(job.partial, hashlib.sha256())
            if digest != sha256.lower():
                raise DownloadError(f"{url}: sha256 {digest} does not match the published {sha256}")
        if check is not None:
            check(job.partial)
        try:
            os.replace(job.partial, dest)  # atomic: `dest` is the old file or the new one, never neither
        except OSError as e:
            raise _RenameFailed(f"cannot move {job.partial} to {dest}: {e.strerror or e}") from None
    except _RenameFailed as e:
        job.progress.close()
        _remove(job.partial)
        raise DownloadError(str(e)) from None
    except OSError as e:  # a local failure: disk full, permissions, a vanished directory
        job.progress.close()
        _remove(job.partial)
        raise DownloadError(f"cannot write {job.partial}: {e.strerror or e}") from None
    except _GaveUp as e:  # the network failed us, not the bytes: keep them for the next run to resume
        job.progress.close()
        _kept(job.partial, "the next download resumes from there")
        err = DownloadError(str(e))
        err.resumable = True  # callers that clean up (a staged download) keep the partial file too
        raise err from None
    except KeyboardInterrupt:
        job.progress.close()
        _kept(job.partial, "run the same command again to resume")
        raise
    except BaseException:
        job.progress.close()
        _remove(job.partial)
        raise
    # The new file is in place; nothing from here on may remove it or turn the download into a failure.
    _fsync_dir(os.path.dirname(os.path.abspath(dest)))
    job.progress.finish()
    return size


class _RenameFailed(Exception):
    """Internal: the final rename failed (the partial file is removed; `dest` is untouched)."""


class _GaveUp(Exception):
    """Internal: transient failures (connection, timeout, 5xx) outlasted the retries; the partial file holds
    only bytes the server sent for this file, so it is kept to be resumed."""


def _kept(partial: str, then: str) -> None:
    """Say that a partial download stays on disk (or remove an empty one)."""
    try:
        size = os.path.getsize(partial)
    except OSError:
        return
    if size == 0:
        _remove(partial)
        return
    from .progress import format_bytes
    notice(f"download stopped; kept the {format_bytes(size)} already fetched in {partial}: {then}")


class _Transfer:
    """The state of one file's download across attempts: what the server has promised, and what is on disk."""

    def __init__(self, url, partial, expected_size, settings, progress):
        self.url, self.partial, self.settings, self.progress = url, partial, settings, progress
        self.expected_size = expected_size
        self.total = expected_size  # the file's full size, once anyone has told us
        self.md5 = None             # the whole file's MD5 as the server states it (raw 16 bytes)
        self.hasher = None          # MD5 of the partial file's first `hashed` bytes
        self.hashed = 0
        self.opener = _opener()

    def run(self) -> int:
        """Attempt, retry and resume until the partial file is whole; return its size."""
        failures = attempts = 0
        while True:
            attempts += 1
            try:
                self._attempt()
                break
            except _Retry as e:
                failures = 0 if e.progressed else failures + 1
                if failures > self.settings.retries or attempts >= MAX_ATTEMPTS_WITH_PROGRESS:
                    raise _GaveUp(f"{self.url}: {e} (gave up after {attempts} attempts)") from None
                delay = min(MAX_BACKOFF_S, self.settings.backoff * 2 ** max(0, failures - 1))
                self.progress.close()             # end a half-drawn bar's line before the notice
                notice(f"{self.progress.label}: {e}; retrying in {delay:.1f} s")
                time.sleep(delay)
        size = os.path.getsize(self.partial)
        if self.total is not None and size != self.total:  # unreachable unless the file changed under us
            raise DownloadError(f"{self.url}: got {size} bytes, expected {self.total}")
        if self.md5 is not None:
            if self.hasher is None or self.hashed != size:
                self._rehash(size)
            if self.hasher.digest() != self.md5:
                raise DownloadError(f"{self.url}: MD5 {self.hasher.hexdigest()} does not match the server's "
                                    f"{self.md5.hex()}")
        return size

    def _rehash(self, upto: int) -> None:
        self.hasher, self.hashed = hashlib.md5(), 0
        with open(self.partial, "rb") as f:
            while self.hashed < upto:
                block = f.read(min(CHUNK, upto - self.hashed))
                if not block:
                    break
                self.hasher.update(block)
                self.hashed += len(block)

    def _attempt(self) -> None:
        """One request: append to (or restart) the partial file until the body ends."""
        url, partial, total = self.url, self.partial, self.total
        offset = os.path.getsize(partial) if os.path.exists(partial) else 0
        if total is not None and offset > total:  # a leftover longer than the file: not ours to resume
            _remove(partial)
            offset = 0
        if total is not None and offset == total and offset > 0:
            self.progress.start(total, total)
            return  # a leftover partial that is already whole: the caller's checks decide
        req = urllib.request.Request(url, headers={"User-Agent": _user_agent(), "Accept-Encoding": "identity"})
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        try:
            resp = self.opener.open(req, timeout=self.settings.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:  # our partial does not fit the file any more: start again
                _remove(partial)
                raise _Retry("the server rejected the resume range; restarting") from None
            if e.code in (408, 429) or e.code >= 500:
                raise _Retry(f"HTTP {e.code} {e.reason}") from None
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, socket.gaierror):  # no name resolution: retrying for half a minute won't help
                host = urllib.parse.urlsplit(url).hostname
                raise DownloadError(f"{url}: cannot resolve {host} ({e.reason.strerror}); check the network "
                                    "connection") from None
            raise _Retry(f"cannot connect ({e.reason})") from None
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(f"connection failed ({e or type(e).__name__})") from None
        with resp:
            start = self._check_response(resp, offset)
            self._receive(resp, start, offset, _content_length(url, resp))

    def _check_response(self, resp, offset) -> int:
        """Validate status, type, sizes and checksum headers; return the byte the body starts at."""
        url, status = self.url, resp.status
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if status not in (200, 206):
            raise DownloadError(f"{url}: HTTP {status} {resp.reason} (expected 200)")
        if ctype.startswith(("text/html", "application/xhtml")):
            raise DownloadError(f"{url}: the server sent a web page ({ctype}), not the file")
        length = _content_length(url, resp)
        if status == 200:
            start, body_total = 0, length
        else:
            start, body_total = _check_content_range(url, resp, offset, length)
        if self.expected_size is not None and body_total is not None and body_total != self.expected_size:
            raise DownloadError(f"{url}: the server says {body_total} bytes, the published size is "
                                f"{self.expected_size}")
        if self.total is not None and body_total is not None and body_total != self.total:
            raise DownloadError(f"{url}: the file's size changed from {self.total} to {body_total} bytes "
                                f"during the download")
        self.total = body_total if body_total is not None else self.total
        # Content-MD5 covers the body, so only a 200's describes the file; Azure's own header always does.
        md5 = _md5_header(url, resp.headers.get("x-ms-blob-content-md5")) or \
            (_md5_header(url, resp.headers.get("Content-MD5")) if status == 200 else None)
        if md5 is not None:
            if self.md5 is not None and md5 != self.md5:
                raise DownloadError(f"{url}: the file changed on the server during the download (MD5)")
            self.md5 = md5
        return start

    def _receive(self, resp, start, offset, length) -> None:
        """Stream the body into the partial file from byte `start`, hashing as it goes when an MD5 is known."""
        written = 0
        self.progress.start(start, self.total)
        with open(self.partial, "ab" if start else "wb") as f:  # local OSErrors (disk full) are not retried
            if start:
                f.truncate(start)  # offset == start was checked; be explicit anyway
            if self.md5 is not None and (self.hasher is None or self.hashed != start):
                f.flush()
                self._rehash(start)
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, bad chunking
                    raise _Retry(f"connection lost after {start + written} bytes ({e or type(e).__name__})",
                                 progressed=start + written > offset) from None
                if not chunk:
                    break
                f.write(chunk)
                if self.md5 is not None:
                    self.hasher.update(chunk)
                    self.hashed += len(chunk)
                written += len(chunk)
                self.progress.advance(len(chunk))
            f.flush()
            if length is not None and written != length:
                raise _Retry(f"connection closed after {start + written} of {start + length} bytes",
                             progressed=start + written > offset)
            os.fsync(f.fileno())
        if self.total is None:
            self.total = start + written


def _md5_header(url, raw):
    """The 16 raw bytes of a base64 MD5 header, or None when absent."""
    if raw is None:
        return None
    try:
        digest = base64.b64decode(raw.strip(), validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 16:
        raise DownloadError(f"{url}: malformed MD5 header {raw!r}")
    return digest


def _content_length(url, resp):
    raw = resp.headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise DownloadError(f"{url}: invalid Content-Length {raw!r}")
    return int(raw)


def _check_content_range(url, resp, offset, length):
    """Validate a 206: it must continue exactly at `offset` and run to the file's end."""
    raw = resp.headers.get("Content-Range") or ""
    m = _CONTENT_RANGE.match(raw)
    if not offset or m is None:
        raise DownloadError(f"{url}: 206 response with unusable Content-Range {raw!r} (asked from byte {offset})")
    first, last, full = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if first != offset or last != full - 1 or (length is not None and length != last - first + 1):
        raise DownloadError(f"{url}: Content-Range {raw!r} does not continue at byte {offset}")
    return first, full


def _file_digest(path: str, h) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
