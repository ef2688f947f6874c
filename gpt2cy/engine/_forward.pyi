from typing import Any, Mapping

import numpy as np

from .weights import WeightTensor

class Engine:
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    head_dim: int
    n_slots: int
    max_rows: int
    n_past: int                      # slot 0
    kv_cache_bytes: int
    threads: int
    def __init__(self, config: Any, weights: Mapping[str, WeightTensor | np.ndarray], threads: int = 1,
                 n_ctx: int | None = None, n_slots: int = 1, max_rows: int | None = None) -> None: ...
    def past(self, slot: int = 0) -> int: ...
    def version(self, slot: int = 0) -> int: ...
    def truncate(self, n: int, slot: int = 0) -> None: ...
    def reset(self, slot: int = 0) -> None: ...
    def forward(self, ids: np.ndarray, out: np.ndarray, all_rows: bool, slot: int = 0) -> None: ...
    def step(self, token: int, out: np.ndarray, slot: int = 0) -> None: ...
    def forward_batch(self, ids: np.ndarray, slots: np.ndarray, pos: np.ndarray, logit_rows: np.ndarray,
                      out: np.ndarray, all_rows: bool = False) -> None: ...
