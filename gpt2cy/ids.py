"""The one validator of token ids: every id that reaches an array index passes through `check_ids` first."""
from __future__ import annotations

import numbers

import numpy as np

from .errors import InvalidTokenError


def is_int(v) -> bool:
    """True for Python and numpy integers, False for bools (True is not token 1)."""
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_id(token, n_vocab: int) -> int:
    """One token id as an int in [0, n_vocab), else InvalidTokenError."""
    if not is_int(token):
        raise InvalidTokenError(f"a token id must be an integer, got {token!r}")
    if not 0 <= token < n_vocab:
        raise InvalidTokenError(f"token id {token} is outside the vocabulary [0, {n_vocab})")
    return int(token)


def check_ids(ids, n_vocab: int, *, allow_empty: bool = False) -> np.ndarray:
    """Validated token ids as a contiguous intp array.

    ids: a list, tuple, range or 1-D integer numpy array. Raises InvalidTokenError (a ValueError) for a
    non-integer, an id outside [0, n_vocab) (naming it and its index) or a wrong shape; an empty sequence
    is an InvalidTokenError too unless allow_empty.
    """
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidTokenError(f"token ids must be a 1-D sequence, got an array of shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise InvalidTokenError(f"token ids must be integers, got an array of dtype {ids.dtype}")
        arr = ids
    elif isinstance(ids, (list, tuple, range)):
        for v in ids:
            if not is_int(v):
                raise InvalidTokenError(f"token ids must be integers, got {v!r}")
        try:
            arr = np.array(ids, dtype=np.int64)
        except OverflowError:
            raise InvalidTokenError(f"a token id is outside the vocabulary [0, {n_vocab})") from None
    else:
        raise InvalidTokenError(f"token ids must be a list, tuple or 1-D integer array, "
                                f"got {type(ids).__name__}")
    if arr.size == 0:
        if allow_empty:
            return np.empty(0, dtype=np.intp)
        raise InvalidTokenError("no token ids given")
    bad = (arr < 0) | (arr >= n_vocab)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidTokenError(f"token id {arr[i]} (at index {i}) is outside the vocabulary [0, {n_vocab})")
    return np.ascontiguousarray(arr, dtype=np.intp)
