"""Model names, the cache directory, and turning `-m NAME|PATH` into a model directory.

(Minimal first version: paths and cached names. Downloads are added by issue 5's work.)
"""
from __future__ import annotations

import os

from .errors import ModelNotFound

SIZES = ("124M", "355M", "774M", "1558M")
ALIASES = {
    "124m": "124M", "117m": "124M", "small": "124M", "gpt2": "124M",
    "355m": "355M", "345m": "355M", "medium": "355M", "gpt2-medium": "355M",
    "774m": "774M", "large": "774M", "gpt2-large": "774M",
    "1558m": "1558M", "1.5b": "1558M", "xl": "1558M", "gpt2-xl": "1558M",
}


def canonical_name(name: str):
    """'gpt2-medium' -> '355M'; None when `name` is not a known model name."""
    return ALIASES.get(name.strip().lower())


def cache_root() -> str:
    """$GPT2CY_HOME, else $XDG_CACHE_HOME/gpt2cy, else ~/.cache/gpt2cy."""
    if os.environ.get("GPT2CY_HOME"):
        return os.path.abspath(os.environ["GPT2CY_HOME"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "gpt2cy")


def models_dir() -> str:
    return os.path.join(cache_root(), "models")


def resolve_model(name_or_path: str, download: bool = True, offline=None) -> str:
    """Return the directory holding the model named or pointed at by `name_or_path`."""
    if os.path.isdir(name_or_path):
        return os.path.abspath(name_or_path)
    size = canonical_name(name_or_path)
    if size is None:
        raise ModelNotFound(f"{name_or_path!r} is neither a model directory nor a model name "
                            f"({', '.join(SIZES)})")
    path = os.path.join(models_dir(), size)
    if not os.path.isdir(path):
        raise ModelNotFound(f"model {size} is not downloaded; run: gpt2cy download {size}")
    return path
