"""Load a GPT-2 model directory as views of the mapped weight file, checked against its hparams.

Three layouts are understood (formats/layout.py finds which, and where its files are):
  OpenAI  hparams.json + model.ckpt.index + model.ckpt.data-00000-of-00001   (TF tensor bundle)
  HF      config.json + model.safetensors
  GGUF    one FILE.gguf (llama.cpp's format; formats/gguf.py): hparams, weights and tokenizer

Every tensor is exposed under a canonical name ('wte', 'h0.attn.c_attn.w', ...; gpt2cy/tensors.py) as a
read-only, C-contiguous numpy view of a read-only mmap in its stored type (`Weights.dtypes`: f32 as float32,
f16 as float16, bf16 as uint16 bit patterns): loading reads the small index, never the data. Conv1D weights
keep the checkpoint's [in, out] layout with TF's leading 1 squeezed away. `verify` is the explicit full read.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..config import Config
from ..errors import CheckpointError
from ..tensors import expected_shapes, tensor_specs
from . import dtypes as st_types
from .layout import GGUF, HF_CONFIG, HF_WEIGHTS, HPARAMS, SAFETENSORS, TF, Layout, find_layout
from .names import hf_name, tf_name, tf_shape, tf_shapes

__all__ = ["Weights", "VerifyResult", "find_layout", "load_config", "load_weights", "match_tf_entries", "verify"]


@dataclass
class Weights:
    """A loaded model: its config and every weight as a read-only view in its stored type.

    tensors: canonical name -> numpy array (f32: float32; f16: float16; bf16: uint16 bit patterns).
    dtypes: canonical name -> "f32", "f16" or "bf16" (formats/dtypes.py), and from a GGUF file also "q8_0" or
    "q4_0": ggml's blocks as uint8 rows along the output dimension ([out, in/32 x block bytes] for a matmul
    weight, [n_vocab, ...] for wte; formats/gguf.py). A GGUF file's float matmul weights are transposed views
    (not C-contiguous). Widening or converting a type is gpt2cy.model's business, not the reader's.
    vocab: the tokenizer a GGUF file carries (formats.gguf.Vocab), else None (the directory's vocab files).
    """
    config: Config
    tensors: dict[str, np.ndarray]
    path: str                    # the model directory (GGUF: the file)
    format: str                  # "tf", "safetensors" or "gguf"
    files: tuple[str, ...]       # the files the weights live in
    dtypes: dict[str, str] = field(default_factory=dict)
    vocab: object = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` checked."""
    path: str
    format: str
    n_tensors: int
    n_bytes: int
    checksummed: bool            # False for safetensors and GGUF, which store no checksums


# --- config ---------------------------------------------------------------------------------------

def _config_label(layout: Layout) -> str:
    """The file the config came from, as error messages name it."""
    if layout.config is None:
        return f"the shapes in {HF_WEIGHTS} (no {HF_CONFIG})"
    return layout.config


def load_config(model_dir, layout: Layout | None = None) -> Config:
    """The model's Config from hparams.json (OpenAI) or config.json (HF).

    An HF directory without config.json (model.safetensors + vocab.json + merges.txt only) gets its config
    from the tensor shapes, when they are those of a published size.
    """
    layout = layout or find_layout(model_dir)
    if layout.kind == GGUF:
        from .gguf import GGUFFile, gguf_config
        return gguf_config(GGUFFile(layout.weights))
    name = os.path.basename(os.path.normpath(os.path.abspath(layout.path)))
    source = layout.config
    if source is None:
        return _config_from_shapes(layout.weights, name)
    if os.path.exists(source) and not os.path.isdir(source) and not os.path.isfile(source):
        raise CheckpointError(f"{source}: not a regular file")   # a FIFO would block open() forever
    if layout.kind == SAFETENSORS and os.path.basename(source) == HF_CONFIG:
        return _hf_config(source, name)
    return Config.from_file(source, name=name)


def _config_from_shapes(path: str, name: str) -> Config:
    """Config of a config.json-less safetensors file: n_vocab, n_ctx, n_embd and n_layer from the shapes; n_head
    (which no shape shows) from the published size with that n_embd, else CheckpointError."""
    from ..config import PUBLISHED
    from .safetensors import SafetensorsFile
    tensors = SafetensorsFile(path).tensors
    prefix = "transformer." if any(n.startswith("transformer.") for n in tensors) else ""
    wte, wpe = tensors.get(prefix + "wte.weight"), tensors.get(prefix + "wpe.weight")
    if wte is None or wpe is None or len(wte.shape) != 2 or len(wpe.shape) != 2:
        raise CheckpointError(f"{path}: no {HF_CONFIG} beside it, and no 2-D wte.weight/wpe.weight to infer "
                              f"the model's shape from")
    layers = {int(m.group(1)) for n in tensors if (m := re.match(re.escape(prefix) + r"h\.(\d+)\.", n))}
    n_embd = wte.shape[1]
    heads = {c.n_head for c in PUBLISHED.values() if c.n_embd == n_embd}
    if not heads:
        raise CheckpointError(f"{path}: no {HF_CONFIG} beside it, and n_embd {n_embd} is not a published "
                              f"GPT-2 size, so n_head is unknown (add a {HF_CONFIG})")
    raw = {"n_vocab": wte.shape[0], "n_ctx": wpe.shape[0], "n_embd": n_embd, "n_head": heads.pop(),
           "n_layer": max(layers, default=-1) + 1}
    return Config.from_dict(raw, source=f"{path} (shapes; no {HF_CONFIG})", name=name)


def _hf_config(path: str, name: str) -> Config:
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    n_ctx = raw.get("n_positions", raw.get("n_ctx"))
    mapped = {"n_vocab": raw.get("vocab_size"), "n_ctx": n_ctx, "n_embd": raw.get("n_embd"),
              "n_head": raw.get("n_head"), "n_layer": raw.get("n_layer")}
    return Config.from_dict(mapped, source=path, name=name)


# --- loading --------------------------------------------------------------------------------------

def _describe(config: Config) -> str:
    return (f"n_vocab={config.n_vocab}, n_ctx={config.n_ctx}, n_embd={config.n_embd}, "
            f"n_layer={config.n_layer}")


def match_tf_entries(index, config: Config, hparams_path: str = HPARAMS) -> dict[str, tuple[str, str]]:
    """Check a bundle index against a config: canonical name -> (TF name, stored type), or CheckpointError.

    Every expected tensor must be present, stored as f32, f16 or bf16, with the shape the config implies.
    Other tensors under 'model/' are an error unless they are optimizer slots of a weight ('model/wte/Adam');
    tensors outside 'model/' (global_step, beta1_power) are ignored.
    """
    entries = index.entries
    wanted = tf_shapes(config)
    missing = [n for n in wanted if n not in entries]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{index.path}: missing tensor(s) {', '.join(missing[:3])}{more} "
                              f"that {hparams_path} ({_describe(config)}) requires")
    for name in entries:
        if name.startswith("model/") and name not in wanted and name.rsplit("/", 1)[0] not in wanted:
            raise CheckpointError(f"{index.path}: unexpected tensor '{name}' for {hparams_path} "
                                  f"({_describe(config)})")
    out = {}
    for spec in tensor_specs(config):
        name = tf_name(spec.name)
        e = entries[name]
        stored = e.stored_type
        if stored is None:
            raise st_types.unsupported(index.path, name, e.dtype_name)
        if e.shape != tf_shape(spec.name, spec.shape):
            raise CheckpointError(f"{index.path}: tensor '{name}' has shape {list(e.shape)}, but {hparams_path} "
                                  f"({_describe(config)}) implies {list(tf_shape(spec.name, spec.shape))}")
        out[spec.name] = (name, stored)
    return out


def _load_tf(layout: Layout, config: Config, hparams_path: str) -> Weights:
    from .tfbundle import TensorBundle
    bundle = TensorBundle(layout.weights)
    names = match_tf_entries(bundle.index, config, hparams_path)
    shapes = expected_shapes(config)
    tensors = {c: bundle.tensor(n).reshape(shapes[c]) for c, (n, _) in names.items()}
    return Weights(config, tensors, layout.path, TF, (bundle.index.path, bundle.data_path),
                   {c: stored for c, (_, stored) in names.items()})


def _load_safetensors(layout: Layout, config: Config, config_path: str) -> Weights:
    from .safetensors import SafetensorsFile, match_hf_names
    st = SafetensorsFile(layout.weights)
    names = match_hf_names(st, expected_shapes(config), config_path, _describe(config))
    tensors = {c: st.tensor(n) for c, n in names.items()}
    return Weights(config, tensors, layout.path, SAFETENSORS, (layout.weights,),
                   {c: st.stored_type(n) for c, n in names.items()})


def load_weights(model_dir, layout: Layout | None = None) -> Weights:
    """Open a model directory (OpenAI or HF layout) or a GGUF file and view every weight without reading the
    data.

    layout: the directory's Layout when the caller already has it (find_layout(model_dir)).
    Raises CheckpointError("<file>: <what is wrong>") for anything missing, malformed, or inconsistent
    with the hparams, or for a weight stored in a type other than f32, f16, bf16. Call `verify` to also
    check the tensor bytes.
    """
    layout = layout or find_layout(os.fspath(model_dir))
    if layout.kind == GGUF:
        from .gguf import load_gguf
        return load_gguf(layout.weights)
    config = load_config(layout.path, layout)
    source = _config_label(layout)
    if layout.kind == TF:
        return _load_tf(layout, config, source)
    return _load_safetensors(layout, config, source)


def verify(model_dir, check_finite: bool = True) -> VerifyResult:
    """Read every byte of the weights: CRC-32C of each tensor (TF layout) and, by default, no NaN/inf
    (in every stored type).

    Raises CheckpointError naming the file and tensor on the first problem.
    """
    layout = find_layout(os.fspath(model_dir))
    if layout.kind == GGUF:
        from .gguf import verify_gguf
        n_tensors, n_bytes = verify_gguf(layout.weights, check_finite)
        return VerifyResult(layout.path, layout.kind, n_tensors, n_bytes, False)
    config = load_config(layout.path, layout)
    source = _config_label(layout)
    if layout.kind == TF:
        from .tfbundle import TensorBundle
        bundle = TensorBundle(layout.weights)
        match_tf_entries(bundle.index, config, source)
        n_bytes = bundle.verify(check_finite=check_finite)
        return VerifyResult(layout.path, layout.kind, len(bundle.entries), n_bytes, True)
    weights = _load_safetensors(layout, config, source)
    n_bytes = 0
    for name, a in weights.tensors.items():
        if check_finite:
            nonfinite = st_types.count_nonfinite(a, weights.dtypes[name])
            if nonfinite:
                raise CheckpointError(f"{layout.weights}: tensor '{hf_name(name)}' holds {nonfinite} NaN/inf "
                                      f"values")
        n_bytes += a.nbytes
    return VerifyResult(layout.path, layout.kind, len(weights.tensors), n_bytes, False)
