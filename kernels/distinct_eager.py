"""Eager NumPy `distinct` (sort-based `np.unique`): the benchmark baseline of the hash-table kernel.
Tests check both against the plain-loop oracle in `tests/kernels/oracles.py`."""

from __future__ import annotations

import numpy as np


def distinct_eager(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as `distinct`: (values in first-occurrence order, inverse), by `np.unique`."""
    ids = np.asarray(ids, dtype=np.int64)
    sorted_values, first, inverse_sorted = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # sorted position -> rank of first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return sorted_values[order], rank[inverse_sorted.reshape(-1)]
