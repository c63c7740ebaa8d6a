"""The encoded containers every later stage reads: CSR histories, interactions, feature tables and
the split dataset. Plain NumPy arrays inside frozen dataclasses; no per-row Python objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from twotower.kernels.grouping import csr_from_pairs

if TYPE_CHECKING:
    from twotower.data.vocab import Vocabulary


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Ascending distinct values of an int array [n], by one sort (NumPy 2's `np.unique` hashes and
    then sorts, several times slower on millions of int64)."""
    out = np.sort(values)
    if len(out) > 1:
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


class DataError(ValueError):
    """Bad input data: a malformed row, a missing column, an empty result. The message names the file
    (and line, where one is known) so the user can go and fix it."""


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
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.shape != cols.shape or rows.ndim != 1:
            raise ValueError(f"rows and cols must be 1-D of one length, got {rows.shape} and {cols.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= num_rows or cols.min() < 0):
            raise ValueError(f"pairs out of range: rows must lie in [0, {num_rows}) and cols be >= 0")
        return cls(*csr_from_pairs(rows, cols, num_rows))  # a counting sort by row, then each row's columns


@dataclass(frozen=True)
class Interactions:
    """Encoded positive interactions, one per row.

    Attributes:
        users: int32 [n] user codes in [0, num_users).
        items: int32 [n] item codes in [0, num_items).
        timestamps: int64 [n] (seconds, or whatever unit the source used) or None.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def take(self, index: np.ndarray) -> Interactions:
        """The rows selected by `index` (an int array or a bool mask [n])."""
        ts = None if self.timestamps is None else self.timestamps[index]
        return Interactions(self.users[index], self.items[index], ts)


@dataclass(frozen=True)
class FeatureTable:
    """Side features aligned with user or item codes: row r describes code r.

    Categorical codes are 1-based; code 0 means missing or unknown (an entity absent from the feature
    file, or an empty value), so cardinality counts it: a feature with K distinct values has
    cardinality K + 1. `values[name][c - 1]` is the external value of code c.

    Attributes:
        categorical: name -> (int32 [n] codes, cardinality).
        multi_categorical: name -> (CSR over the n rows with 1-based codes, cardinality); a row with
            no value is empty.
        dense: name -> float32 [n, d]; unknown rows are 0.
        values: name -> [K] the external value of each categorical code 1..K (both kinds).
    """

    num_rows: int
    categorical: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    multi_categorical: dict[str, tuple[CSR, int]] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, (codes, card) in self.categorical.items():
            if codes.shape != (self.num_rows,) or (len(codes) and (codes.min() < 0 or codes.max() >= card)):
                raise ValueError(f"categorical feature {name!r}: need [{self.num_rows}] codes in [0, {card})")
        for name, (csr, _) in self.multi_categorical.items():
            if csr.num_rows != self.num_rows:
                raise ValueError(f"multi-categorical feature {name!r} has {csr.num_rows} rows, need {self.num_rows}")
        for name, arr in self.dense.items():
            if arr.ndim != 2 or arr.shape[0] != self.num_rows:
                raise ValueError(f"dense feature {name!r} has shape {arr.shape}, need [{self.num_rows}, d]")

    @property
    def names(self) -> list[str]:
        return [*self.categorical, *self.multi_categorical, *self.dense]

    def take(self, index: np.ndarray) -> FeatureTable:
        """The rows `index` (int [m]) in that order, e.g. to follow a re-encoding of the codes."""
        index = np.asarray(index, dtype=np.int64)
        multi = {}
        for name, (csr, card) in self.multi_categorical.items():
            lengths = csr.lengths()[index]
            indptr = np.zeros(len(index) + 1, dtype=np.int64)
            np.cumsum(lengths, out=indptr[1:])
            starts = np.repeat(csr.indptr[index] - indptr[:-1], lengths)
            multi[name] = (CSR(indptr, csr.indices[np.arange(indptr[-1]) + starts]), card)
        return FeatureTable(
            len(index),
            {n: (c[index], k) for n, (c, k) in self.categorical.items()},
            multi,
            {n: a[index] for n, a in self.dense.items()},
            dict(self.values),
        )


@dataclass(frozen=True)
class UnknownTargets:
    """Validation or test rows the model cannot score, because their user or their item has no
    training row; the dataset leaves them out of its splits and keeps their count here, so that an
    evaluation protocol can still count them as targets no ranking can hit.

    Attributes:
        per_user: int64 [num_users] distinct items unknown to training among each known user's rows.
        users: distinct users with rows of this split but no training row.
        user_rows: rows whose user has no training row.
        item_rows: rows of a known user whose item has no training row.
    """

    per_user: np.ndarray
    users: int
    user_rows: int
    item_rows: int

    @property
    def rows(self) -> int:
        """Every row left out of the split for an unknown user or item."""
        return self.user_rows + self.item_rows


@dataclass(frozen=True)
class SplitDataset:
    """Train / validation / test interactions over one shared encoding, with the histories that
    evaluation excludes and samplers treat as positives.

    Every user and item code has at least one training interaction (validation and test rows of
    users or items unseen in training are left out of `valid` / `test`, counted in `stats` as cold
    start and per split in `unknown_targets`).

    Attributes:
        train_history: [num_users] rows, each user's train items (sorted, unique): the exclusion list
            when ranking for validation, and the positives of negative samplers.
        train_valid_history: train + validation items: the exclusion list when ranking for test.
        stats: counts from reading and filtering (rows read / skipped, k-core removals, cold start).
        unknown_targets: "valid" / "test" -> the rows of that split left out for an unknown user
            or item (empty for a dataset built by hand).
    """

    num_users: int
    num_items: int
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    train: Interactions
    valid: Interactions
    test: Interactions
    train_history: CSR
    train_valid_history: CSR
    user_features: FeatureTable | None = None
    item_features: FeatureTable | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    unknown_targets: dict[str, UnknownTargets] = field(default_factory=dict)

    def item_counts(self) -> np.ndarray:
        """int64 [num_items] training interactions per item (popularity, e.g. for alias samplers)."""
        return np.bincount(self.train.items, minlength=self.num_items)


def take_rows(csr: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR rows `rows` [b] (in that order) as a new CSR [b], vectorised."""
    indptr, indices = csr
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    out_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_ptr[1:])
    positions = np.arange(out_ptr[-1], dtype=np.int64) + np.repeat(starts - out_ptr[:-1], lengths)
    return out_ptr, indices[positions]
