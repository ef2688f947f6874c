"""The one table of GPT-2's tensors: canonical names, shapes (from a Config) and what each one is.

Every other module derives from this table: the checkpoint readers (which names to look for, and the TF and HF
spellings), the engine (which pointer goes where), the random-weight writer and the tests. Shapes are
gpt2cy's canonical ones: 2-D weights are [in, out] as OpenAI's Conv1D stores them; wte is [n_vocab, n_embd].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

from .config import Config

# role: "matmul" (a [in, out] weight the block loop multiplies by), "embedding" (wte: looked up by id and,
# tied, the output projection), "positions" (wpe), "vector" (biases and layer-norm gains)
MATMUL, EMBEDDING, POSITIONS, VECTOR = "matmul", "embedding", "positions", "vector"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the model: canonical name, shape, role, and its layer (None for the global ones)."""
    name: str
    shape: Tuple[int, ...]
    role: str
    layer: int | None = None

    @property
    def leaf(self) -> str:
        """The name within its layer: 'attn.c_attn.w' for 'h3.attn.c_attn.w'."""
        return self.name.split(".", 1)[1] if self.layer is not None else self.name


def _layer_table(C: int) -> Tuple[Tuple[str, Tuple[int, ...], str], ...]:
    # per-layer parameters in the order the forward pass uses them
    return (("ln_1.g", (C,), VECTOR), ("ln_1.b", (C,), VECTOR),
            ("attn.c_attn.w", (C, 3 * C), MATMUL), ("attn.c_attn.b", (3 * C,), VECTOR),
            ("attn.c_proj.w", (C, C), MATMUL), ("attn.c_proj.b", (C,), VECTOR),
            ("ln_2.g", (C,), VECTOR), ("ln_2.b", (C,), VECTOR),
            ("mlp.c_fc.w", (C, 4 * C), MATMUL), ("mlp.c_fc.b", (4 * C,), VECTOR),
            ("mlp.c_proj.w", (4 * C, C), MATMUL), ("mlp.c_proj.b", (C,), VECTOR))


LAYER_PARAMS = tuple(name for name, _, _ in _layer_table(1))


def tensor_specs(config: Config) -> Iterator[TensorSpec]:
    """Every tensor a model of this config has, in file order: wte, wpe, the layers, ln_f."""
    C = config.n_embd
    yield TensorSpec("wte", (config.n_vocab, C), EMBEDDING)
    yield TensorSpec("wpe", (config.n_ctx, C), POSITIONS)
    table = _layer_table(C)
    for i in range(config.n_layer):
        for leaf, shape, role in table:
            yield TensorSpec(f"h{i}.{leaf}", shape, role, i)
    yield TensorSpec("ln_f.g", (C,), VECTOR)
    yield TensorSpec("ln_f.b", (C,), VECTOR)


def expected_shapes(config: Config) -> Dict[str, Tuple[int, ...]]:
    """Canonical name -> shape of every tensor of a model of this config."""
    return {s.name: s.shape for s in tensor_specs(config)}
