"""Type stubs for gpt2cy._matmul (the cdef kernels matmul / matmul_nt are cimported via _matmul.pxd)."""
from typing import Optional

import numpy as np
import numpy.typing as npt

def debug_hooks() -> bool:
    """True when this build has the debug-only test hooks."""

def set_debug_late(thread: int, microseconds: int) -> None:
    """Debug builds: delay one thread of the K-split decode path before it writes its partial sums."""

def set_bf16_dot(want: bool) -> bool:
    """Run the bf16 type's products on VDPBF16PS where the CPU has it (True) or on its emulation (the same
    bits); returns whether the instruction is used."""

def bf16_dot() -> str:
    """How the bf16 type's products run: "vdpbf16ps", "emulated-512", "emulated-256" or "portable"."""

def bf16_round_rows(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """The bf16 inputs (bit patterns) the bf16 type's products read, a zero after an odd K."""

def isa() -> tuple[str, int, int]:
    """The instruction set the tile kernels were compiled for and the tile shape (MR, NR)."""

def matmul_py(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32],
              bias: Optional[npt.NDArray[np.float32]] = None, act: int = 0, transposed: bool = False,
              n_threads: int = 1, *, out: Optional[npt.NDArray[np.float32]] = None,
              accumulate: bool = False) -> npt.NDArray[np.float32]:
    """act(x @ w + bias), or x @ w.T when transposed; written to (or added into) out when given."""
