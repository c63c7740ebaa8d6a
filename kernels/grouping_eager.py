"""Eager NumPy `grouping` (sort-based): the benchmark baseline of the counting-sort kernels. Tests
check both against the plain-loop oracles in `tests/kernels/oracles.py`."""

from __future__ import annotations

import numpy as np


def stable_group_order_eager(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Same contract as `stable_group_order`, by a stable argsort."""
    keys = np.asarray(keys)
    if keys.size and (keys.min() < 0 or keys.max() >= num_keys):
        raise ValueError(f"keys must lie in [0, {num_keys})")
    return np.argsort(keys, kind="stable").astype(np.int64)


def csr_from_pairs_eager(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as `csr_from_pairs`, by sorting the pair keys rows * width + cols."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    width = int(cols.max()) + 1 if cols.size else 1
    keys = np.sort(rows * width + cols)
    if keys.size > 1:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // width, minlength=num_rows), out=indptr[1:])
    return indptr, (keys % width).astype(np.int32)
