"""The one model-directory detector: which kind of directory it is, and where its weights, config and
vocabulary files are. Both the loader (formats/checkpoint.py) and the hub's path resolution use it.

    OpenAI  hparams.json + <prefix>.index + <prefix>.data-00000-of-00001 (TF tensor bundle) + encoder.json +
            vocab.bpe. The prefix is model.ckpt, else the one a TF `checkpoint` file names (gpt-2-simple's
            model-1000), else the directory's only *.index.
    HF      model.safetensors [+ config.json] + vocab.json + merges.txt
    GGUF    one FILE.gguf (llama.cpp's format): weights, hparams and tokenizer in one file (formats/gguf.py)

A directory holding both kinds of weights is read as OpenAI's. Either pair of vocabulary file names is
accepted with either kind of weights (Tokenizer.from_dir reads both).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import CheckpointError

TF_PREFIX = "model.ckpt"
HPARAMS = "hparams.json"
HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"
OPENAI_VOCAB = ("encoder.json", "vocab.bpe")
HF_VOCAB = ("vocab.json", "merges.txt")
TF, SAFETENSORS, GGUF = "tf", "safetensors", "gguf"
GGUF_MAGIC = b"GGUF"


def tf_data_file(prefix: str, shard: int = 0, num_shards: int = 1) -> str:
    """P.data-00000-of-00001 (TensorFlow tensor_bundle naming.cc DataFilename)."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


@dataclass(frozen=True)
class Layout:
    """A model directory's files. Paths are joined onto `path`; only `weights` is known to exist."""
    kind: str                        # TF ("tf": OpenAI's bundle), SAFETENSORS ("safetensors": HF's), GGUF
    path: str                        # the model directory, as given (GGUF: the file)
    weights: str                     # TF: the bundle prefix (dir/model.ckpt); HF: the .safetensors file; GGUF: it
    weight_files: tuple[str, ...]    # the files the weights live in (TF: index + data shard)
    config: str | None               # the file the config is read from; None: HF without config.json
    vocab: tuple[str, str] | None    # (encoder, merges) when both files are present, else None

    @property
    def complete(self) -> bool:
        """Weights, config and vocabulary all present: everything `gpt2cy.load` and the tokenizer need."""
        if self.kind == GGUF:                                  # one file holds all three
            return os.path.isfile(self.weights)
        return (all(os.path.isfile(f) for f in self.weight_files) and self.vocab is not None
                and (self.config is None or os.path.isfile(self.config)))

    def missing(self) -> list[str]:
        """The files of this layout that are absent (names as users know them)."""
        out = [os.path.basename(f) for f in self.weight_files if not os.path.isfile(f)]
        if self.kind == GGUF:
            return out
        if self.config is not None and not os.path.isfile(self.config):
            out.append(os.path.basename(self.config))
        if self.vocab is None:
            out.extend(n for n in (OPENAI_VOCAB if self.kind == TF else HF_VOCAB)
                       if not os.path.isfile(os.path.join(self.path, n)))
        return out


def find_vocab(model_dir: str) -> tuple[str, str] | None:
    """(encoder, merges) paths: encoder.json + vocab.bpe, else vocab.json + merges.txt; None if neither pair."""
    for names in (OPENAI_VOCAB, HF_VOCAB):
        paths = tuple(os.path.join(model_dir, n) for n in names)
        if all(os.path.isfile(p) for p in paths):
            return paths                                   # type: ignore[return-value]
    return None


def _tf_prefix(model_dir: str) -> str | None:
    """The bundle prefix: model.ckpt, else what the `checkpoint` file names, else the only *.index."""
    default = os.path.join(model_dir, TF_PREFIX)
    if os.path.exists(default + ".index"):
        return default
    try:
        with open(os.path.join(model_dir, "checkpoint"), encoding="utf-8") as f:
            m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', f.read(), re.M)
        if m:
            prefix = os.path.join(model_dir, m.group(1))
            if os.path.exists(prefix + ".index"):
                return prefix
    except (OSError, UnicodeDecodeError):
        pass
    try:
        indexes = [f for f in os.listdir(model_dir) if f.endswith(".index")]
    except OSError as e:
        raise CheckpointError(f"{model_dir}: cannot list the directory ({e.strerror})") from None
    if len(indexes) == 1:
        return os.path.join(model_dir, indexes[0][:-len(".index")])
    return None


def is_gguf_file(path) -> bool:
    """True for a regular file named *.gguf or starting with GGUF's magic bytes (a damaged *.gguf still goes to
    the GGUF reader, which names what is wrong)."""
    try:
        path = os.fspath(path)
    except TypeError:
        return False
    if not isinstance(path, str) or not os.path.isfile(path):
        return False
    if path.lower().endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def find_layout(model_dir) -> Layout:
    """The Layout of a model directory or GGUF file, or CheckpointError when it holds no GPT-2 weights."""
    model_dir = os.fspath(model_dir)
    if is_gguf_file(model_dir):
        return Layout(GGUF, model_dir, model_dir, (model_dir,), None, None)
    if not os.path.isdir(model_dir):
        what = "no such directory" if not os.path.exists(model_dir) else "not a directory"
        raise CheckpointError(f"{model_dir}: {what}")
    vocab = find_vocab(model_dir)
    prefix = _tf_prefix(model_dir)
    if prefix is not None:
        return Layout(TF, model_dir, prefix, (prefix + ".index", tf_data_file(prefix)),
                      os.path.join(model_dir, HPARAMS), vocab)
    st = os.path.join(model_dir, HF_WEIGHTS)
    if os.path.exists(st):
        config = None
        for name in (HF_CONFIG, HPARAMS):                  # config.json, else hparams.json, else the shapes
            if os.path.exists(os.path.join(model_dir, name)):
                config = os.path.join(model_dir, name)
                break
        return Layout(SAFETENSORS, model_dir, st, (st,), config, vocab)
    raise CheckpointError(
        f"{model_dir}: no GPT-2 checkpoint here (expected {HPARAMS} + {TF_PREFIX}.index + "
        f"{TF_PREFIX}.data-00000-of-00001, or {HF_CONFIG} + {HF_WEIGHTS})")
