"""Type stubs for gpt2cy._matmul (the cdef kernels matmul / matmul_nt are cimported via _matmul.pxd)."""
from typing import Optional

import numpy as np
import numpy.typing as npt

def debug_hooks() -> bool:
    """True when this build has the debug-only test hooks."""

def set_debug_late(thread: int, microseconds: int) -> None:
    """Debug builds: delay one thread of the K-split decode path before it writes its partial sums."""

def isa() -> tuple[str, int, int]:
    """The instruction set the tile kernels were compiled for and the tile shape (MR, NR)."""

def matmul_py(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32],
              bias: Optional[npt.NDArray[np.float32]] = None, act: int = 0, transposed: bool = False,
              n_threads: int = 1, *, out: Optional[npt.NDArray[np.float32]] = None,
              accumulate: bool = False) -> npt.NDArray[np.float32]:
    """act(x @ w + bias), or x @ w.T when transposed; written to (or added into) out when given."""
