"""GPT-2 hyper-parameters (hparams.json) and the four published sizes."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, asdict

from .errors import CheckpointError


@dataclass(frozen=True)
class Config:
    """The model's shape, as in OpenAI's hparams.json."""
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    name: str = ""

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_params(self) -> int:
        d, L = self.n_embd, self.n_layer
        return self.n_vocab * d + self.n_ctx * d + L * (12 * d * d + 13 * d) + 2 * d

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("name")
        return d

    @classmethod
    def from_dict(cls, raw, source: str = "hparams.json", name: str = "") -> "Config":
        """Validate a parsed hparams mapping; raise CheckpointError naming `source` if it is wrong."""
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        vals = {}
        for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
            v = raw.get(key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise CheckpointError(f"{source}: '{key}' must be an integer, got {v!r}")
            if not 0 < v <= 1 << 20:
                raise CheckpointError(f"{source}: '{key}' = {v} is out of range")
            vals[key] = v
        if vals["n_embd"] % vals["n_head"]:
            raise CheckpointError(
                f"{source}: n_embd {vals['n_embd']} is not divisible by n_head {vals['n_head']}")
        return cls(name=name, **vals)

    @classmethod
    def from_file(cls, path: str, name: str = "") -> "Config":
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO or device would block or never end
            raise CheckpointError(f"{path}: not a regular file")
        try:
            with open(path, "rb") as f:
                raw = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        return cls.from_dict(raw, source=path, name=name or os.path.basename(os.path.dirname(os.path.abspath(path))))


# The published checkpoints (openai/gpt-2 download_model.py); data bytes = 4 * n_params.
PUBLISHED = {
    "124M": Config(50257, 1024, 768, 12, 12, "124M"),
    "355M": Config(50257, 1024, 1024, 16, 24, "355M"),
    "774M": Config(50257, 1024, 1280, 20, 36, "774M"),
    "1558M": Config(50257, 1024, 1600, 25, 48, "1558M"),
}
