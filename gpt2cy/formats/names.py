"""How TensorFlow and HuggingFace spell gpt2cy's canonical tensors (gpt2cy/tensors.py), for both readers.

    tf_name("h0.attn.c_attn.w")  -> "model/h0/attn/c_attn/w"      (openai/gpt-2 src/model.py variable scopes)
    tf_shape("h0.attn.c_attn.w", (C, 3C)) -> (1, C, 3C)          (TF stores each Conv1D weight as [1, in, out])
    hf_name("h0.attn.c_attn.w")  -> "h.0.attn.c_attn.weight"     (transformers' GPT2Model state dict)
"""
from __future__ import annotations

import re

from ..config import Config
from ..tensors import tensor_specs


def tf_name(canonical: str) -> str:
    """'h0.attn.c_attn.w' -> 'model/h0/attn/c_attn/w' (openai/gpt-2 variable scopes)."""
    return "model/" + canonical.replace(".", "/")


def tf_shape(canonical: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """TF stores each Conv1D weight as [1, in, out]."""
    return (1, *shape) if canonical.endswith(".w") else tuple(shape)


def tf_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """TF variable name -> shape, as in OpenAI's checkpoint for this config."""
    return {tf_name(s.name): tf_shape(s.name, s.shape) for s in tensor_specs(config)}


def hf_name(canonical: str) -> str:
    """'h0.attn.c_attn.w' -> 'h.0.attn.c_attn.weight' (transformers' GPT2Model state dict)."""
    name = re.sub(r"^h(\d+)\.", r"h.\1.", canonical)
    if name in ("wte", "wpe"):
        return name + ".weight"
    stem, leaf = name.rsplit(".", 1)
    return stem + (".weight" if leaf in ("w", "g") else ".bias")


# HF tensors that are not weights: the causal-mask buffers some exports carry, and lm_head (tied to wte).
HF_IGNORED = re.compile(r"^(?:h\.\d+\.attn\.(?:bias|masked_bias)|lm_head\.weight)$")
HF_PREFIX = "transformer."       # GPT2LMHeadModel's state dict prefixes the GPT2Model names with it
