"""The encoded containers every later stage reads: interactions, feature tables and the split
dataset (their CSR histories: `twotower.data.csr`). Plain NumPy arrays inside frozen dataclasses;
no per-row Python objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from twotower.data.csr import CSR, take_rows

if TYPE_CHECKING:
    from twotower.data.vocab import Vocabulary


class DataError(ValueError):
    """Bad input data: a malformed row, a missing column, an empty result. The message names the file
    (and line, where one is known) so the user can go and fix it."""


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
        multi = {name: (CSR(*take_rows((csr.indptr, csr.indices), index)), card)
                 for name, (csr, card) in self.multi_categorical.items()}
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
