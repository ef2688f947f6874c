"""gpt2cy.hub.models: names, the cache, on-demand downloads from a loopback server, verification, offline mode.

A tiny random model (real vocabulary, n_embd 32) is served under the name 124M; each fault case must end with a
verified model or with no usable model, a clear error, no partial file and no incomplete file under a final name.
"""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from gpt2cy import notices
from gpt2cy.hub import models as hub
from gpt2cy.config import Config
from gpt2cy.errors import CheckpointError, DownloadError, ModelNotFound

from httpserver import ModelServer

pytest.importorskip("gpt2cy.formats.checkpoint")
testing = pytest.importorskip("gpt2cy.testing")

TINY = Config(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2)
DATA = hub.DATA_FILE


@pytest.fixture(scope="session")
def served_root(tmp_path_factory, vocab_dir):
    root = tmp_path_factory.mktemp("served")
    testing.write_random_model(str(root / "124M"), TINY, seed=3, vocab_dir=vocab_dir)
    return str(root)


@pytest.fixture(scope="session")
def source(served_root):
    """file name -> the bytes the server holds for 124M."""
    return {f: open(os.path.join(served_root, "124M", f), "rb").read() for f in hub.FILES}


@pytest.fixture
def server(served_root):
    with ModelServer(served_root) as srv:
        yield srv


@pytest.fixture(autouse=True)
def notices_on_stderr():
    """Print notices as the command line does ("gpt2cy: ..." on stderr), so the tests can read them in order
    with the progress lines; test_library_notices_are_silent_by_default checks the library's own default."""
    old = notices.set_notice_handler(notices.stderr_line)
    yield
    notices.set_notice_handler(old)


@pytest.fixture
def home(tmp_path, monkeypatch, server):
    return _env_for_home(monkeypatch, str(tmp_path / "home"), server)


def _env_for_home(monkeypatch, home, server):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "GPT2CY_OFFLINE", "GPT2CY_MODELS", "GPT2CY_NO_PROGRESS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("GPT2CY_HOME", home)
    monkeypatch.setenv("GPT2CY_BASE_URL", server.base_url)
    monkeypatch.setenv("GPT2CY_HTTP_TIMEOUT", "0.5")
    monkeypatch.setenv("GPT2CY_HTTP_RETRIES", "1")
    monkeypatch.setenv("GPT2CY_HTTP_BACKOFF", "0.01")
    return home


def cache_dir(home, size="124M"):
    return os.path.join(home, "models", size)


def assert_no_garbage(path, source):
    """Every file under a final name is whole; a partial download is left behind only as the served file's
    first bytes (the network failed, not the data: the next download resumes it)."""
    names = os.listdir(path) if os.path.isdir(path) else []
    assert not [n for n in names if n.endswith(".tmp")], names
    for n in names:
        if n.endswith(".incomplete"):
            part = open(os.path.join(path, n), "rb").read()
            assert part and source[n[:-len(".incomplete")]].startswith(part), n
    for f in hub.FILES:
        p = os.path.join(path, f)
        if os.path.exists(p):
            assert open(p, "rb").read() == source[f], f"{f} is not the served file"


def assert_usable(path, source):
    assert hub.missing_files(path) == [] and hub.is_verified(path)
    assert_no_garbage(path, source)


def assert_not_usable(path, source):
    assert hub.missing_files(path) or not hub.is_verified(path)
    assert not hub.is_verified(path)
    assert_no_garbage(path, source)


# --- names and places --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,size", [
    ("124M", "124M"), ("124m", "124M"), ("117M", "124M"), ("small", "124M"), ("GPT2", "124M"), (" gpt2 ", "124M"),
    ("355M", "355M"), ("345M", "355M"), ("medium", "355M"), ("gpt2-medium", "355M"),
    ("774M", "774M"), ("large", "774M"), ("gpt2-large", "774M"),
    ("1558M", "1558M"), ("XL", "1558M"), ("gpt2-xl", "1558M"),
])
def test_canonical_names(name, size):
    assert hub.canonical_name(name) == size


@pytest.mark.parametrize("name", ["", "gpt3", "124", "../124M", "124M/", None, 124])
def test_unknown_names(name):
    assert hub.canonical_name(name) is None


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.delenv("GPT2CY_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("GPT2CY_MODELS", raising=False)
    assert hub.cache_root() == str(tmp_path / "h" / ".cache" / "gpt2cy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert hub.cache_root() == str(tmp_path / "x" / "gpt2cy")
    monkeypatch.setenv("GPT2CY_HOME", str(tmp_path / "g"))
    assert hub.cache_root() == str(tmp_path / "g")
    assert hub.models_dir() == str(tmp_path / "g" / "models")
    monkeypatch.setenv("GPT2CY_MODELS", str(tmp_path / "m"))
    assert hub.model_path("355M") == str(tmp_path / "m" / "355M")


def test_published_sizes():
    assert hub.published_file_sizes("124M")[DATA] == 497_759_232
    assert hub.published_file_sizes("355M")[DATA] == 1_419_292_672
    assert hub.published_file_sizes("774M")[DATA] == 3_096_120_320
    assert hub.published_file_sizes("1558M")[DATA] == 6_230_444_800
    assert hub.published_file_sizes("124M")["encoder.json"] == 1_042_301
    assert hub.published_file_sizes("124M")["vocab.bpe"] == 456_318
    assert hub.published_file_sizes("124M")["hparams.json"] == 90
    assert hub.published_bytes("124M") == 497_759_232 + 5_215 + 1_042_301 + 456_318 + 90


def test_base_url(monkeypatch):
    monkeypatch.delenv("GPT2CY_BASE_URL", raising=False)
    assert hub.base_url() == "https://openaipublic.blob.core.windows.net/gpt-2/models"
    monkeypatch.setenv("GPT2CY_BASE_URL", "http://mirror.example/gpt-2/models/")
    assert hub.base_url() == "http://mirror.example/gpt-2/models"
    monkeypatch.setenv("GPT2CY_BASE_URL", "ftp://mirror.example/")
    with pytest.raises(DownloadError, match="GPT2CY_BASE_URL"):
        hub.base_url()


# --- -m PATH -----------------------------------------------------------------------------------------------------

def test_openai_layout_dir(served_root, home):
    path = os.path.join(served_root, "124M")
    assert hub.resolve_model(path) == path
    assert hub.model_layout(path) == "openai"


def test_hf_layout_dir(tmp_path, vocab_dir, home):
    path = testing.write_random_model(str(tmp_path / "hf"), TINY, fmt="safetensors", vocab_dir=vocab_dir)
    os.remove(os.path.join(path, "config.json"))  # optional
    assert hub.resolve_model(path) == path
    assert hub.model_layout(path) == "hf"


def test_bare_directory_name_in_cwd(served_root, home, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(served_root, "124M"), "mymodel")
    assert hub.resolve_model("mymodel") == str(tmp_path / "mymodel")


def test_name_wins_over_same_named_directory(served_root, home, monkeypatch, server):
    monkeypatch.chdir(served_root)  # ./124M exists, but "124M" is the model name
    with pytest.raises(ModelNotFound, match=r"model 124M is not in the cache"):
        hub.resolve_model("124M", download=False)
    assert hub.resolve_model("./124M") == os.path.join(served_root, "124M")


def test_missing_path(home, tmp_path):
    for arg in ("./nope", str(tmp_path / "nope"), "~/surely-not-here-gpt2cy", "models/124M"):
        with pytest.raises(ModelNotFound, match=r"^no such directory: "):
            hub.resolve_model(arg)


def test_path_that_is_not_a_model_dir(tmp_path, home):
    d = tmp_path / "half"
    d.mkdir()
    (d / "hparams.json").write_text("{}")
    with pytest.raises(ModelNotFound, match=r"is not a model directory.*missing: model\.ckpt\.index"):
        hub.resolve_model(str(d))
    (d / "model.safetensors").write_bytes(b"")
    (d / "hparams.json").unlink()
    with pytest.raises(ModelNotFound, match=r"not a complete HuggingFace model directory.*vocab\.json"):
        hub.resolve_model(str(d))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ModelNotFound, match="is not a directory"):
        hub.resolve_model(str(f))


def test_unknown_name_never_touches_the_cache(home, server):
    for arg in ("gpt3", "124M;rm", "..", "", None, 124, b"124M"):
        with pytest.raises(ModelNotFound):
            hub.resolve_model(arg)
    assert not os.path.exists(home) and server.served() == []


# --- downloads ---------------------------------------------------------------------------------------------------

def test_download_fetches_verifies_and_marks(home, server, source, capfd):
    [path] = hub.download_models(["gpt2"])
    assert path == cache_dir(home)
    assert_usable(path, source)
    assert [r["name"] for r in server.served()] == list(hub.FILES)  # small files first, data last
    marker = json.load(open(os.path.join(path, hub.MARKER)))
    assert marker["files"][DATA]["size"] == len(source[DATA])
    err = capfd.readouterr().err
    assert err.splitlines()[0].startswith("gpt2cy: downloading model 124M")  # announced first
    assert err.count("\n") == 1 + 4  # then one plain line per file (stderr is not a TTY here)
    assert f"downloading model 124M ({(len(source[DATA]) + 1_042_301 + 456_318) / 2**20:.1f} MiB)" in err
    assert server.base_url in err and path in err
    # Cached and verified: nothing more is fetched, and loads need only a stat.
    assert hub.download_models("124M") == [path]
    assert hub.resolve_model("small") == path
    assert len(server.served()) == len(hub.FILES)


def test_resolve_downloads_on_demand(home, server, source, capfd):
    path = hub.resolve_model("117M")
    assert_usable(path, source)
    assert "downloading model 124M" in capfd.readouterr().err


def test_library_notices_are_silent_by_default(home, server, source, capfd, monkeypatch, caplog):
    """Without a handler the announcements go to the "gpt2cy" logger only; stderr stays the caller's."""
    monkeypatch.setenv("GPT2CY_NO_PROGRESS", "1")
    notices.set_notice_handler(None)
    with caplog.at_level("WARNING", logger="gpt2cy"):
        hub.download_models(["124M"])
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records if r.name == "gpt2cy"][0].startswith("downloading model 124M")
    os.remove(os.path.join(cache_dir(home), hub.MARKER))
    with notices.captured() as got:
        hub.resolve_model("124M")
    assert got == [f"verifying model 124M in {cache_dir(home)} (once; this reads every byte)"]


def test_download_false_names_the_command(home, server):
    with pytest.raises(ModelNotFound) as e:
        hub.resolve_model("124M", download=False)
    assert str(e.value) == f"model 124M is not in the cache ({cache_dir(home)}); run: gpt2cy download 124M"
    assert server.served() == []


def test_offline_env_makes_no_connection(home, server, monkeypatch):
    monkeypatch.setenv("GPT2CY_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"offline mode is on; run: GPT2CY_OFFLINE=0 gpt2cy download 124M$"):
        hub.resolve_model("124M")
    with pytest.raises(ModelNotFound, match="offline"):
        hub.resolve_model("124M", offline=False)  # the variable cannot be overridden from code
    with pytest.raises(ModelNotFound, match="offline"):
        hub.download_models(["124M"])
    assert server.served() == []


def test_offline_argument(home, server):
    with pytest.raises(ModelNotFound, match=r"offline mode is on; run: gpt2cy download 124M$"):
        hub.resolve_model("124M", offline=True)
    assert server.served() == []


def test_offline_uses_a_verified_cache(home, server, monkeypatch):
    path = hub.download_models(["124M"])[0]
    n = len(server.served())
    monkeypatch.setenv("GPT2CY_OFFLINE", "1")
    assert hub.resolve_model("124M") == path
    assert hub.download_models(["124M"]) == [path]
    assert len(server.served()) == n


def test_missing_file_is_not_cached_and_only_it_is_fetched(home, server, source, monkeypatch):
    path = hub.download_models(["124M"])[0]
    os.remove(os.path.join(path, "vocab.bpe"))
    assert hub.list_models()[0]["cached"] is False
    monkeypatch.setenv("GPT2CY_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"incomplete in the cache \(missing vocab\.bpe\)"):
        hub.resolve_model("124M")
    monkeypatch.delenv("GPT2CY_OFFLINE")
    n = len(server.served())
    assert hub.resolve_model("124M") == path
    assert [r["name"] for r in server.served()[n:]] == ["vocab.bpe"]
    assert_usable(path, source)


def test_changed_file_is_verified_again(home, server, source):
    path = hub.download_models(["124M"])[0]
    data = os.path.join(path, DATA)
    st = os.stat(data)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not hub.is_verified(path)
    n = len(server.served())
    assert hub.resolve_model("124M") == path  # verified again locally, marker rewritten
    assert hub.is_verified(path) and len(server.served()) == n


def test_verify_command_reads_an_unverified_cached_model_once(home, server, source, monkeypatch, capsys):
    """`gpt2cy verify 124M` of a cached model without its marker: one pass over the CRCs, and marked."""
    from gpt2cy.cli.main import main
    from gpt2cy.formats import tfbundle
    path = hub.download_models(["124M"])[0]
    os.remove(os.path.join(path, hub.MARKER))
    calls = []
    real = tfbundle.TensorBundle.verify
    monkeypatch.setattr(tfbundle.TensorBundle, "verify", lambda self, **kw: calls.append(1) or real(self, **kw))
    assert main(["verify", "124M"]) == 0
    assert len(calls) == 1 and hub.is_verified(path)
    assert capsys.readouterr().out.startswith(f"{path}: 28 tensors")
    assert main(["verify", "124M"]) == 0 and len(calls) == 2       # asked again: checked again


def test_damaged_marker_means_verify_again(home, server, source):
    path = hub.download_models(["124M"])[0]
    n = len(server.served())
    for junk in (b"[" * 100_000, b"\xff", b"{", b"[]"):
        with open(os.path.join(path, hub.MARKER), "wb") as f:
            f.write(junk)
        assert not hub.is_verified(path)
        assert hub.resolve_model("124M") == path  # verified again locally, marker rewritten
        assert hub.is_verified(path) and len(server.served()) == n


@pytest.mark.parametrize("name,junk", [("encoder.json", b"[" * 100_000), ("hparams.json", b"[" * 100_000),
                                       ("encoder.json", b"\xff\xfe"), ("vocab.bpe", b"<html>")])
def test_malformed_small_file_is_a_download_error(tmp_path, name, junk):
    p = tmp_path / name
    p.write_bytes(junk)
    with pytest.raises(DownloadError, match=name.replace(".", r"\.")):
        hub._check_small_file(name, str(p))


def test_corrupt_cached_model_is_an_error_on_load(home, server, source):
    path = hub.download_models(["124M"])[0]
    with open(os.path.join(path, DATA), "r+b") as f:
        f.seek(len(source[DATA]) // 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match=r"model 124M in the cache is damaged.*gpt2cy download --force 124M"):
        hub.resolve_model("124M")


def test_download_replaces_a_corrupt_cached_model(home, server, source, capfd):
    path = hub.download_models(["124M"])[0]
    with open(os.path.join(path, DATA), "r+b") as f:
        f.write(b"\xff\xff\xff\x7f")
    os.remove(os.path.join(path, hub.MARKER))
    hub.download_models(["124M"])
    assert_usable(path, source)
    assert "failed verification" in capfd.readouterr().err
    assert len(server.served()) == 2 * len(hub.FILES)


def test_force_fetches_everything_again(home, server, source):
    hub.download_models(["124M"])
    path = hub.download_models(["124M"], force=True)[0]
    assert len(server.served()) == 2 * len(hub.FILES)
    assert_usable(path, source)


# A forced or repeated download that fails must leave what was cached exactly as it was.
FORCED_FAILING = [
    ("404", DATA, r"HTTP 404"),
    ("cl_smaller", DATA, r"failed verification.*the cached files were kept"),
    ("html_octet", "model.ckpt.index", r"failed verification.*the cached files were kept"),
    ("html_octet", "hparams.json", r"hparams\.json.*not valid JSON"),
    ("cl_bigger", "encoder.json", r"gave up"),
    ("md5_bad", "vocab.bpe", r"MD5"),
]


@pytest.mark.parametrize("mode,name,message", FORCED_FAILING, ids=[f"{m}-{n}" for m, n, _ in FORCED_FAILING])
def test_failed_forced_download_keeps_the_cached_model(home, server, source, mode, name, message):
    path = hub.download_models(["124M"])[0]
    before = {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in hub.FILES}
    server.set_mode(name, mode)
    with pytest.raises(DownloadError, match=message):
        hub.download_models(["124M"], force=True)
    assert_usable(path, source)                               # whole, unchanged, and still verified
    assert {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in hub.FILES} == before
    staged = os.path.join(path, hub.STAGING_DIR)
    left = sorted(os.listdir(staged)) if os.path.exists(staged) else []
    # only a network failure (retries ran out) keeps its partial file, for the next forced download to resume
    assert left == ([name + ".incomplete"] if message == "gave up" else [])
    server.set_mode(name)
    assert hub.download_models(["124M"], force=True) == [path]
    assert_usable(path, source)
    assert not os.path.exists(staged)


def test_failed_move_into_the_cache_leaves_whole_files(home, server, source, monkeypatch):
    path = hub.download_models(["124M"])[0]
    real, moved = os.replace, []

    def replace(src, dst):
        if os.path.dirname(src).endswith(hub.STAGING_DIR) and not src.endswith(".incomplete"):
            if len(moved) == 2:                              # the third file's move into the cache fails
                raise OSError(28, "No space left on device")
            moved.append(dst)
        real(src, dst)
    with monkeypatch.context() as m:
        m.setattr(hub.os, "replace", replace)
        with pytest.raises(DownloadError, match=r"cannot move the downloaded files of model 124M into .*No space"):
            hub.download_models(["124M"], force=True)
    assert_no_garbage(path, source)                           # every file whole: old or new, never neither
    assert hub.missing_files(path) == [] and not os.path.exists(os.path.join(path, hub.STAGING_DIR))
    assert hub.resolve_model("124M", download=False) == path  # verified again once, and usable
    assert hub.is_verified(path)


def test_failed_verification_keeps_files_that_were_cached(home, server, source):
    path = hub.resolve_tokenizer("124M")                      # encoder.json + vocab.bpe cached first
    server.set_mode(DATA, "cl_smaller")
    with pytest.raises(DownloadError, match=r"failed verification.*files were removed; encoder\.json, vocab\.bpe, "
                                            r"already cached, were kept"):
        hub.download_models(["124M"])
    assert sorted(f for f in hub.FILES if os.path.exists(os.path.join(path, f))) == ["encoder.json", "vocab.bpe"]
    assert_not_usable(path, source)
    server.set_mode(DATA)
    n = len(server.served())
    assert_usable(hub.download_models(["124M"])[0], source)
    assert sorted(r["name"] for r in server.served()[n:]) == sorted(["hparams.json", "model.ckpt.index", DATA])


def test_damaged_cache_whose_refetch_fails_is_kept_as_it_was(home, server, source):
    path = hub.download_models(["124M"])[0]
    with open(os.path.join(path, DATA), "r+b") as f:
        f.write(b"\xff\xff\xff\x7f")
    os.remove(os.path.join(path, hub.MARKER))
    damaged = open(os.path.join(path, DATA), "rb").read()
    server.set_mode(DATA, "404")
    with pytest.raises(DownloadError, match="HTTP 404"):
        hub.download_models(["124M"])
    assert hub.missing_files(path) == [] and not hub.is_verified(path)
    assert open(os.path.join(path, DATA), "rb").read() == damaged
    for f in hub.FILES[:-1]:
        assert open(os.path.join(path, f), "rb").read() == source[f]


def test_unknown_name_in_download(home, server):
    with pytest.raises(ModelNotFound, match="unknown model 'gpt5'"):
        hub.download_models(["124M", "gpt5"])
    assert server.served() == []


# --- faults: a verified model, or no model and a clear error -------------------------------------------------------

FAILING = [
    ("404", DATA, r"HTTP 404"),
    ("404", "hparams.json", r"HTTP 404"),
    ("500", "model.ckpt.index", r"HTTP 500"),
    ("truncate", DATA, r"connection closed after"),
    ("cl_bigger", DATA, r"gave up"),
    ("cl_bigger", "encoder.json", r"gave up"),
    ("cl_smaller", DATA, r"failed verification.*files were removed"),
    ("cl_smaller", "hparams.json", r"hparams\.json"),
    ("stall", DATA, r"timed out"),
    ("html200", DATA, r"web page"),
    ("html200", "hparams.json", r"web page"),
    ("html_octet", "hparams.json", r"hparams\.json.*not valid JSON"),
    ("html_octet", "vocab.bpe", r"vocab\.bpe is not a valid vocab\.bpe file"),
    ("html_octet", "model.ckpt.index", r"failed verification"),
    ("html_octet", DATA, r"failed verification"),
]


@pytest.mark.parametrize("mode,name,message", FAILING, ids=[f"{m}-{n}" for m, n, _ in FAILING])
def test_fault_leaves_no_model(home, server, source, mode, name, message):
    server.set_mode(name, mode)
    with pytest.raises(DownloadError, match=message):
        hub.download_models(["124M"])
    path = cache_dir(home)
    assert_not_usable(path, source)
    with pytest.raises(ModelNotFound):
        hub.resolve_model("124M", download=False)
    # The server recovers: the next download completes, fetching only what is missing.
    server.set_mode(name)
    assert_usable(hub.download_models(["124M"])[0], source)


def test_a_failed_first_download_leaves_no_folder_and_says_what_it_fetched(home, server, source):
    server.set_mode("hparams.json", "404")
    with pytest.raises(DownloadError) as e:
        hub.resolve_model("124M")                     # a first use, not `gpt2cy download`
    assert str(e.value).startswith("model 124M is not in the cache and downloading it failed: ")
    assert not os.path.exists(cache_dir(home))        # no models/124M/ holding only a .lock
    with pytest.raises(DownloadError, match="HTTP 404"):
        hub.download_models(["124M"])
    assert not os.path.exists(cache_dir(home))
    server.set_mode("hparams.json")
    server.set_mode("encoder.json", "404")
    with pytest.raises(DownloadError) as e:
        hub.resolve_tokenizer("124M")
    assert str(e.value).startswith("the tokenizer of model 124M is not in the cache and downloading it failed")
    assert not os.path.exists(cache_dir(home))
    server.set_mode("encoder.json")
    assert_usable(hub.download_models(["124M"])[0], source)


def test_cli_download_errors_name_the_default_model_and_only_flags_the_command_has(home, server):
    server.set_mode("hparams.json", "404")
    env = dict(os.environ, GPT2CY_NO_PROGRESS="1")

    def err(*args):
        r = subprocess.run([sys.executable, "-m", "gpt2cy", *args], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        return r.stderr
    assert "-m" not in err("download", "124M")
    first_run = err("generate", "-p", "hi", "-n", "1")
    assert "model 124M is not in the cache and downloading it failed" in first_run
    assert first_run.rstrip().endswith("(124M is the default model; -m names another, or a model directory or "
                                       "GGUF file you have)")
    assert err("-m", "124M").rstrip().endswith("(-m also takes a model directory or GGUF file you have)")


def test_dropped_connection_resumes_with_only_the_rest(home, server, source):
    server.set_mode(DATA, "drop_once")
    path = hub.download_models(["124M"])[0]
    assert_usable(path, source)
    first, second = server.served(DATA)
    half = len(source[DATA]) // 2
    assert second["range"] == f"bytes={half}-" and second["status"] == 206
    assert server.bytes_sent(DATA) == len(source[DATA])


def test_server_ignoring_range_restarts(home, server, source):
    server.set_mode(DATA, "drop_once", "ignore_range")
    assert_usable(hub.download_models(["124M"])[0], source)
    assert [r["status"] for r in server.served(DATA)] == [200, 200]


def test_partial_left_by_a_killed_process_is_resumed(home, server, source):
    path = cache_dir(home)
    os.makedirs(path)
    n = len(source[DATA]) // 3
    with open(os.path.join(path, DATA + ".incomplete"), "wb") as f:
        f.write(source[DATA][:n])
    hub.download_models(["124M"])
    assert_usable(path, source)
    [req] = server.served(DATA)
    assert req["range"] == f"bytes={n}-" and req["sent"] == len(source[DATA]) - n


def test_ctrl_c_leaves_no_partial_and_frees_the_lock(home, server, source, monkeypatch):
    class Interrupting(hub.FileProgress):
        def advance(self, n):
            super().advance(n)
            if self.label.endswith(DATA):
                raise KeyboardInterrupt
    monkeypatch.setattr(hub, "FileProgress", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        hub.download_models(["124M"])
    assert hub.missing_files(cache_dir(home)) == [DATA]
    assert_not_usable(cache_dir(home), source)
    monkeypatch.undo()
    _env_for_home(monkeypatch, home, server)
    n = len(server.served())
    assert_usable(hub.download_models(["124M"])[0], source)  # the lock was released
    assert [r["name"] for r in server.served()[n:]] == [DATA]


def test_partial_of_a_killed_download_is_resumed_next_time(home, server, source):
    server.set_mode(DATA, "slow")
    server.slow_s = 0.02
    code = "from gpt2cy.hub.models import download_models; download_models(['124M'])"
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, GPT2CY_NO_PROGRESS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = os.path.join(cache_dir(home), DATA + ".incomplete")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (os.path.exists(partial) and os.path.getsize(partial) > 0):
            time.sleep(0.01)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    have = os.path.getsize(partial)
    assert 0 < have < len(source[DATA]) and not os.path.exists(os.path.join(cache_dir(home), DATA))
    server.set_mode(DATA)
    n = len(server.served(DATA))
    assert_usable(hub.download_models(["124M"])[0], source)
    [req] = server.served(DATA)[n:]
    assert req["range"] == f"bytes={have}-" and req["sent"] == len(source[DATA]) - have


def test_official_bucket_sizes_are_enforced(home, server, source, monkeypatch):
    # Pose as the official bucket: published sizes must match, and its hparams must describe GPT-2 124M.
    monkeypatch.setattr(hub, "DEFAULT_BASE_URL", server.base_url)
    with pytest.raises(DownloadError, match=r"hparams\.json: the server says \d+ bytes, the published size is 90"):
        hub.download_models(["124M"])
    assert_not_usable(cache_dir(home), source)
    hparams = os.path.join(cache_dir(home), "hparams.json")
    os.makedirs(cache_dir(home), exist_ok=True)          # a failed first download left no folder
    with open(hparams, "w") as f:
        json.dump({**hub.PUBLISHED["124M"].to_json(), "n_layer": 13}, f)
    with pytest.raises(DownloadError, match=r"hparams\.json from .* does not describe GPT-2 124M"):
        hub.download_models(["124M"])
    assert not os.path.exists(hparams)
    os.makedirs(cache_dir(home), exist_ok=True)
    with open(hparams, "w") as f:
        json.dump(hub.PUBLISHED["124M"].to_json(), f)
    with pytest.raises(DownloadError, match=r"model\.ckpt\.index: the server says \d+ bytes, the published size "
                                            r"is 5215"):
        hub.download_models(["124M"])
    assert not os.path.exists(os.path.join(cache_dir(home), "model.ckpt.index"))
    assert server.served("model.ckpt.data-00000-of-00001") == []


# --- tokenizer files only ----------------------------------------------------------------------------------------

def test_tokenizer_files_alone(home, server, source, capfd):
    path = hub.resolve_tokenizer("gpt2")
    assert path == cache_dir(home)
    assert sorted(r["name"] for r in server.served()) == ["encoder.json", "vocab.bpe"]
    assert "downloading the tokenizer files of model 124M (1.4 MiB)" in capfd.readouterr().err
    assert hub.resolve_tokenizer("124M") == path and len(server.served()) == 2
    assert hub.list_models()[0]["cached"] is False
    hub.download_models(["124M"])  # reuses them
    assert sorted(r["name"] for r in server.served()) == sorted(hub.FILES)
    assert_usable(path, source)


def test_tokenizer_files_from_the_official_bucket_match_published_size_and_sha256(home, server, monkeypatch):
    monkeypatch.setattr(hub, "DEFAULT_BASE_URL", server.base_url)  # the served files are OpenAI's real ones
    assert hub.resolve_tokenizer("124M") == cache_dir(home)


def test_tokenizer_offline_and_paths(home, server, served_root, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2CY_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="GPT2CY_OFFLINE=0 gpt2cy download 124M"):
        hub.resolve_tokenizer("124M")
    assert server.served() == []
    assert hub.resolve_tokenizer(os.path.join(served_root, "124M")) == os.path.join(served_root, "124M")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="has no tokenizer files"):
        hub.resolve_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFound, match="no such directory"):
        hub.resolve_tokenizer("./missing")
    with pytest.raises(ModelNotFound, match="unknown model"):
        hub.resolve_tokenizer("gpt5")


# --- concurrency -------------------------------------------------------------------------------------------------

def test_two_threads_share_one_download(home, server, source, capfd):
    server.set_mode("*", "slow")
    server.slow_s = 0.002
    results, errors = [], []

    def run():
        try:
            results.append(hub.download_models(["124M"])[0])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [cache_dir(home)] * 2
    assert sorted(r["name"] for r in server.served()) == sorted(hub.FILES)  # each file fetched once
    assert_usable(cache_dir(home), source)
    assert "waiting for another download of model 124M to finish" in capfd.readouterr().err


def test_two_processes_share_one_download(home, server, source):
    server.set_mode("*", "slow")
    server.slow_s = 0.005
    code = "from gpt2cy.hub.models import download_models; print(download_models(['124M'])[0])"
    env = dict(os.environ, GPT2CY_NO_PROGRESS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [cache_dir(home)] * 2
    assert sorted(r["name"] for r in server.served()) == sorted(hub.FILES)
    assert_usable(cache_dir(home), source)


# --- list --------------------------------------------------------------------------------------------------------

def test_list_models(home, server, source):
    before = hub.list_models()
    assert [m["name"] for m in before] == list(hub.SIZES)
    assert all(not m["cached"] and not m["verified"] and m["size_bytes"] == 0 for m in before)
    assert before[3]["published_bytes"] > 6_230_444_800 and "gpt2-xl" in before[3]["aliases"]
    hub.download_models(["124M"])
    m = hub.list_models()[0]
    assert (m["cached"], m["verified"], m["path"]) == (True, True, cache_dir(home))
    assert m["size_bytes"] == sum(len(b) for b in source.values())
    assert server.served() and len(server.served()) == len(hub.FILES)


# --- end to end --------------------------------------------------------------------------------------------------

def test_cli_generate_fetches_verifies_and_generates(home, server, served_root):
    pytest.importorskip("gpt2cy.cli.main")
    model_mod = pytest.importorskip("gpt2cy.loading")
    env = dict(os.environ, GPT2CY_NO_PROGRESS="1")
    r = subprocess.run([sys.executable, "-m", "gpt2cy", "generate", "-m", "124M", "-p", "Hello", "-n", "5",
                        "--temp", "0", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "downloading model 124M" in r.stderr
    assert_usable(cache_dir(home), {f: open(os.path.join(served_root, "124M", f), "rb").read()
                                    for f in hub.FILES})
    out = json.loads(r.stdout)
    # The same greedy continuation, computed here from the served files.
    model = model_mod.load(os.path.join(served_root, "124M"))
    ids = model.tokenizer.encode("Hello")
    want = []
    for _ in range(5):
        t = int(np.argmax(model.logits(ids + want)[-1]))
        if t == model.tokenizer.eot_token:
            break
        want.append(t)
    assert out["tokens"] == want and len(server.served()) == len(hub.FILES)


def test_load_downloads_on_demand(home, server, source, capfd):
    gpt2cy = pytest.importorskip("gpt2cy")
    pytest.importorskip("gpt2cy.model")
    with pytest.raises(ModelNotFound, match=r"^model 124M is not in the cache .*; run: gpt2cy download 124M$"):
        gpt2cy.load("124M", download=False)
    assert server.served() == []
    model = gpt2cy.load("gpt2")
    assert model.path == cache_dir(home) and model.config.n_embd == TINY.n_embd
    assert "downloading model 124M" in capfd.readouterr().err
    assert_usable(cache_dir(home), source)


def test_cli_offline_exit_code(home, server):
    pytest.importorskip("gpt2cy.cli.main")
    env = dict(os.environ, GPT2CY_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "gpt2cy", "generate", "-m", "124M", "-p", "Hello", "-n", "5"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "GPT2CY_OFFLINE=0 gpt2cy download 124M" in r.stderr and "Traceback" not in r.stderr
    assert server.served() == []


def test_ctrl_c_in_gpt2cy_download_keeps_the_partial_file_and_the_next_run_resumes(home, server, source):
    """`gpt2cy download 124M`, SIGINT half way through the weights: exit 130, the bytes fetched stay as
    <file>.incomplete (a prefix of the served file), and the next run asks only for the rest (Range)."""
    import signal
    server.set_mode(DATA, "slow")
    server.slow_s = 0.02                                      # 6.5 MB in 64 KiB chunks: about 2 s
    env = dict(os.environ, GPT2CY_NO_PROGRESS="1")
    part = os.path.join(cache_dir(home), DATA + ".incomplete")
    proc = subprocess.Popen([sys.executable, "-m", "gpt2cy", "download", "124M"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (os.path.exists(part) and os.path.getsize(part) > 1 << 20):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again to resume" in err
    kept = open(part, "rb").read()
    assert len(kept) > 1 << 20 and source[DATA].startswith(kept) and len(kept) < len(source[DATA])
    server.set_mode(DATA)
    r = subprocess.run([sys.executable, "-m", "gpt2cy", "download", "124M"], env=env, capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    rest = (len(source[DATA]) - len(kept)) / 2**20
    assert f"downloading model 124M ({rest:.1f} MiB, resuming with " in r.stderr.decode()
    assert_usable(cache_dir(home), source)
    last = server.served(DATA)[-1]
    assert (last["range"], last["status"], last["sent"]) == (f"bytes={len(kept)}-", 206,
                                                             len(source[DATA]) - len(kept))
