"""What the engine is given: one WeightTensor per tensor (dtype, shape, raw data, block scales, layout), and
DTYPES, the storage types it has kernels for (the Python half of _dtypes.pyx's kernel table).

    describe("h0.attn.c_attn.w", array)            # an f32 [in, out] weight
    describe("wte", array)                         # layout "out_in": rows are looked up and dotted with
    describe_all(config, tensors, dtypes)          # every tensor of tensors.py's table, checked

A dtype here is a short name ("f32"). Block-quantised types (none yet) store `block` values in `block_bytes`
bytes with one scale per block in `scales`; f32 is the trivial case (block 1, 4 bytes, no scales). Types the
engine has no kernels for (f16, bf16 from safetensors files) are widened to f32 once, in gpt2cy.model.Model
(with formats/dtypes.py's to_float32); the engine itself refuses them with a ValueError naming DTYPES.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..tensors import EMBEDDING, MATMUL, tensor_specs

# layouts: how a 2-D weight's rows are read
IN_OUT = "in_out"      # [in, out]: x @ W (OpenAI's Conv1D weights)
OUT_IN = "out_in"      # [out, in]: rows looked up by id, and x @ W.T (wte as the tied output projection)
VECTOR = "vector"      # 1-D biases and layer-norm parameters, and wpe's rows: always f32


@dataclass(frozen=True)
class DType:
    """A storage type the engine has kernels for: `block` values take `block_bytes` bytes (plus one scale
    per block in a WeightTensor's `scales` when `scale_dtype` is set); `storage` is the numpy dtype of
    WeightTensor.data."""
    name: str
    code: int                       # index in _dtypes.pyx's kernel table
    storage: np.dtype
    block: int = 1
    block_bytes: int = 4
    scale_dtype: Optional[np.dtype] = None

    def row_bytes(self, n: int) -> int:
        """Bytes of a row of n values (n a multiple of `block`)."""
        return n // self.block * self.block_bytes


DTYPES: Dict[str, DType] = {
    "f32": DType("f32", 0, np.dtype(np.float32)),
}

def supported() -> str:
    """The dtypes with kernels, for messages: 'f32'."""
    return ", ".join(DTYPES)


@dataclass(frozen=True)
class WeightTensor:
    """One tensor as the engine reads it: `shape` is the logical shape (tensors.py's), `data` the raw
    numpy array of its bytes (for f32: the float32 array itself), `scales` the block scales (None for f32)."""
    name: str
    dtype: str
    shape: Tuple[int, ...]
    data: np.ndarray
    scales: Optional[np.ndarray] = None
    layout: str = IN_OUT

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) == 2 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]


def describe(name: str, array, dtype: str = "f32", layout: Optional[str] = None, shape=None,
             scales=None) -> WeightTensor:
    """A WeightTensor for `array` holding `dtype` data, after checking it can be read in place: the storage
    numpy dtype, C-contiguous, aligned, and (for f32) the shape. layout: IN_OUT for 2-D arrays by default,
    VECTOR for 1-D. Raises ValueError naming the tensor."""
    dt = DTYPES.get(dtype)
    if dt is None:
        raise ValueError(f"tensor '{name}' has dtype {dtype!r}; the engine has kernels for: {supported()}")
    if not isinstance(array, np.ndarray):
        raise ValueError(f"tensor '{name}' must be a numpy array, got {type(array).__name__}")
    if array.dtype != dt.storage:
        want = "float32" if dtype == "f32" else str(dt.storage)
        raise ValueError(f"tensor '{name}' is {array.dtype}, expected a C-contiguous {want} array ({dtype})")
    if not array.flags.c_contiguous or not array.flags.aligned:
        raise ValueError(f"tensor '{name}' must be a C-contiguous, aligned {dt.storage} array")
    shape = tuple(array.shape) if shape is None else tuple(shape)
    if layout is None:
        layout = VECTOR if len(shape) == 1 else IN_OUT
    if dt.scale_dtype is None:
        if scales is not None:
            raise ValueError(f"tensor '{name}': {dtype} has no block scales")
        if dt.block == 1 and tuple(array.shape) != shape:
            raise ValueError(f"tensor '{name}' has shape {tuple(array.shape)}, expected {shape}")
    rows = shape[0] if len(shape) == 2 else 1
    if shape[-1] % dt.block or array.nbytes != rows * dt.row_bytes(shape[-1]):
        raise ValueError(f"tensor '{name}': {array.nbytes} bytes do not hold {dtype} {shape}")
    return WeightTensor(name, dtype, shape, array, scales, layout)


def describe_all(config, tensors: Mapping[str, object], dtypes: Optional[Mapping[str, str]] = None
                 ) -> Dict[str, WeightTensor]:
    """Every tensor of tensors.py's table for `config`, described and checked against its shape.

    tensors: canonical name -> numpy array or WeightTensor; dtypes: name -> dtype for the arrays (missing
    names: "f32"). Only matmul weights and wte may be other than f32. Raises ValueError naming the tensor.
    """
    dtypes = dtypes or {}
    out: Dict[str, WeightTensor] = {}
    for spec in tensor_specs(config):
        a = tensors.get(spec.name)
        if a is None:
            raise ValueError(f"missing tensor '{spec.name}'")
        layout = OUT_IN if spec.role == EMBEDDING else IN_OUT if spec.role == MATMUL else VECTOR
        if isinstance(a, WeightTensor):
            wt = a
            if wt.layout != layout:
                raise ValueError(f"tensor '{spec.name}' has layout {wt.layout!r}, expected {layout!r}")
        else:
            if isinstance(a, np.ndarray) and a.shape != spec.shape and a.dtype == np.float32:
                raise ValueError(f"tensor '{spec.name}' has shape {a.shape}, expected {spec.shape}")
            wt = describe(spec.name, a, dtypes.get(spec.name, "f32"), layout, spec.shape)
        if wt.shape != spec.shape:
            raise ValueError(f"tensor '{spec.name}' has shape {wt.shape}, expected {spec.shape}")
        if spec.role not in (MATMUL, EMBEDDING) and wt.dtype != "f32":
            raise ValueError(f"tensor '{spec.name}' is {wt.dtype}; biases, layer norms and wpe must be f32")
        out[spec.name] = wt
    return out
