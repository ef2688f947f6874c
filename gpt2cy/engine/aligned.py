"""Arrays whose data starts on a cache line.

numpy's allocations of more than 128 KiB come from glibc's mmap, 16 bytes past a page, so every 64-byte
vector load of such an array spans two cache lines: the kernels' weight rows, activation rows and partial
sums all start on a 64-byte boundary instead.
"""
from __future__ import annotations

import numpy as np

ALIGN = 64   # bytes: a cache line, and one AVX-512 vector


def empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype), C-contiguous, its data 64-byte aligned (a view of a slightly larger buffer,
    which it keeps alive)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if n == 0:
        return np.empty(shape, dt)   # no data to place
    buf = np.empty(n + ALIGN, np.uint8)
    start = (-buf.ctypes.data) % ALIGN
    return buf[start:start + n].view(dt).reshape(shape)


def copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of a, its data 64-byte aligned."""
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out


def contiguous(a: np.ndarray) -> np.ndarray:
    """a itself where it is C-contiguous and aligned for its dtype (a file's mapping stays mapped), else
    copy(a)."""
    return a if a.flags.c_contiguous and a.flags.aligned else copy(a)
