"""Type stubs for the compiled sampling fast path (see _sampling.pyx)."""
import numpy as np
import numpy.typing as npt

def top_k(logits: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]: ...
def sample_top_k(logits: npt.NDArray[np.float32], k: int, temperature: float, top_p: float,
                 min_p: float, u: float) -> int: ...
