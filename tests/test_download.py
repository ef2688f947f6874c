"""gpt2cy.hub.download.fetch against a real loopback HTTP server: every fault ends in the whole file or no file."""
import hashlib
import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from gpt2cy.hub.download import FileLock, HttpSettings, PARTIAL_SUFFIX, fetch
from gpt2cy.errors import DownloadError
from gpt2cy.notices import captured
from gpt2cy.hub.progress import FileProgress, format_bytes, format_duration

from httpserver import ModelServer

FAST = HttpSettings(timeout=0.4, retries=2, backoff=0.01)
SIZE = 300_001  # odd, several chunks of the server's 64 KiB


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "GPT2CY_OFFLINE", "GPT2CY_NO_PROGRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def blob(tmp_path):
    data = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    os.makedirs(tmp_path / "srv" / "124M")
    (tmp_path / "srv" / "124M" / "blob.bin").write_bytes(data)
    return data


@pytest.fixture
def server(tmp_path, blob):
    with ModelServer(str(tmp_path / "srv")) as srv:
        yield srv


@pytest.fixture
def dest(tmp_path):
    os.makedirs(tmp_path / "out")
    return str(tmp_path / "out" / "blob.bin")


def url(server):
    return f"{server.base_url}/124M/blob.bin"


def quiet():
    return FileProgress("blob.bin", enabled=False)


def leftovers(dest):
    return sorted(os.listdir(os.path.dirname(dest)))


def assert_nothing_saved(dest):
    assert leftovers(dest) == []


# --- the normal path -----------------------------------------------------------------------------------------

def test_fetch_whole_file(server, blob, dest, capsys):
    assert fetch(url(server), dest, settings=FAST) == SIZE
    assert open(dest, "rb").read() == blob
    assert leftovers(dest) == ["blob.bin"]
    [req] = server.served("blob.bin")
    assert (req["status"], req["range"], req["sent"]) == (200, None, SIZE)
    err = capsys.readouterr().err  # not a TTY: one plain line for the file
    assert err.count("\n") == 1 and "blob.bin" in err and "293.0 KiB" in err


def test_published_size_and_sha256_accepted(server, blob, dest):
    fetch(url(server), dest, expected_size=SIZE, sha256=hashlib.sha256(blob).hexdigest(), settings=FAST,
          progress=quiet())
    assert open(dest, "rb").read() == blob


# --- bad statuses and bad bodies: no file, a clear error ----------------------------------------------------

def test_404_fails_at_once(server, dest):
    server.set_mode("blob.bin", "404")
    with pytest.raises(DownloadError, match=r"blob\.bin: HTTP 404"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert len(server.served("blob.bin")) == 1  # not retried
    assert_nothing_saved(dest)


def test_500_is_retried_then_fails(server, dest):
    server.set_mode("blob.bin", "500")
    with pytest.raises(DownloadError, match=r"HTTP 500.*gave up after 3 attempts"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert len(server.served("blob.bin")) == FAST.retries + 1
    assert_nothing_saved(dest)


def test_retries_back_off_exponentially(server, dest, monkeypatch):
    import gpt2cy.hub.download as download
    waits = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    server.set_mode("blob.bin", "500")
    with pytest.raises(DownloadError, match=r"HTTP 500.*gave up after 5 attempts"):
        fetch(url(server), dest, settings=HttpSettings(timeout=0.4, retries=4, backoff=16.0), progress=quiet())
    assert waits == [16.0, 30.0, 30.0, 30.0]   # doubled per failure, capped at 30 s
    waits.clear()
    with pytest.raises(DownloadError):
        fetch(url(server), dest, settings=HttpSettings(timeout=0.4, retries=3, backoff=0.5), progress=quiet())
    assert waits == [0.5, 1.0, 2.0]
    assert_nothing_saved(dest)


def test_error_keeps_existing_file(server, blob, dest):
    with open(dest, "wb") as f:
        f.write(b"old")
    server.set_mode("blob.bin", "404")
    with pytest.raises(DownloadError):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == b"old"
    assert leftovers(dest) == ["blob.bin"]


class _Interrupt(FileProgress):
    def advance(self, n):
        super().advance(n)
        raise KeyboardInterrupt


def _reject(path):
    raise DownloadError("rejected by the caller's check")


# Each way a download can fail after the server answered, most after the whole body arrived: the file already
# under the final name must come out of it byte for byte. Beside it, only a partial file of the server's own
# bytes may stay, and only where the failure was the network's (retries ran out) or the user's (Ctrl-C): the
# next fetch resumes it. A failure of the bytes themselves leaves nothing.
AFTER_THE_BODY = {
    "sha256 mismatch": (set(), dict(sha256="0" * 64), DownloadError, r"sha256 .* does not match", False),
    "size mismatch": ({"cl_bigger"}, {}, DownloadError, r"connection closed after 300001 of 301001 bytes", True),
    "server MD5 mismatch": ({"md5_bad"}, {}, DownloadError, r"MD5 .* does not match the server's", False),
    "caller's check": (set(), dict(check=_reject), DownloadError, r"rejected by the caller's check", False),
    "truncated body": ({"truncate"}, {}, DownloadError, r"connection closed after 150000", True),
    "rename fails": (set(), {}, DownloadError, r"cannot move .*blob\.bin\.incomplete to .*blob\.bin: ", False),
    "Ctrl-C in the body": ({"slow"}, dict(progress=_Interrupt("blob.bin", enabled=False)), KeyboardInterrupt, None,
                           True),
}


@pytest.mark.parametrize("case", list(AFTER_THE_BODY))
def test_failure_after_the_body_keeps_existing_file(server, blob, dest, monkeypatch, case):
    import errno
    import gpt2cy.hub.download as download
    modes, kwargs, exc, match, kept = AFTER_THE_BODY[case]
    with open(dest, "wb") as f:
        f.write(b"the good old file")
    server.set_mode("blob.bin", *modes)

    def no_rename(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src)
    with monkeypatch.context() as m:
        if case == "rename fails":
            m.setattr(download.os, "replace", no_rename)
        with pytest.raises(exc, match=match):
            fetch(url(server), dest, settings=FAST, **{"progress": quiet(), **kwargs})
    assert open(dest, "rb").read() == b"the good old file"
    assert leftovers(dest) == (["blob.bin", "blob.bin" + PARTIAL_SUFFIX] if kept else ["blob.bin"])
    if kept:
        part = open(dest + PARTIAL_SUFFIX, "rb").read()
        assert 0 < len(part) and blob.startswith(part)        # only the server's bytes, ready to resume
    assert server.served("blob.bin")[0]["sent"] > 0          # the failure came after bytes arrived
    server.set_mode("blob.bin")                              # and the next fetch replaces it whole
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    assert leftovers(dest) == ["blob.bin"]


def assert_only_a_resumable_prefix(dest, blob, size):
    """Nothing under the final name; the partial file holds the server's first `size` bytes (kept because
    the retries ran out on a network failure, for the next fetch to resume)."""
    assert leftovers(dest) == [os.path.basename(dest) + PARTIAL_SUFFIX]
    assert open(dest + PARTIAL_SUFFIX, "rb").read() == blob[:size]


def test_truncated_body_fails(server, blob, dest):
    server.set_mode("blob.bin", "truncate")
    with pytest.raises(DownloadError, match=r"connection closed after 150000 of 300001 bytes"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    reqs = server.served("blob.bin")
    # the first attempt made progress; then retries + 1 attempts in a row that made none
    assert [r["range"] for r in reqs] == [None] + ["bytes=150000-"] * (FAST.retries + 1)
    assert_only_a_resumable_prefix(dest, blob, 150000)


def test_content_length_bigger_than_file_fails(server, blob, dest):
    server.set_mode("blob.bin", "cl_bigger")
    with pytest.raises(DownloadError, match=r"gave up"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert_only_a_resumable_prefix(dest, blob, SIZE)


def test_content_length_smaller_than_published_fails(server, dest):
    server.set_mode("blob.bin", "cl_smaller")
    with pytest.raises(DownloadError, match=r"says 299001 bytes, the published size is 300001"):
        fetch(url(server), dest, expected_size=SIZE, settings=FAST, progress=quiet())
    assert_nothing_saved(dest)


def test_content_length_smaller_caught_by_check(server, dest):
    server.set_mode("blob.bin", "cl_smaller")

    def check(path):
        if os.path.getsize(path) != SIZE:
            raise DownloadError("wrong size")
    with pytest.raises(DownloadError, match="wrong size"):
        fetch(url(server), dest, settings=FAST, progress=quiet(), check=check)
    assert_nothing_saved(dest)


def test_html_error_page_is_never_saved(server, dest):
    server.set_mode("blob.bin", "html200")
    with pytest.raises(DownloadError, match=r"sent a web page \(text/html"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert_nothing_saved(dest)


def test_html_page_labelled_binary_fails_size_check(server, dest):
    server.set_mode("blob.bin", "html_octet")
    with pytest.raises(DownloadError, match=r"the published size is 300001"):
        fetch(url(server), dest, expected_size=SIZE, settings=FAST, progress=quiet())
    assert_nothing_saved(dest)


def test_sha256_mismatch_fails(server, dest):
    with pytest.raises(DownloadError, match="sha256"):
        fetch(url(server), dest, sha256="0" * 64, settings=FAST, progress=quiet())
    assert_nothing_saved(dest)


def test_stall_times_out(server, dest):
    server.set_mode("blob.bin", "stall")
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out.*gave up after 3 attempts"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert time.monotonic() - t0 < server.stall_s  # gave up on the timeout, not when the server woke
    assert_nothing_saved(dest)


def test_bad_content_range_fails(server, dest):
    with open(dest + PARTIAL_SUFFIX, "wb") as f:
        f.write(b"x" * 1000)
    server.set_mode("blob.bin", "wrong_range")
    with pytest.raises(DownloadError, match=r"does not continue at byte 1000"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert_nothing_saved(dest)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_not_retried(server, dest):
    os.symlink("/dev/full", dest + PARTIAL_SUFFIX)  # every write fails with ENOSPC
    with pytest.raises(DownloadError, match=r"cannot write .*blob\.bin\.incomplete: No space left on device"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert len(server.served("blob.bin")) == 1
    assert_nothing_saved(dest)


def test_cannot_connect(tmp_path, dest):
    srv = ModelServer(str(tmp_path))
    port_url = f"{srv.base_url}/124M/blob.bin"
    srv.httpd.server_close()  # the port is closed: connection refused
    with pytest.raises(DownloadError, match="cannot connect"):
        fetch(port_url, dest, settings=FAST, progress=quiet())
    assert_nothing_saved(dest)


def test_unresolvable_host_fails_at_once(monkeypatch, dest):
    import socket
    calls = []

    def no_dns(*args, **kwargs):
        calls.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DownloadError, match=r"cannot resolve models\.example \(Name or service not known\); check the network"):
        fetch("http://models.example/124M/blob.bin", dest, settings=FAST, progress=quiet())
    assert calls == ["models.example"]  # not retried: a missing network does not come back in seconds
    assert_nothing_saved(dest)


def test_only_http_urls(dest):
    with pytest.raises(DownloadError, match="only http"):
        fetch("file:///etc/passwd", dest, settings=FAST, progress=quiet())


def test_offline_opens_no_connection(server, dest, monkeypatch):
    monkeypatch.setenv("GPT2CY_OFFLINE", "1")
    with pytest.raises(DownloadError, match="GPT2CY_OFFLINE"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert server.served() == []
    assert_nothing_saved(dest)


# --- resume ------------------------------------------------------------------------------------------------------

def test_dropped_connection_resumes_with_only_the_rest(server, blob, dest):
    server.set_mode("blob.bin", "drop_once")
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    first, second = server.served("blob.bin")
    half = SIZE // 2
    assert (first["status"], first["range"], first["sent"]) == (200, None, half)
    assert (second["status"], second["range"], second["sent"]) == (206, f"bytes={half}-", SIZE - half)
    assert server.bytes_sent("blob.bin") == SIZE
    assert leftovers(dest) == ["blob.bin"]


def test_many_drops_each_resume_where_the_last_stopped(server, blob, dest):
    server.set_mode("blob.bin", "drop_every")
    server.drop_every = 40_000
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    starts = list(range(0, SIZE, 40_000))
    assert [r["range"] for r in server.served("blob.bin")] == [None] + [f"bytes={n}-" for n in starts[1:]]
    assert server.bytes_sent("blob.bin") == SIZE


def test_retries_are_reported(server, blob, dest):
    out = io.StringIO()
    server.set_mode("blob.bin", "drop_once")
    with captured() as said:                   # a retry is a notice (gpt2cy.notices), the bar only counts bytes
        fetch(url(server), dest, settings=FAST, progress=FileProgress("124M/blob.bin", stream=out))
    assert said == ["124M/blob.bin: connection closed after 150000 of 300001 bytes; retrying in 0.0 s"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("gpt2cy: 124M/blob.bin  293.0 KiB in ") and len(lines) == 1


def test_server_ignoring_range_restarts_from_zero(server, blob, dest):
    server.set_mode("blob.bin", "drop_once", "ignore_range")
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    first, second = server.served("blob.bin")
    assert second["range"] == f"bytes={SIZE // 2}-" and second["status"] == 200 and second["sent"] == SIZE


def test_leftover_partial_of_a_killed_process_is_resumed(server, blob, dest):
    n = 123_456
    with open(dest + PARTIAL_SUFFIX, "wb") as f:
        f.write(blob[:n])
    fetch(url(server), dest, expected_size=SIZE, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    [req] = server.served("blob.bin")
    assert (req["range"], req["status"], req["sent"]) == (f"bytes={n}-", 206, SIZE - n)
    assert leftovers(dest) == ["blob.bin"]


def test_leftover_longer_than_published_is_discarded(server, blob, dest):
    with open(dest + PARTIAL_SUFFIX, "wb") as f:
        f.write(b"y" * (SIZE + 10))
    fetch(url(server), dest, expected_size=SIZE, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    [req] = server.served("blob.bin")
    assert req["range"] is None


def test_leftover_of_unknown_file_past_the_end_restarts(server, blob, dest):
    with open(dest + PARTIAL_SUFFIX, "wb") as f:
        f.write(b"z" * (SIZE + 5))
    fetch(url(server), dest, settings=FAST, progress=quiet())  # 416, then a fresh GET
    assert open(dest, "rb").read() == blob
    assert [r["status"] for r in server.served("blob.bin")] == [416, 200]


def test_ctrl_c_keeps_the_partial_file_and_the_next_fetch_resumes(server, blob, dest):
    class Interrupting(FileProgress):
        def advance(self, n):
            super().advance(n)
            raise KeyboardInterrupt
    server.set_mode("blob.bin", "truncate")                  # the first read gets half the file
    with captured() as notes, pytest.raises(KeyboardInterrupt):
        fetch(url(server), dest, settings=FAST, progress=Interrupting("blob.bin", enabled=False))
    assert leftovers(dest) == ["blob.bin" + PARTIAL_SUFFIX]
    n = os.path.getsize(dest + PARTIAL_SUFFIX)
    assert n == SIZE // 2 and blob.startswith(open(dest + PARTIAL_SUFFIX, "rb").read())
    assert any("kept" in m and "run the same command again to resume" in m for m in notes)
    server.set_mode("blob.bin")
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob and leftovers(dest) == ["blob.bin"]
    last = server.served("blob.bin")[-1]
    assert (last["range"], last["status"], last["sent"]) == (f"bytes={n}-", 206, SIZE - n)


def test_retries_running_out_keep_the_partial_file(server, blob, dest):
    server.set_mode("blob.bin", "truncate")                  # half the file, then nothing more, ever
    tight = HttpSettings(timeout=0.4, retries=0, backoff=0.01)
    with pytest.raises(DownloadError, match="gave up") as e:
        fetch(url(server), dest, settings=tight, progress=quiet())
    assert getattr(e.value, "resumable", False)
    n = os.path.getsize(dest + PARTIAL_SUFFIX)
    assert n == SIZE // 2 and blob.startswith(open(dest + PARTIAL_SUFFIX, "rb").read())
    server.set_mode("blob.bin")
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    assert server.served("blob.bin")[-1]["range"] == f"bytes={n}-"


@pytest.mark.parametrize("modes", [("md5",), ("md5", "drop_once"), ("md5", "drop_once", "ignore_range")])
def test_server_md5_is_checked_across_resumes(server, blob, dest, modes):
    server.set_mode("blob.bin", *modes)
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob


def test_wrong_server_md5_fails(server, dest):
    server.set_mode("blob.bin", "md5_bad")
    with pytest.raises(DownloadError, match=r"MD5 [0-9a-f]{32} does not match the server's"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert_nothing_saved(dest)


def test_resumed_leftover_is_proved_by_md5(server, blob, dest):
    n = 100_000
    with open(dest + PARTIAL_SUFFIX, "wb") as f:
        f.write(blob[:n])
    server.set_mode("blob.bin", "md5")
    fetch(url(server), dest, settings=FAST, progress=quiet())
    assert open(dest, "rb").read() == blob
    with open(dest + PARTIAL_SUFFIX, "wb") as f:  # a leftover whose bytes are not the file's
        f.write(b"\0" * n)
    with pytest.raises(DownloadError, match="MD5"):
        fetch(url(server), dest, settings=FAST, progress=quiet())
    assert leftovers(dest) == ["blob.bin"]


# --- lock ----------------------------------------------------------------------------------------------------

def test_lock_excludes_threads(tmp_path):
    path = str(tmp_path / ".lock")
    order, waited = [], []
    first_in = threading.Event()

    def holder():
        with FileLock(path):
            first_in.set()
            order.append("a-in")
            time.sleep(0.3)
            order.append("a-out")

    def waiter():
        first_in.wait()
        with FileLock(path, on_wait=lambda: waited.append(True)):
            order.append("b-in")
    ts = [threading.Thread(target=holder), threading.Thread(target=waiter)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert order == ["a-in", "a-out", "b-in"] and waited == [True]


def test_a_waiter_locks_a_new_file_when_the_holder_removed_it(tmp_path):
    """A failed first download removes its lock file (and folder) while holding it: whoever waited on the
    removed file must lock the file now at the path, or a third comer would hold a lock of its own."""
    pytest.importorskip("fcntl")
    path = str(tmp_path / ".lock")
    first_in, got = threading.Event(), []

    def holder():
        with FileLock(path):
            first_in.set()
            time.sleep(0.3)                           # the waiter has opened the file and blocks on it
            os.unlink(path)                           # as FileLock.remove() does

    def waiter():
        first_in.wait()
        with FileLock(path) as lock:
            st, here = os.stat(path), os.fstat(lock._fd)
            got.append((st.st_ino, st.st_dev) == (here.st_ino, here.st_dev))
    ts = [threading.Thread(target=holder), threading.Thread(target=waiter)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert got == [True]


def test_lock_excludes_processes(tmp_path):
    path = str(tmp_path / ".lock")
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except OSError:\n    print('held')\n")
    pytest.importorskip("fcntl")
    with FileLock(path):
        held = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True).stdout
    free = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True).stdout
    assert (held.strip(), free.strip()) == ("held", "free")


# --- settings and progress -----------------------------------------------------------------------------------

def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("GPT2CY_HTTP_TIMEOUT", "2.5")
    monkeypatch.setenv("GPT2CY_HTTP_RETRIES", "0")
    monkeypatch.setenv("GPT2CY_HTTP_BACKOFF", "0.1")
    assert HttpSettings.from_env() == HttpSettings(timeout=2.5, retries=0, backoff=0.1)
    monkeypatch.setenv("GPT2CY_HTTP_RETRIES", "many")
    with pytest.raises(DownloadError, match="GPT2CY_HTTP_RETRIES='many'"):
        HttpSettings.from_env()


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_tty():
    out = FakeTTY()
    p = FileProgress("124M/data", stream=out)
    p.start(0, 4 << 20)
    p.advance(1 << 20)
    p.finish()
    text = out.getvalue()
    assert "\r" in text and "124M/data" in text and "4.0 MiB" in text and "ETA" in text
    assert text.endswith("\n") and "%" in text


def test_progress_plain_line_without_tty():
    out = io.StringIO()
    p = FileProgress("124M/data", stream=out)
    p.start(1024, 4096)
    p.advance(3072)
    p.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2cy: 124M/data  4.0 KiB in ")
    assert "resumed at 1.0 KiB" in lines[0] and "\r" not in out.getvalue()


def test_no_progress_env(monkeypatch):
    monkeypatch.setenv("GPT2CY_NO_PROGRESS", "1")
    out = FakeTTY()
    p = FileProgress("x", stream=out)
    p.start(0, 10)
    p.advance(10)
    p.finish()
    assert out.getvalue() == ""


def test_formatting():
    assert [format_bytes(n) for n in (0, 1023, 1536, 497_759_232, 6_230_444_800)] == \
        ["0 B", "1023 B", "1.5 KiB", "474.7 MiB", "5.8 GiB"]
    assert [format_duration(s) for s in (0, 59.4, 75, 3725)] == ["0:00", "0:59", "1:15", "1:02:05"]
