"""Argument checks shared by the Python side of the scorer (the C++ binding repeats them natively)."""

from __future__ import annotations

import numbers

import numpy as np


def check_matrix(name: str, array: object) -> np.ndarray:
    """Returns `array` as a 2-D float32 ndarray, or raises naming `name`; never converts dtypes."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, D]; got shape {array.shape}")
    if array.dtype != np.float32:
        raise TypeError(f"{name} must be float32; got {array.dtype} (convert with .astype(np.float32))")
    if array.shape[1] == 0:
        raise ValueError(f"{name} must have D >= 1 columns; got shape {array.shape}")
    return array


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer; got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    return int(k)


def check_exclude(
    exclude: object, num_queries: int, num_items: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Validates a per-query CSR exclusion list `(indptr [B+1], indices)`; returns int64 arrays. The
    one check of every search's exclusions (exact scorer, its eager path, HNSW). `num_items`: ids must be
    below it; None where ids are labels with no fixed bound (an HNSW index with items added live)."""
    if exclude is None:
        return None
    if not isinstance(exclude, (tuple, list)) or len(exclude) != 2:
        raise TypeError("exclude must be a pair (indptr, indices) in CSR form")
    indptr, indices = (np.asarray(part) for part in exclude)
    for name, part in (("exclude indptr", indptr), ("exclude indices", indices)):
        if part.ndim != 1:
            raise ValueError(f"{name} must be 1-D; got shape {part.shape}")
        if part.dtype not in (np.int32, np.int64):
            raise TypeError(f"{name} must be int32 or int64; got {part.dtype}")
    if indptr.shape[0] != num_queries + 1:
        raise ValueError(f"exclude indptr must have B + 1 = {num_queries + 1} entries; got {indptr.shape[0]}")
    if indptr[0] != 0:
        raise ValueError(f"exclude indptr[0] must be 0; got {indptr[0]}")
    if np.any(np.diff(indptr) < 0):
        raise ValueError("exclude indptr must be non-decreasing")
    if indptr[-1] != indices.shape[0]:
        raise ValueError(
            f"exclude indptr[-1] must equal len(indices) = {indices.shape[0]}; got {indptr[-1]}"
        )
    if num_items is None:
        if indices.size and indices.min() < 0:
            raise ValueError(f"exclude indices must be item ids >= 0; found {indices[indices < 0][0]}")
    elif indices.size and (indices.min() < 0 or indices.max() >= num_items):
        bad = indices[(indices < 0) | (indices >= num_items)][0]
        raise ValueError(f"exclude indices must be item ids in [0, {num_items}); found {bad}")
    return indptr.astype(np.int64, copy=False), indices.astype(np.int64, copy=False)
