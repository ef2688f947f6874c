from typing import Any, Mapping

import numpy as np

class Engine:
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    head_dim: int
    n_past: int
    threads: int
    def __init__(self, config: Any, tensors: Mapping[str, np.ndarray], threads: int = 1, n_ctx: int | None = None) -> None: ...
    def truncate(self, n: int) -> None: ...
    def reset(self) -> None: ...
    def forward(self, ids: np.ndarray, out: np.ndarray, all_rows: bool) -> None: ...
    def step(self, token: int, out: np.ndarray) -> None: ...
