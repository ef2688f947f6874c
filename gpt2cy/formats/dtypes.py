"""The stored types a weight may have, as both readers name them, and the one widening to float32.

A reader reports each tensor's stored type as one of SUPPORTED ("f32", "f16", "bf16") and hands out its bytes
unconverted: f32 as float32, f16 as float16, bf16 as uint16 bit patterns (numpy has no bfloat16). Whoever
needs float32 (an engine without kernels for the type, a finiteness check) calls `to_float32`.
"""
from __future__ import annotations

import numpy as np

from ..errors import CheckpointError

F32, F16, BF16 = "f32", "f16", "bf16"
SUPPORTED = (F32, F16, BF16)
NUMPY = {F32: np.dtype(np.float32), F16: np.dtype(np.float16), BF16: np.dtype(np.uint16)}
ITEMSIZE = {F32: 4, F16: 2, BF16: 2}

CHUNK = 1 << 20                  # elements per step of the chunked passes (bounds their temporaries)


def unsupported(path: str, name: str, stored: str) -> CheckpointError:
    """The error for a weight stored in a type gpt2cy cannot use (ints, f64, f8, ...)."""
    return CheckpointError(f"{path}: tensor '{name}' is stored as {stored}; supported weight types are "
                           f"{', '.join(SUPPORTED)}")


def to_float32(a: np.ndarray, stored: str) -> np.ndarray:
    """`a` (as a reader returns it for `stored`) as read-only C-contiguous float32: `a` itself for f32,
    else a widened copy (exact: every f16 and bf16 value is a float32 value)."""
    if stored == F32:
        return a
    if stored == F16:
        out = a.astype(np.float32)
    elif stored == BF16:
        out = (a.astype(np.uint32) << 16).view(np.float32)    # bf16 = the top half of a float32
    else:
        raise ValueError(f"unknown stored type {stored!r}")
    out.flags.writeable = False
    return out


def count_nonfinite(a: np.ndarray, stored: str) -> int:
    """Number of NaN/inf values in `a`, read in chunks (f16 and bf16 by their exponent bits)."""
    flat = a.reshape(-1)
    if stored == F32:                # the compiled pass that also computes CRC-32C; the count is what we need
        from ._crc32c import checksum_f32
        return int(checksum_f32(flat.view(np.uint8))[1]) if flat.size else 0
    n = 0
    for start in range(0, flat.size, CHUNK):
        part = flat[start:start + CHUNK]
        if stored == F16:
            n += int(np.count_nonzero((part.view(np.uint16) & 0x7C00) == 0x7C00))
        elif stored == BF16:
            n += int(np.count_nonzero((part & 0x7F80) == 0x7F80))
        else:
            raise ValueError(f"unknown stored type {stored!r}")
    return n


def aligned(a: np.ndarray) -> np.ndarray:
    """`a`, or a read-only aligned native-order copy when its data is misaligned or byte-swapped (C code reads
    a float32 tensor through a float*, which must be 4-byte aligned)."""
    if a.flags.aligned and a.dtype.isnative:
        return a
    out = np.empty(a.shape, dtype=a.dtype.newbyteorder("="))
    out[...] = a
    out.flags.writeable = False
    return out
