"""Model names, the cache, and turning `-m NAME|PATH` into a model directory, downloading on demand.

Names: 124M, 355M, 774M, 1558M and the aliases users know (117M, 345M, small, medium, large, xl, gpt2,
gpt2-medium, gpt2-large, gpt2-xl; any case). Only these canonical names ever become path components or URL parts;
any other user string is either a directory path or an error.

Cache: $GPT2CY_HOME, else $XDG_CACHE_HOME/gpt2cy, else ~/.cache/gpt2cy (%LOCALAPPDATA%\\gpt2cy on Windows); models
live in <root>/models/<SIZE>/ (or $GPT2CY_MODELS/<SIZE>/) under OpenAI's file names, the layout of openai/gpt-2's
models/ directory, so existing downloads can be reused.

A cached model is *complete* when its five files are present and *verified* when `.verified.json` records the
sizes and mtimes the files had when every tensor's CRC32C was checked; a later load only stats the files. A model
whose files changed since is treated as unverified and checked again.

Environment: GPT2CY_BASE_URL (mirror; default OpenAI's bucket), GPT2CY_OFFLINE=1 (never open a socket; cannot be
overridden from code), GPT2CY_NO_PROGRESS, GPT2CY_HTTP_TIMEOUT/RETRIES/BACKOFF (see gpt2cy.hub.download).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

from ..config import PUBLISHED, Config
from .download import FileLock, HttpSettings, PARTIAL_SUFFIX, fetch, offline_env
from ..errors import CheckpointError, DownloadError, ModelNotFound
from ..formats.layout import SAFETENSORS, TF, find_layout, find_vocab, is_gguf_file
from ..notices import notice
from .progress import FileProgress, format_bytes, progress_enabled

SIZES = ("124M", "355M", "774M", "1558M")
ALIASES = {
    "124m": "124M", "117m": "124M", "small": "124M", "gpt2": "124M",
    "355m": "355M", "345m": "355M", "medium": "355M", "gpt2-medium": "355M",
    "774m": "774M", "large": "774M", "gpt2-large": "774M",
    "1558m": "1558M", "1.5b": "1558M", "xl": "1558M", "gpt2-xl": "1558M",
}

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
DATA_FILE = "model.ckpt.data-00000-of-00001"
# The five files gpt2cy needs, in download order: the small ones first, so a bad URL fails in a second.
FILES = ("hparams.json", "model.ckpt.index", "encoder.json", "vocab.bpe", DATA_FILE)
HF_FILES = ("model.safetensors", "vocab.json", "merges.txt")  # + optional config.json
MARKER = ".verified.json"
MARKER_FORMAT = 1
LOCK_FILE = ".lock"

# Published sizes in OpenAI's bucket (the files openai/gpt-2's download_model.py fetches, as the bucket serves
# them). The data file is 4 bytes per parameter: exact for 124M and 355M, computed from hparams for 774M and
# 1558M. Files not listed are checked against Content-Length.
_TOKENIZER_BYTES = {"encoder.json": 1_042_301, "vocab.bpe": 456_318}
_INDEX_BYTES = {"124M": 5_215, "355M": 10_399}
_HPARAMS_BYTES = {"124M": 90, "355M": 91}  # 774M/1558M: 91 by the same format (unpublished; listed total only)
# tiktoken pins these for .../gpt-2/encodings/main; the per-model copies (models/<SIZE>/) have the same published
# sizes, and public projects pin the same digests for models/117M/ (the vocabulary is shared by all sizes).
_TOKENIZER_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


# --- names and places -----------------------------------------------------------------------------------------

def canonical_name(name: str) -> str | None:
    """'gpt2-medium' -> '355M', '117m' -> '124M'; None when `name` is not a known model name."""
    if not isinstance(name, str):
        return None
    return ALIASES.get(name.strip().lower())


def cache_root() -> str:
    """$GPT2CY_HOME, else $XDG_CACHE_HOME/gpt2cy, else ~/.cache/gpt2cy (%LOCALAPPDATA%\\gpt2cy on Windows)."""
    if os.environ.get("GPT2CY_HOME"):
        return os.path.abspath(os.path.expanduser(os.environ["GPT2CY_HOME"]))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        base = xdg
    elif sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = os.environ["LOCALAPPDATA"]
    else:
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "gpt2cy")


def models_dir() -> str:
    """Where cached models live: $GPT2CY_MODELS, else <cache_root()>/models."""
    if os.environ.get("GPT2CY_MODELS"):
        return os.path.abspath(os.path.expanduser(os.environ["GPT2CY_MODELS"]))
    return os.path.join(cache_root(), "models")


def model_path(size: str, root: str | None = None) -> str:
    """The cache directory of canonical model `size` (e.g. '124M'), under `root` or models_dir()."""
    if size not in SIZES:
        raise ValueError(f"{size!r} is not a canonical model name ({', '.join(SIZES)})")
    return os.path.join(os.path.abspath(os.path.expanduser(root)) if root else models_dir(), size)


def base_url() -> str:
    """$GPT2CY_BASE_URL (a mirror; must be http(s)), else OpenAI's public bucket. No trailing slash."""
    url = os.environ.get("GPT2CY_BASE_URL", "").strip() or DEFAULT_BASE_URL
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"GPT2CY_BASE_URL={url!r} must start with http:// or https://")
    return url.rstrip("/")


def published_file_sizes(size: str) -> dict:
    """{file name: bytes or None} as published in OpenAI's bucket for canonical `size` (None = not recorded)."""
    return {
        "hparams.json": _HPARAMS_BYTES.get(size),
        "model.ckpt.index": _INDEX_BYTES.get(size),
        "encoder.json": _TOKENIZER_BYTES["encoder.json"],
        "vocab.bpe": _TOKENIZER_BYTES["vocab.bpe"],
        DATA_FILE: 4 * PUBLISHED[size].n_params,
    }


def published_bytes(size: str) -> int:
    """The model's download size in bytes (exact for 124M/355M; 774M/1558M leave out the .index, ~20 KB)."""
    sizes = published_file_sizes(size)
    sizes["hparams.json"] = sizes["hparams.json"] or 91
    return sum(n for n in sizes.values() if n is not None)


# --- what is on disk ------------------------------------------------------------------------------------------

def missing_files(path: str) -> list:
    """The OpenAI-layout files absent from `path` (all five when the directory does not exist)."""
    return [f for f in FILES if not os.path.isfile(os.path.join(path, f))]


def _stat_record(path: str) -> dict:
    rec = {}
    for f in FILES:
        st = os.stat(os.path.join(path, f))
        rec[f] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return rec


def is_verified(path: str) -> bool:
    """True when `path`'s .verified.json matches the current size and mtime of each of the five files."""
    try:
        with open(os.path.join(path, MARKER), "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
        return (isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT
                and marker.get("files") == _stat_record(path))
    except (OSError, ValueError, RecursionError):  # a damaged marker only means: verify again
        return False


def _write_marker(path: str) -> None:
    from .. import __version__
    marker = {"format": MARKER_FORMAT, "gpt2cy": __version__, "model": os.path.basename(path),
              "files": _stat_record(path)}
    tmp = os.path.join(path, f"{MARKER}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, MARKER))
    except OSError:  # a read-only cache still works; it is just verified again next time
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _check_small_file(name: str, path: str) -> None:
    """Reject a small file whose content is plainly wrong (an error page, a truncated JSON) before it is used."""
    try:
        if name == "hparams.json":
            Config.from_file(path)
        elif name == "encoder.json":
            with open(path, "rb") as f:
                if not isinstance(json.loads(f.read().decode("utf-8")), dict):
                    raise ValueError("not a JSON object")
        elif name == "vocab.bpe":
            with open(path, "rb") as f:
                if not f.read(64).startswith(b"#version"):
                    raise ValueError("does not start with '#version'")
    except CheckpointError as e:
        raise DownloadError(f"{name}: {e}") from None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DownloadError(f"{name} is not a valid {name} file ({e})") from None
    except RecursionError:
        raise DownloadError(f"{name} is not a valid {name} file (JSON nested too deeply)") from None


def verify_model(path: str, marker: bool = True):
    """Check a complete OpenAI-layout model directory (hparams, tokenizer files, every tensor's CRC32C) and
    (with `marker`) record it as verified; returns gpt2cy.verify's VerifyResult. Raises CheckpointError (or
    DownloadError for a malformed small file)."""
    missing = missing_files(path)
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}")
    for name in ("hparams.json", "encoder.json", "vocab.bpe"):
        _check_small_file(name, os.path.join(path, name))
    from ..formats.checkpoint import verify
    result = verify(path)
    if marker:
        _write_marker(path)
    return result


# --- resolving a -m argument ----------------------------------------------------------------------------------

def looks_like_path(s: str) -> bool:
    """True for strings meant as paths: containing a separator, or starting with '.' or '~'."""
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(sep in s for sep in seps) or s.startswith((".", "~"))


def model_layout(path: str) -> str | None:
    """'openai' (hparams.json + a TF bundle + encoder.json + vocab.bpe), 'hf' (model.safetensors + vocab.json +
    merges.txt [+ config.json]), or None when `path` is not a complete model directory.

    The rules are formats.layout.find_layout's, the loader's own: a bundle prefix other than model.ckpt (named
    by a TF `checkpoint` file, as gpt-2-simple saves) is fine, and either vocabulary file pair goes with either
    kind of weights.
    """
    try:
        layout = find_layout(path)
    except CheckpointError:
        return None
    if not layout.complete:
        return None
    return {TF: "openai", SAFETENSORS: "hf"}[layout.kind]


def _resolve_path(arg: str) -> str:
    path = os.path.abspath(os.path.expanduser(arg))
    if not os.path.exists(path):
        raise ModelNotFound(f"no such directory: {arg}")
    if not os.path.isdir(path):
        raise ModelNotFound(f"{arg} is not a directory; -m takes a model name ({', '.join(SIZES)}) or a "
                            f"directory with a model's files")
    if model_layout(path) is None:
        have_openai = [f for f in FILES if os.path.isfile(os.path.join(path, f))]
        have_hf = [f for f in HF_FILES if os.path.isfile(os.path.join(path, f))]
        if have_openai or not have_hf:
            missing = ", ".join(missing_files(path))
            raise ModelNotFound(f"{arg} is not a model directory: OpenAI's layout needs {', '.join(FILES)} "
                                f"(missing: {missing}), HuggingFace's needs {', '.join(HF_FILES)}")
        missing = ", ".join(f for f in HF_FILES if f not in have_hf)
        raise ModelNotFound(f"{arg} is not a complete HuggingFace model directory (missing: {missing})")
    return path


def _offline(offline) -> bool:
    # The environment variable is a hard guarantee: an argument can add offline mode, never remove it.
    return bool(offline) or offline_env()


def resolve_model(name_or_path, download: bool = True, offline: bool | None = None,
                  models_dir: str | None = None, verify: bool = True) -> str:
    """Return the directory holding the model named or pointed at by `name_or_path`.

    name_or_path: a model name or alias ('124M', 'gpt2-medium', ...), or a directory in OpenAI's layout
        (hparams.json, model.ckpt.index, model.ckpt.data-00000-of-00001, encoder.json, vocab.bpe) or
        HuggingFace's (model.safetensors, vocab.json, merges.txt [, config.json]). A string containing a path
        separator or starting with '.' or '~' is always a path; a bare string is a name first, then a path.
    download: fetch a named model that is not cached (announced as a notice, gpt2cy.notices) instead of
        raising ModelNotFound.
    offline: never touch the network (also when GPT2CY_OFFLINE=1, which this argument cannot override).
    models_dir: the models directory to use instead of $GPT2CY_MODELS / <cache_root()>/models.
    verify: verify a cached model that is complete but not yet verified (copied in by hand, or changed since)
        here, once, which reads every byte; False leaves that to the caller (`gpt2cy verify` reads every byte
        anyway: verify_cached checks and marks it in that one read).

    Raises ModelNotFound (unknown name, bad path, not cached and may not download), DownloadError (saying
    which model it was fetching), or CheckpointError (a cached model fails verification).
    """
    arg = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else None
    if not isinstance(arg, str):
        raise ModelNotFound(f"{name_or_path!r} is not a model name or directory")
    if looks_like_path(arg):
        return _resolve_path(arg)
    size = canonical_name(arg)
    if size is None:
        if arg and os.path.isdir(arg):
            return _resolve_path(arg)
        raise ModelNotFound(f"unknown model {arg!r}: use one of {', '.join(SIZES)} (or an alias such as "
                            f"gpt2-medium), or a directory path such as ./{arg or 'models/124M'}")
    path = model_path(size, models_dir)
    missing = missing_files(path)
    if not missing:
        if verify and not is_verified(path):
            verify_cached(size, path, again=False)
        return path
    if _offline(offline) or not download:
        raise ModelNotFound(_not_cached_message(size, path, missing, _offline(offline)))
    try:
        return download_models([size], models_dir=models_dir)[0]
    except DownloadError as e:
        raise _on_demand(f"model {size}", e) from None


def _on_demand(what: str, e: DownloadError) -> DownloadError:
    """The error of a download nobody asked for by command (a model's first use) says what it was fetching."""
    err = DownloadError(f"{what} is not in the cache and downloading it failed: {e}")
    if getattr(e, "resumable", False):
        err.resumable = True
    return err


def _not_cached_message(size, path, missing, offline, force=False) -> str:
    if force:
        state = "cannot be downloaded again"
    elif len(missing) == len(FILES):
        state = "is not in the cache"
    else:
        state = f"is incomplete in the cache (missing {', '.join(missing)})"
    mode = " while offline mode is on" if offline else ""
    env = "GPT2CY_OFFLINE=0 " if offline_env() else ""
    return f"model {size} {state} ({path}){mode}; run: {env}gpt2cy download {'--force ' if force else ''}{size}"


def verify_cached(size: str, path: str, again: bool = True):
    """Verify the cached model `size` in `path` and mark it verified; returns the VerifyResult (None when
    `again` is False and another process verified it while we waited for its lock). CheckpointError for a
    damaged model, naming the command that fetches it again."""
    if not again or not is_verified(path):
        notice(f"verifying model {size} in {path} (once; this reads every byte)")
    try:
        with _lock_if_writable(path, size):
            if again or not is_verified(path):  # another process may have verified it while we waited
                return verify_model(path)
            return None
    except (CheckpointError, DownloadError) as e:
        raise CheckpointError(f"model {size} in the cache is damaged ({e}); run: gpt2cy download --force "
                              f"{size}") from None


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _lock_if_writable(path: str, size: str):
    lock = os.path.join(path, LOCK_FILE)
    if os.access(path, os.W_OK) and (not os.path.exists(lock) or os.access(lock, os.W_OK)):
        return FileLock(lock, on_wait=lambda: notice(f"waiting for another process using model {size}"))
    return _NoLock()  # a read-only models directory: nobody can be downloading into it


# --- downloading ----------------------------------------------------------------------------------------------

def download_models(names, force: bool = False, *, offline: bool | None = None, models_dir: str | None = None,
                    progress: bool | None = None, http: HttpSettings | None = None) -> list:
    """Make each named model complete and verified in the cache; return their directories, in order.

    names: model names or aliases (a single string is one name). Duplicates are fetched once.
    force: fetch all five files again even when the model is cached. They are fetched and verified in
        <model dir>/.incoming/ first and replace the cached ones only once verified, so a failed forced
        download leaves the cached model as it was.
    offline: refuse to download (also when GPT2CY_OFFLINE=1); models already cached and verified are fine.
    models_dir: the models directory to use instead of $GPT2CY_MODELS / <cache_root()>/models.
    progress: show the progress bar / per-file lines (default: unless GPT2CY_NO_PROGRESS is set).
    http: timeouts, retries and backoff (default: from GPT2CY_HTTP_* variables).

    Only missing files are fetched; a model whose cached files fail verification is fetched again once, in
    full, the same way as with force. Announces each download (name, size, source, destination) as a notice
    (gpt2cy.notices) first. Two processes or threads downloading one model take turns on <model dir>/.lock.
    Raises ModelNotFound for an unknown name or for a model that would need a download while offline, and
    DownloadError for a failed download or one that fails verification. A file that was already in the cache is
    never removed by a failure, only replaced by a verified download (or removed when it is shown not to be
    the model's: a cached hparams.json for another size); files fetched by a download that then fails
    verification are removed.
    """
    if isinstance(names, str):
        names = [names]
    sizes = []
    for name in names:
        size = canonical_name(name)
        if size is None:
            raise ModelNotFound(f"unknown model {name!r}: use one of {', '.join(SIZES)} "
                                f"(or an alias such as gpt2-medium)")
        if size not in sizes:
            sizes.append(size)
    return [_download_one(size, force, _offline(offline), models_dir, progress, http) for size in sizes]


def _download_one(size, force, offline, root, progress, http) -> str:
    path = model_path(size, root)
    if not force and not missing_files(path) and is_verified(path):
        return path  # the common case: no lock, no network, only stats
    if offline:  # exit 3 in the CLI, as for any model missing while offline
        raise ModelNotFound(_not_cached_message(size, path, missing_files(path) or list(FILES), True, force))
    with _download_lock(size, path):
        return _download_locked(size, force, path, progress, http)


@contextlib.contextmanager
def _download_lock(size: str, path: str):
    """Create the model's directory and hold its lock; OSErrors become DownloadErrors. A download that fails
    leaving nothing in the directory but the lock removes both (no empty models/<SIZE>/ after a failed
    first run)."""
    lock = FileLock(os.path.join(path, LOCK_FILE),
                    on_wait=lambda: notice(f"waiting for another download of model {size} to finish"))
    for _ in range(100):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise DownloadError(f"cannot create {path}: {e.strerror or e}") from None
        try:
            lock.__enter__()
            break
        except FileNotFoundError:       # the download we waited for failed and removed the directory
            continue
        except OSError as e:
            raise DownloadError(f"cannot lock {lock.path}: {e.strerror or e}") from None
    else:
        raise DownloadError(f"cannot lock {lock.path}: the directory keeps disappearing")
    try:
        yield
    except BaseException:
        _remove_if_only_the_lock(path, lock)
        raise
    finally:
        lock.__exit__(None, None, None)


def _remove_if_only_the_lock(path: str, lock) -> None:
    """Remove `path` when it holds nothing but the lock (and an empty staging folder); called holding it."""
    try:
        names = set(os.listdir(path))
        if not names <= {LOCK_FILE, STAGING_DIR}:
            return
        if STAGING_DIR in names:
            os.rmdir(os.path.join(path, STAGING_DIR))   # fails (and keeps all) unless it is empty
        lock.remove()
        os.rmdir(path)
    except OSError:
        pass


def _download_locked(size, force, path, progress, http) -> str:
    if force:
        return _download_staged(size, path, progress, http)
    todo = missing_files(path)
    if not todo and is_verified(path):
        return path  # another process finished it while we waited
    if not todo:  # complete but unverified: check what is there before fetching anything
        try:
            verify_model(path)
            return path
        except (CheckpointError, DownloadError) as e:
            notice(f"model {size} in the cache failed verification ({e}); downloading it again")
            return _download_staged(size, path, progress, http)
    # Only missing files are fetched, straight to their final names: no file there can be overwritten.
    # If one fails, the whole files fetched before it are kept (each is complete and checked on its own), so
    # the next download fetches only the rest; the failed one left nothing under its final name.
    fetched: list = []
    _fetch_files(size, path, todo, progress, http, fetched=fetched)
    try:
        verify_model(path)
    except (CheckpointError, DownloadError) as e:
        _remove_files(path, fetched + [MARKER])
        kept = [f for f in FILES if f not in fetched and os.path.isfile(os.path.join(path, f))]
        also = (f"; {', '.join(kept)}, already cached, were kept (if this happens again, run: gpt2cy download "
                f"--force {size})" if kept else "")
        raise DownloadError(f"model {size} downloaded from {base_url()} failed verification ({e}); "
                            f"its files were removed{also}") from None
    return path


STAGING_DIR = ".incoming"   # <model dir>/.incoming/: a full download is checked here before replacing anything


def _download_staged(size, path, progress, http) -> str:
    """Fetch all five files into <path>/.incoming/, verify them there, and only then move them over the
    cached ones. Any failure (a bad status or body, a checksum, verification, Ctrl-C) leaves the cached files
    exactly as they were, including their .verified.json. After Ctrl-C or retries that ran out, the partial
    file in .incoming/ stays for the next forced download to resume; any other failure clears .incoming/."""
    staging = os.path.join(path, STAGING_DIR)
    try:
        os.makedirs(staging, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {staging}: {e.strerror or e}") from None
    try:
        _fetch_files(size, staging, list(FILES), progress, http, shown=path)
        try:
            verify_model(staging, marker=False)
        except (CheckpointError, DownloadError) as e:
            raise DownloadError(f"model {size} downloaded from {base_url()} failed verification ({e}); the "
                                f"cached files were kept") from None
        try:
            _remove_files(path, [MARKER])          # from here until the marker is rewritten: verify again
            for name in FILES:                     # each rename is atomic; the files are whole and verified
                os.replace(os.path.join(staging, name), os.path.join(path, name))
        except OSError as e:
            raise DownloadError(f"cannot move the downloaded files of model {size} into {path}: "
                                f"{e.strerror or e}") from None
        _write_marker(path)                        # rename keeps size and mtime: what verify_model checked
        for name in FILES:                         # partials of an earlier, killed download are stale now
            _remove_files(path, [name + PARTIAL_SUFFIX])
    except BaseException as e:
        # Ctrl-C, or retries that ran out: keep the partial files in .incoming/ for the next forced download
        # to resume (fetch already said so); anything else (a verification failure) discards the staging
        if isinstance(e, KeyboardInterrupt) or getattr(e, "resumable", False):
            _clear_staging(staging, keep_partials=True)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return path


def _clear_staging(staging: str, keep_partials: bool) -> None:
    """Remove what a staged download left, except (keep_partials) the `.incomplete` files a resume can use."""
    try:
        names = os.listdir(staging)
    except OSError:
        return
    for name in names:
        if keep_partials and name.endswith(PARTIAL_SUFFIX):
            continue
        p = os.path.join(staging, name)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def _fetch_files(size, path, todo, progress, http, *, fetched=None, shown=None) -> None:
    """Fetch `todo` (file names) into directory `path`, hparams.json first; `fetched` collects the names
    that arrived; `shown` is the directory the announcement names (default `path`)."""
    fetched = [] if fetched is None else fetched
    base = base_url()
    official = base == DEFAULT_BASE_URL
    published = published_file_sizes(size) if official else {}
    settings = http or HttpSettings.from_env()
    show = progress_enabled() if progress is None else bool(progress)
    first = [f for f in todo if f == "hparams.json"]
    rest = [f for f in todo if f != "hparams.json"]
    for name in first:  # 91 bytes, fetched quietly before the announcement so the size can be told exactly
        _fetch_one(base, size, path, name, published, settings, False)
        fetched.append(name)
    try:
        cfg = Config.from_file(os.path.join(path, "hparams.json"))
    except CheckpointError as e:
        _remove_files(path, ["hparams.json"])
        raise DownloadError(f"hparams.json from {base}/{size}: {e}") from None
    if official and cfg.to_json() != PUBLISHED[size].to_json():
        _remove_files(path, ["hparams.json"])  # fetched now, or a cached one that is not this model's
        raise DownloadError(f"hparams.json from {base}/{size} does not describe GPT-2 {size}: {cfg.to_json()}")
    if rest:
        expected = {**published_file_sizes(size), DATA_FILE: 4 * cfg.n_params}
        total = sum(expected[f] or 0 for f in rest)
        have = sum(_partial_size(path, f, expected[f]) for f in rest)
        resume = f", resuming with {format_bytes(have)} already here" if have else ""
        notice(f"downloading model {size} ({format_bytes(total - have)}{resume}) from {base}/{size}/ to "
               f"{shown or path}")
    for name in rest:
        _fetch_one(base, size, path, name, published, settings, show)
        fetched.append(name)


def _partial_size(path: str, name: str, expected) -> int:
    """Bytes of `name` an interrupted download left to resume (0 when none, or when they cannot be its)."""
    try:
        n = os.path.getsize(os.path.join(path, name + PARTIAL_SUFFIX))
    except OSError:
        return 0
    return n if expected is None or n <= expected else 0


def _fetch_one(base, size, path, name, published, settings, show) -> None:
    url = f"{base}/{size}/{name}"

    def check(tmp):
        try:
            _check_small_file(name, tmp)
        except DownloadError as e:
            raise DownloadError(f"{url}: {e}") from None

    fetch(url, os.path.join(path, name), expected_size=published.get(name),
          sha256=_TOKENIZER_SHA256.get(name) if published else None, settings=settings,
          progress=FileProgress(f"{size}/{name}", enabled=show), check=check)


def _remove_files(path: str, names) -> None:
    for name in names:
        for p in (os.path.join(path, name), os.path.join(path, name + PARTIAL_SUFFIX)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


# --- tokenizer files only -----------------------------------------------------------------------------------

TOKENIZER_FILES = ("encoder.json", "vocab.bpe")


def resolve_tokenizer(name_or_path="124M", download: bool = True, offline: bool | None = None,
                      models_dir: str | None = None) -> str:
    """Return a directory holding a model's tokenizer files, fetching only those (1.4 MiB) when missing.

    Every GPT-2 size shares one vocabulary, so tokenizing never needs the weights. name_or_path, download,
    offline and models_dir are as for resolve_model; a directory must hold encoder.json + vocab.bpe (OpenAI)
    or vocab.json + merges.txt (HuggingFace). The files go to the model's cache directory, where a later
    model download reuses them. Raises ModelNotFound or DownloadError.
    """
    arg = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else None
    if not isinstance(arg, str):
        raise ModelNotFound(f"{name_or_path!r} is not a model name or directory")
    size = None if looks_like_path(arg) else canonical_name(arg)
    if size is None:
        if not looks_like_path(arg) and not (arg and os.path.isdir(arg)):
            return resolve_model(arg)  # raises the unknown-name error
        path = os.path.abspath(os.path.expanduser(arg))
        if not os.path.isdir(path):
            return _resolve_path(arg)  # raises the no-such-directory / not-a-directory error
        if find_vocab(path) is not None:
            return path
        raise ModelNotFound(f"{arg} has no tokenizer files (encoder.json + vocab.bpe, or vocab.json + "
                            f"merges.txt)")
    path = model_path(size, models_dir)
    missing = [f for f in TOKENIZER_FILES if not os.path.isfile(os.path.join(path, f))]
    if not missing:
        return path
    if _offline(offline) or not download:
        raise ModelNotFound(_not_cached_message(size, path, missing_files(path), _offline(offline)))
    with _download_lock(size, path):
        missing = [f for f in TOKENIZER_FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            base = base_url()
            published = published_file_sizes(size) if base == DEFAULT_BASE_URL else {}
            total = sum(_TOKENIZER_BYTES[f] for f in missing)
            notice(f"downloading the tokenizer files of model {size} ({format_bytes(total)}) from {base}/{size}/ "
                 f"to {path}")
            try:
                for name in missing:
                    _fetch_one(base, size, path, name, published, HttpSettings.from_env(), progress_enabled())
            except DownloadError as e:
                raise _on_demand(f"the tokenizer of model {size}", e) from None
    return path


_TOKENIZERS: dict = {}


def gguf_file_path(path_or_name) -> str | None:
    """The absolute path when `path_or_name` is a GGUF file (named *.gguf or starting with GGUF's magic), else
    None; ModelNotFound for a *.gguf path that does not exist."""
    if isinstance(path_or_name, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(path_or_name))
        if is_gguf_file(path):
            return os.path.abspath(path)
        if isinstance(path, str) and path.lower().endswith(".gguf") and not os.path.exists(path):
            raise ModelNotFound(f"no such file: {os.fspath(path_or_name)}")
    return None


def _gguf_tokenizer(path: str):
    """A GGUF file's own tokenizer (tokenizer.ggml.*), from its metadata: no tensor is read."""
    from ..errors import TokenizerError
    from ..formats.gguf import GGUFFile, gguf_config, gguf_vocab
    from ..text.tokenizer import Tokenizer
    f = GGUFFile(path)
    config = gguf_config(f)
    vocab = gguf_vocab(f, config.n_vocab)
    if vocab is None:
        raise TokenizerError(f"{path}: the file holds no tokenizer (tokenizer.ggml.tokens and "
                             f"tokenizer.ggml.merges)")
    try:
        return Tokenizer(vocab.encoder, vocab.merges, name=config.name or "gpt2")
    except TokenizerError as e:
        raise TokenizerError(f"{vocab.source}: {e}") from None


def get_tokenizer(name_or_path="124M", *, download: bool = True, offline: bool | None = None):
    """The tokenizer of a model, by name ('124M', 'gpt2-medium', ...), directory or GGUF file; loaded once
    and shared.

    A name is resolved with resolve_tokenizer, which fetches only the two vocabulary files (ModelNotFound when
    they are not available); a directory needs only those files, not the weights; a GGUF file gives its own
    vocabulary (tokenizer.ggml.*, read from the metadata: no tensor is read; CheckpointError for a damaged
    file, TokenizerError for one without a tokenizer). A directory or file that changed since (size or
    mtime) is read again. This is `gpt2cy.get_tokenizer`.
    """
    from ..text.tokenizer import Tokenizer
    gguf = gguf_file_path(name_or_path)
    if gguf is not None:
        st = os.stat(gguf)
        key = (gguf, (("", st.st_mtime_ns, st.st_size),))
        tok = _TOKENIZERS.get(key)
        if tok is None:
            tok = _TOKENIZERS[key] = _gguf_tokenizer(gguf)
        return tok
    path = resolve_tokenizer(name_or_path, download=download, offline=offline)
    stamp = []
    for fname in (*TOKENIZER_FILES, "vocab.json", "merges.txt"):
        try:
            st = os.stat(os.path.join(path, fname))
            stamp.append((fname, st.st_mtime_ns, st.st_size))
        except OSError:
            pass
    key = (path, tuple(stamp))
    tok = _TOKENIZERS.get(key)
    if tok is None:
        tok = _TOKENIZERS[key] = Tokenizer.from_dir(path)
    return tok


# --- listing --------------------------------------------------------------------------------------------------

def list_models(models_dir: str | None = None) -> list:
    """One dict per published size, without touching the network or reading model bytes (stats only):

    name: '124M' ...; aliases: the other names it answers to; path: its cache directory;
    cached: all five files present; verified: cached and recorded as verified with the files unchanged;
    size_bytes: bytes of the model's files on disk (partial downloads included); published_bytes: download size.
    """
    out = []
    for size in SIZES:
        path = model_path(size, models_dir)
        on_disk = 0
        for f in FILES:
            for p in (os.path.join(path, f), os.path.join(path, f + PARTIAL_SUFFIX)):
                try:
                    on_disk += os.stat(p).st_size
                except OSError:
                    pass
        cached = not missing_files(path)
        out.append({
            "name": size,
            "aliases": sorted(a for a, s in ALIASES.items() if s == size and a != size.lower()),
            "path": path,
            "cached": cached,
            "verified": cached and is_verified(path),
            "size_bytes": on_disk,
            "published_bytes": published_bytes(size),
        })
    return out
