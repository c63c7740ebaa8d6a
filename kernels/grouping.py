"""Grouping rows by a small integer key in linear time: the stable order of a counting sort, and
per-row sorted, duplicate-free column lists (CSR) from (row, column) pairs.

    order = stable_group_order(users, num_users)     # == np.argsort(users, kind="stable")
    indptr, indices = csr_from_pairs(users, items, num_users)

Building a dataset groups a million interactions by user several times (the per-user split, the
train and train+valid histories); a general sort of 64-bit keys does it in O(n log n). Keys here
are codes in [0, K), so a counting sort does it in O(n + K) and the columns of each row, a few
dozen on average, are sorted on their own. Imports NumPy and Numba only.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .codes import check_codes

__all__ = ["csr_from_pairs", "stable_group_order"]


@njit(cache=True, nogil=True)
def _counting_order(keys, num_keys):
    starts = np.zeros(num_keys + 1, dtype=np.int64)
    for i in range(keys.shape[0]):
        starts[keys[i] + 1] += 1
    for k in range(num_keys):
        starts[k + 1] += starts[k]
    order = np.empty(keys.shape[0], dtype=np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        order[starts[k]] = i
        starts[k] += 1
    return order


@njit(cache=True, nogil=True)
def _csr(rows, cols, num_rows):
    """A counting sort by row, then each row's columns sorted in place, repeats dropped (the
    kept values compacted towards the front: a write never passes the read position)."""
    counts = np.zeros(num_rows + 1, dtype=np.int64)
    for i in range(rows.shape[0]):
        counts[rows[i] + 1] += 1
    for r in range(num_rows):
        counts[r + 1] += counts[r]
    fill = counts[:num_rows].copy()
    values = np.empty(rows.shape[0], dtype=np.int32)
    for i in range(rows.shape[0]):
        r = rows[i]
        values[fill[r]] = cols[i]
        fill[r] += 1
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    out = 0
    for r in range(num_rows):
        segment = values[counts[r]:counts[r + 1]]
        segment.sort()
        for j in range(segment.shape[0]):
            if j == 0 or segment[j] != segment[j - 1]:
                values[out] = segment[j]
                out += 1
        indptr[r + 1] = out
    return indptr, values[:out].copy()


def _count(value: object, name: str) -> int:
    """A count argument: an integer (Python or NumPy) >= 0; a float such as 1.5 would size the
    kernel's arrays differently from the range check."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def stable_group_order(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Positions of `keys` grouped by key, ascending, each group in input order (a counting sort).

    Args:
        keys: [n] integer keys in [0, num_keys).
        num_keys: K, the number of possible keys.

    Returns:
        int64 [n]: equal to `np.argsort(keys, kind="stable")`.

    Raises:
        TypeError: keys not a 1-d integer array. ValueError: a key outside [0, num_keys) (named).

    Example:
        >>> stable_group_order(np.array([2, 0, 2, 1]), 3)
        array([1, 3, 0, 2])
    """
    num_keys = _count(num_keys, "num_keys")
    return _counting_order(check_codes(keys, "keys", low=0, high=num_keys), num_keys)


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ascending, duplicate-free column lists of the pairs (rows[j], cols[j]).

    Args:
        rows: [n] integer rows in [0, num_rows).
        cols: [n] integer columns in [0, 2**31).
        num_rows: rows of the result (rows without pairs are empty).

    Returns:
        (indptr int64 [num_rows + 1], indices int32 [nnz]): row r is indices[indptr[r]:indptr[r + 1]].

    Raises:
        TypeError / ValueError: shapes, dtypes or values out of range (the argument is named).

    Example:
        >>> csr_from_pairs(np.array([1, 0, 1, 1]), np.array([5, 2, 3, 5]), 3)
        (array([0, 1, 3, 3]), array([2, 3, 5], dtype=int32))
    """
    num_rows = _count(num_rows, "num_rows")
    rows_array = check_codes(rows, "rows", low=0, high=num_rows)
    cols_array = check_codes(cols, "cols", low=0, high=2**31)
    if rows_array.shape != cols_array.shape:
        raise ValueError(f"rows and cols must have one length, got {rows_array.shape[0]} and {cols_array.shape[0]}")
    return _csr(rows_array, cols_array, num_rows)
