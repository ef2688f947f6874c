"""What the engine is given: one WeightTensor per tensor (dtype, shape, raw data, block scales, layout), and
DTYPES, the storage types it has kernels for (the Python half of _dtypes.pyx's kernel table).

    describe("h0.attn.c_attn.w", array)            # an f32 [in, out] weight
    describe("wte", array)                         # layout "out_in": rows are looked up and dotted with
    describe_all(config, tensors, dtypes)          # every tensor of tensors.py's table, checked
    convert(name, array, "q8_0", matmul=True)      # float32 -> a WeightTensor of another dtype (at load)
    to_float32(wt)                                 # the exact float32 values the kernels multiply by

A dtype here is a short name: "f32", "bf16" (uint16 bit patterns, round to nearest even), "q8_0" (ggml's
blocks: 32 values in 34 bytes, an fp16 scale then 32 int8, the scale inside the block, so `scales` is None),
"q4_0" (ggml's 18-byte blocks: an fp16 scale then 32 4-bit values, value = d * (q - 8)).
f32 is the trivial case (block 1, 4 bytes). Each dtype's matmul kernel reads one layout (`matmul_layout`):
f32 and bf16 keep OpenAI's [in, out]; q8_0's and q4_0's blocks run along the input dimension, so their matmul weights are
stored transposed, [out, in] (`transposed`), like wte. `shape` is always the stored [rows, cols].
Types the engine has no kernels for (f16 from safetensors files) are widened to f32 once, in gpt2cy.model
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
    matmul_layout: str = IN_OUT     # the layout its linear kernel reads matmul weights in

    def row_bytes(self, n: int) -> int:
        """Bytes of a row of n values (n a multiple of `block`)."""
        return n // self.block * self.block_bytes


DTYPES: Dict[str, DType] = {
    "f32": DType("f32", 0, np.dtype(np.float32)),
    "bf16": DType("bf16", 1, np.dtype(np.uint16), block_bytes=2),
    "q8_0": DType("q8_0", 2, np.dtype(np.uint8), block=32, block_bytes=34, matmul_layout=OUT_IN),
    "q4_0": DType("q4_0", 3, np.dtype(np.uint8), block=32, block_bytes=18, matmul_layout=OUT_IN),
}


def supported() -> str:
    """The dtypes with kernels, for messages: 'f32, bf16, q8_0'."""
    return ", ".join(DTYPES)


def _layouts() -> str:
    return ", ".join(f"{n} ({d.matmul_layout})" for n, d in DTYPES.items())


@dataclass(frozen=True)
class WeightTensor:
    """One tensor as the engine reads it: `shape` is the stored [rows, cols] (tensors.py's shape, reversed when
    `transposed`), `data` the raw numpy array of its bytes (for f32: the float32 array itself), `scales`
    separate block scales (None for f32, bf16 and q8_0, whose scales sit in the blocks)."""
    name: str
    dtype: str
    shape: Tuple[int, ...]
    data: np.ndarray
    scales: Optional[np.ndarray] = None
    layout: str = IN_OUT
    transposed: bool = False       # a matmul weight stored [out, in] (layout OUT_IN)

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
        shape = spec.shape
        if isinstance(a, WeightTensor):
            wt = a
            if spec.role == MATMUL and wt.dtype in DTYPES:
                layout = DTYPES[wt.dtype].matmul_layout
                if wt.layout != layout:
                    raise ValueError(f"tensor '{spec.name}' is {wt.dtype!r} with layout {wt.layout!r}; the "
                                     f"engine has kernels for: {_layouts()}")
            if wt.layout != layout:
                raise ValueError(f"tensor '{spec.name}' has layout {wt.layout!r}, expected {layout!r}")
            if spec.role == MATMUL and layout == OUT_IN:
                shape = shape[::-1]
                if not wt.transposed:
                    raise ValueError(f"tensor '{spec.name}': an out_in matmul weight must be marked transposed")
        else:
            if isinstance(a, np.ndarray) and a.shape != spec.shape and a.dtype == np.float32:
                raise ValueError(f"tensor '{spec.name}' has shape {a.shape}, expected {spec.shape}")
            wt = describe(spec.name, a, dtypes.get(spec.name, "f32"), layout, spec.shape)
            if spec.role == MATMUL and DTYPES[wt.dtype].matmul_layout != IN_OUT:
                raise ValueError(f"tensor '{spec.name}': {wt.dtype} matmul weights are stored [out, in]; "
                                 f"pass a WeightTensor from convert()")
        if wt.shape != shape:
            raise ValueError(f"tensor '{spec.name}' has shape {wt.shape}, expected {shape}")
        if spec.role not in (MATMUL, EMBEDDING) and wt.dtype != "f32":
            raise ValueError(f"tensor '{spec.name}' is {wt.dtype}; biases, layer norms and wpe must be f32")
        out[spec.name] = wt
    return out


def convert(name: str, array: np.ndarray, dtype: str, matmul: bool, n_threads: int = 1) -> WeightTensor:
    """float32 `array` (tensors.py's shape: [in, out] for a matmul weight, [V, C] for wte) as a WeightTensor
    of `dtype`, converted by the compiled, parallel quantizers (_quantize.pyx). matmul: a block's matmul
    weight (q8_0 then stores it transposed, [out, in]). Raises ValueError naming the tensor."""
    from . import _quantize
    dt = DTYPES.get(dtype)
    if dt is None:
        raise ValueError(f"tensor '{name}': no kernels for dtype {dtype!r}; the engine has kernels for: "
                         f"{supported()}")
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
        raise ValueError(f"tensor '{name}' must be a 2-D float32 array to convert")
    layout = dt.matmul_layout if matmul else OUT_IN
    if dtype == "f32":
        return describe(name, array, "f32", layout)
    if dtype == "bf16":
        return describe(name, _quantize.to_bf16(array, n_threads), "bf16", layout)
    transposed = matmul and layout == OUT_IN
    rows, cols = (array.shape[::-1] if transposed else array.shape)
    if cols % dt.block:
        raise ValueError(f"tensor '{name}': {dtype} needs a multiple of {dt.block} inputs per row, got {cols}")
    if dtype == "q8_0":
        data = _quantize.to_q8_0_t(array, n_threads) if transposed else _quantize.to_q8_0(array, n_threads)
    else:
        data = _quantize.to_q4_0_t(array, n_threads) if transposed else _quantize.to_q4_0(array, n_threads)
    wt = describe(name, data, dtype, layout, (rows, cols))
    return WeightTensor(wt.name, wt.dtype, wt.shape, wt.data, None, wt.layout, transposed)


def to_float32(wt: WeightTensor) -> np.ndarray:
    """The float32 values the kernels multiply by, in tensors.py's shape ([in, out] for matmul weights,
    whatever their storage): for tests and the numpy reference."""
    from . import _quantize
    if wt.dtype == "f32":
        out = wt.data.reshape(wt.shape)
    elif wt.dtype == "bf16":
        out = _quantize.bf16_to_f32(wt.data.reshape(wt.shape))
    elif wt.dtype == "q8_0":
        out = _quantize.q8_0_to_f32(wt.data.reshape(wt.shape[0], -1), wt.shape[1])
    elif wt.dtype == "q4_0":
        out = _quantize.q4_0_to_f32(wt.data.reshape(wt.shape[0], -1), wt.shape[1])
    else:
        raise ValueError(f"tensor '{wt.name}': unknown dtype {wt.dtype!r}")
    return np.ascontiguousarray(out.T) if wt.transposed else out
