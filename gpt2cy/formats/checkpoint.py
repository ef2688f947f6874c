"""Load a GPT-2 model directory as float32 views of the mapped weight file, checked against its hparams.

Two layouts are understood:
  OpenAI  hparams.json + model.ckpt.index + model.ckpt.data-00000-of-00001   (TF tensor bundle)
  HF      config.json + model.safetensors

Every tensor is exposed under a canonical name ('wte', 'h0.attn.c_attn.w', ...) as a read-only, C-contiguous
float32 numpy view of a read-only mmap: loading reads the small index, never the data. Conv1D weights keep
the checkpoint's [in, out] layout with TF's leading 1 squeezed away. `verify` is the explicit full read.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..errors import CheckpointError

TF_PREFIX = "model.ckpt"
HPARAMS = "hparams.json"
HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"

# Per-layer parameters, in the order the forward pass uses them.
LAYER_PARAMS = ("ln_1.g", "ln_1.b", "attn.c_attn.w", "attn.c_attn.b", "attn.c_proj.w", "attn.c_proj.b",
                "ln_2.g", "ln_2.b", "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w", "mlp.c_proj.b")


def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every weight a model of this config has (2-D weights are [in, out])."""
    V, T, d, L = config.n_vocab, config.n_ctx, config.n_embd, config.n_layer
    per_layer = {"ln_1.g": (d,), "ln_1.b": (d,), "attn.c_attn.w": (d, 3 * d), "attn.c_attn.b": (3 * d,),
                 "attn.c_proj.w": (d, d), "attn.c_proj.b": (d,), "ln_2.g": (d,), "ln_2.b": (d,),
                 "mlp.c_fc.w": (d, 4 * d), "mlp.c_fc.b": (4 * d,), "mlp.c_proj.w": (4 * d, d),
                 "mlp.c_proj.b": (d,)}
    shapes = {"wte": (V, d), "wpe": (T, d)}
    for i in range(L):
        shapes.update({f"h{i}.{p}": per_layer[p] for p in LAYER_PARAMS})
    shapes.update({"ln_f.g": (d,), "ln_f.b": (d,)})
    return shapes


def tf_name(canonical: str) -> str:
    """'h0.attn.c_attn.w' -> 'model/h0/attn/c_attn/w' (openai/gpt-2 variable scopes)."""
    return "model/" + canonical.replace(".", "/")


def tf_shape(canonical: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """TF stores each Conv1D weight as [1, in, out]."""
    return (1, *shape) if canonical.endswith(".w") else shape


def hf_name(canonical: str) -> str:
    """'h0.attn.c_attn.w' -> 'h.0.attn.c_attn.weight' (transformers' GPT2Model state dict)."""
    name = re.sub(r"^h(\d+)\.", r"h.\1.", canonical)
    if name in ("wte", "wpe"):
        return name + ".weight"
    stem, leaf = name.rsplit(".", 1)
    return stem + (".weight" if leaf in ("w", "g") else ".bias")


def tf_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """TF variable name -> shape, as in OpenAI's checkpoint for this config."""
    return {tf_name(k): tf_shape(k, s) for k, s in expected_shapes(config).items()}


@dataclass
class Weights:
    """A loaded model: its config and every weight as a read-only float32 view (see module docstring)."""
    config: Config
    tensors: dict[str, np.ndarray]
    path: str                    # the model directory
    format: str                  # "tf" or "safetensors"
    files: tuple[str, ...]       # the files the weights live in

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
    checksummed: bool            # False for safetensors, which store no checksums


# --- layout detection -----------------------------------------------------------------------------

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


def find_layout(model_dir: str) -> tuple[str, str]:
    """("tf", bundle prefix) or ("safetensors", file path) for a model directory; OpenAI's layout wins."""
    if not os.path.isdir(model_dir):
        what = "no such directory" if not os.path.exists(model_dir) else "not a directory"
        raise CheckpointError(f"{model_dir}: {what}")
    prefix = _tf_prefix(model_dir)
    if prefix is not None:
        return "tf", prefix
    st = os.path.join(model_dir, HF_WEIGHTS)
    if os.path.exists(st):
        return "safetensors", st
    raise CheckpointError(
        f"{model_dir}: no GPT-2 checkpoint here (expected {HPARAMS} + {TF_PREFIX}.index + "
        f"{TF_PREFIX}.data-00000-of-00001, or {HF_CONFIG} + {HF_WEIGHTS})")


def _config_source(model_dir: str, layout: str) -> str:
    """hparams.json for OpenAI's layout; config.json (else hparams.json) for HF's."""
    hf = os.path.join(model_dir, HF_CONFIG)
    if layout == "safetensors" and (os.path.exists(hf) or not os.path.exists(os.path.join(model_dir, HPARAMS))):
        return hf
    return os.path.join(model_dir, HPARAMS)


def _config_label(model_dir: str, layout: str) -> str:
    """The file the config came from, as error messages name it."""
    source = _config_source(model_dir, layout)
    if source.endswith(HF_CONFIG) and not os.path.exists(source):
        return f"the shapes in {HF_WEIGHTS} (no {HF_CONFIG})"
    return source


def load_config(model_dir: str, layout: str | None = None) -> Config:
    """The model's Config from hparams.json (OpenAI) or config.json (HF).

    An HF directory without config.json (model.safetensors + vocab.json + merges.txt only) gets its config
    from the tensor shapes, when they are those of a published size.
    """
    layout = layout or find_layout(model_dir)[0]
    name = os.path.basename(os.path.normpath(os.path.abspath(model_dir)))
    source = _config_source(model_dir, layout)
    if os.path.exists(source) and not os.path.isdir(source) and not os.path.isfile(source):
        raise CheckpointError(f"{source}: not a regular file")   # a FIFO would block open() forever
    if source.endswith(HF_CONFIG):
        if not os.path.exists(source):
            return _config_from_shapes(os.path.join(model_dir, HF_WEIGHTS), name)
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


def match_tf_entries(index, config: Config, hparams_path: str = HPARAMS) -> dict[str, str]:
    """Check a bundle index against a config: canonical name -> TF name, or CheckpointError.

    Every expected tensor must be present as float32 with the shape the config implies. Other tensors
    under 'model/' are an error unless they are optimizer slots of a weight ('model/wte/Adam'); tensors
    outside 'model/' (global_step, beta1_power) are ignored.
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
    for canonical, shape in expected_shapes(config).items():
        name = tf_name(canonical)
        e = entries[name]
        if e.dtype != 1:
            raise CheckpointError(f"{index.path}: tensor '{name}' is {e.dtype_name}, expected float32")
        if e.shape != tf_shape(canonical, shape):
            raise CheckpointError(f"{index.path}: tensor '{name}' has shape {list(e.shape)}, but "
                                  f"{hparams_path} ({_describe(config)}) implies {list(tf_shape(canonical, shape))}")
        out[canonical] = name
    return out


def _load_tf(model_dir: str, prefix: str, config: Config, hparams_path: str) -> Weights:
    from .tfbundle import TensorBundle
    bundle = TensorBundle(prefix)
    names = match_tf_entries(bundle.index, config, hparams_path)
    shapes = expected_shapes(config)
    tensors = {c: bundle.tensor(n).reshape(shapes[c]) for c, n in names.items()}
    return Weights(config, tensors, model_dir, "tf", (bundle.index.path, bundle.data_path))


def _load_safetensors(model_dir: str, path: str, config: Config, config_path: str) -> Weights:
    from .safetensors import SafetensorsFile, match_hf_names
    st = SafetensorsFile(path)
    names = match_hf_names(st, expected_shapes(config), config_path, _describe(config))
    tensors = {c: st.float32(n) for c, n in names.items()}
    return Weights(config, tensors, model_dir, "safetensors", (path,))


def load_weights(model_dir: str) -> Weights:
    """Open a model directory (OpenAI or HF layout) and view every weight without reading the data.

    Raises CheckpointError("<file>: <what is wrong>") for anything missing, malformed, or inconsistent
    with the hparams. Call `verify` to also check the tensor bytes.
    """
    model_dir = os.fspath(model_dir)
    layout, path = find_layout(model_dir)
    config = load_config(model_dir, layout)
    source = _config_label(model_dir, layout)
    if layout == "tf":
        return _load_tf(model_dir, path, config, source)
    return _load_safetensors(model_dir, path, config, source)


def verify(model_dir: str, check_finite: bool = True) -> VerifyResult:
    """Read every byte of the weights: CRC-32C of each tensor (TF layout) and, by default, no NaN/inf.

    Raises CheckpointError naming the file and tensor on the first problem.
    """
    model_dir = os.fspath(model_dir)
    layout, path = find_layout(model_dir)
    config = load_config(model_dir, layout)
    source = _config_label(model_dir, layout)
    if layout == "tf":
        from .tfbundle import TensorBundle
        bundle = TensorBundle(path)
        match_tf_entries(bundle.index, config, source)
        n_bytes = bundle.verify(check_finite=check_finite)
        return VerifyResult(model_dir, layout, len(bundle.entries), n_bytes, True)
    weights = _load_safetensors(model_dir, path, config, source)
    n_bytes = 0
    if check_finite:
        from ._crc32c import checksum_f32
        for name, a in weights.tensors.items():
            _, nonfinite = checksum_f32(a.reshape(-1).view(np.uint8))
            if nonfinite:
                raise CheckpointError(f"{path}: tensor '{hf_name(name)}' holds {nonfinite} NaN/inf values")
            n_bytes += a.nbytes
    return VerifyResult(model_dir, layout, len(weights.tensors), n_bytes, False)
