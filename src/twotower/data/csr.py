"""Compressed sparse rows without values (CSR): the one home of every CSR helper.

A CSR is `indptr` (int64 [rows + 1], from 0 to len(indices), non-decreasing) and `indices` (row r
is `indices[indptr[r]:indptr[r + 1]]`): each user's items (histories, exclusion lists), each
item's users (`transpose`), a multi-valued feature's codes. Functions take either a `CSR` or a
plain `(indptr, indices)` pair (`csr_pair`), the form the scorers take. Imports only NumPy (the
grouping kernel, Numba, on first use), so that metrics and the model can use it as lightly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from twotower.kernels.codes import check_codes

__all__ = ["CSR", "CSRPair", "csr_pair", "group_by_user", "indptr_from_counts", "row_ids", "sorted_unique",
           "take_rows", "transpose"]

CSRPair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CSR:
    """Per-row sorted, unique int lists (compressed sparse rows without values).

    Attributes:
        indptr: int64 [num_rows + 1], `indptr[0] == 0`; row r is `indices[indptr[r]:indptr[r + 1]]`.
        indices: int32 [nnz], ascending and unique within each row.
    """

    indptr: np.ndarray
    indices: np.ndarray

    def row(self, r: int) -> np.ndarray:
        """Row `r` as an int32 view [len(row)]."""
        return self.indices[self.indptr[r] : self.indptr[r + 1]]

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def lengths(self) -> np.ndarray:
        """int64 [num_rows] number of entries per row."""
        return np.diff(self.indptr)

    @classmethod
    def from_pairs(cls, rows: np.ndarray, cols: np.ndarray, num_rows: int) -> CSR:
        """Builds the CSR of the pairs (rows[j], cols[j]); duplicate pairs collapse into one entry.

        Args:
            rows: int [n] row of each pair, in [0, num_rows).
            cols: int [n] column of each pair, non-negative (< 2**31).
            num_rows: number of rows; rows without pairs are empty.

        Example:
            >>> CSR.from_pairs(np.array([1, 0, 1]), np.array([5, 2, 3]), 3).row(1)
            array([3, 5], dtype=int32)
        """
        from twotower.kernels.grouping import csr_from_pairs

        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.shape != cols.shape or rows.ndim != 1:
            raise ValueError(f"rows and cols must be 1-D of one length, got {rows.shape} and {cols.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= num_rows or cols.min() < 0):
            raise ValueError(f"pairs out of range: rows must lie in [0, {num_rows}) and cols be >= 0")
        return cls(*csr_from_pairs(rows, cols, num_rows))  # a counting sort by row, then each row's columns


def csr_pair(csr: Any) -> CSRPair:
    """(indptr int64, indices int64) from a CSR object or an (indptr, indices) pair."""
    if isinstance(csr, (tuple, list)) and len(csr) == 2:
        indptr, indices = csr
    elif hasattr(csr, "indptr") and hasattr(csr, "indices"):
        indptr, indices = csr.indptr, csr.indices
    else:
        raise TypeError(f"expected a CSR (indptr, indices); got {type(csr).__name__}")
    return np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)


def indptr_from_counts(counts: np.ndarray) -> np.ndarray:
    """int64 [len(counts) + 1] row offsets of rows holding `counts` entries each."""
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def row_ids(indptr: np.ndarray) -> np.ndarray:
    """int64 [nnz] the row of each entry (the inverse of `indptr`)."""
    indptr = np.asarray(indptr)
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def take_rows(csr: CSRPair, rows: np.ndarray) -> CSRPair:
    """The CSR rows `rows` [b] (in that order) as a new CSR [b], vectorised."""
    indptr, indices = csr
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    out_ptr = indptr_from_counts(lengths)
    positions = np.arange(out_ptr[-1], dtype=np.int64) + np.repeat(starts - out_ptr[:-1], lengths)
    return out_ptr, indices[positions]


def group_by_user(users: np.ndarray, items: np.ndarray, num_users: int) -> CSRPair:
    """CSR [num_users] of each user's items (sorted, unique) from interaction columns; unlike
    `CSR.from_pairs`, items may be any int64 codes (indices come back int64)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.shape != items.shape:
        raise ValueError(f"users and items must have one length; got {users.shape} and {items.shape}")
    users = check_codes(users, "user codes", low=0, high=num_users)
    items = check_codes(items, "item codes", low=0)
    width = int(items.max(initial=0)) + 1
    if width > np.iinfo(np.int64).max // max(num_users, 1):  # user * width + item would overflow
        order = np.lexsort((items, users))
        pairs = np.stack([users[order], items[order]])
        keep = (np.concatenate(([True], (pairs[:, 1:] != pairs[:, :-1]).any(axis=0))) if len(users)
                else np.zeros(0, bool))
        return indptr_from_counts(np.bincount(pairs[0, keep], minlength=num_users)), pairs[1, keep]
    keys = sorted_unique(users * width + items)
    return indptr_from_counts(np.bincount(keys // width, minlength=num_users)), keys % width


def transpose(indptr: np.ndarray, indices: np.ndarray, num_cols: int, length: int = 0) -> CSRPair:
    """The transpose of a CSR (e.g. user -> items into each item's users), as (indptr
    [num_cols + 1], row ids).

    With `length` > 0 each new row comes in a random order (seeded: the same data give the same
    rows), so that pooling the last `length` of them (`Tower.history_length`) pools a random subset
    rather than the entries with the highest ids.
    """
    rows = row_ids(np.asarray(indptr, dtype=np.int64))
    cols = np.asarray(indices, dtype=np.int64)
    if length > 0:
        order = np.lexsort((np.random.default_rng(0).random(len(cols)), cols))
    else:
        order = np.argsort(cols, kind="stable")
    counts = np.bincount(cols, minlength=num_cols)
    if len(counts) > num_cols:
        raise ValueError(f"history item codes must be in [0, {num_cols}); found {len(counts) - 1}")
    return indptr_from_counts(counts), rows[order]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array [n]; `values` itself when already strictly increasing
    (sorted CSR rows). One sort otherwise: NumPy 2's `np.unique` hashes and then sorts, several
    times slower on millions of int64."""
    if values.size < 2 or bool((values[1:] > values[:-1]).all()):
        return values
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))]
