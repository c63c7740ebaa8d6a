"""Where a run's interactions come from (`DataSource`) and how they are read, cleaned and split
(`DataConfig`); `twotower.data` does the reading."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SPLITS", "DataConfig", "DataSource"]

SPLITS = ("ratio", "leave_last_out", "time", "given")


@dataclass(frozen=True)
class DataConfig:
    """Everything that turns interaction files into a SplitDataset (JSON-friendly, saved with models).

    Attributes:
        format / columns / names / delimiter / header / strict / encoding: how to read (see
            `read_interactions`).
        feedback: "all", "label" (label == 1) or "rating" (rating >= threshold).
        threshold: rating threshold for feedback="rating".
        dedupe: keep one row per (user, item) pair, the latest.
        kcore: minimum positives per user and per item (one int for both, or (k_user, k_item)),
            applied repeatedly until it holds; 0 or 1 disables.
        split: "ratio" (per-user random, RecBole protocol), "leave_last_out" (per user, by time),
            "time" (global cut), "given" (separate valid / test files).
        ratios: (train, valid, test) for "ratio", and for "time" when `time_cuts` is None.
        time_cuts: (valid_start, test_start) timestamps for "time".
        n_valid / n_test: rows per user for "leave_last_out".
        seed: the shuffle of the "ratio" split.
    """

    format: str = "auto"
    columns: dict[str, str | int] | None = None
    names: list[str] | None = None
    delimiter: str | None = None
    header: bool | None = None
    strict: bool = False
    encoding: str = "utf8"
    feedback: str = "all"
    threshold: float | None = None
    dedupe: bool = True
    kcore: int | tuple[int, int] = 0
    split: str = "ratio"
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    time_cuts: tuple[int, int] | None = None
    n_valid: int = 1
    n_test: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.columns is not None and not (
            isinstance(self.columns, dict)
            and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in self.columns.values())
        ):
            raise ValueError(f"columns must map roles to column names or positions, e.g. {{user = \"userId\", "
                             f"item = 1}}; got {self.columns!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        k = self.kcore if isinstance(self.kcore, (tuple, list)) else (self.kcore, self.kcore)
        if len(k) != 2 or min(k) < 0:
            raise ValueError(f"kcore must be an int >= 0 or a pair (k_user, k_item), got {self.kcore!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable fields (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """The inverse of `to_dict`; unknown keys are an error, missing ones take their defaults."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown DataConfig field(s) {sorted(unknown)}")
        fixed = {
            k: tuple(v) if isinstance(v, list) and k in ("ratios", "time_cuts", "kcore") else v for k, v in data.items()
        }
        return cls(**fixed)


@dataclass
class DataSource:
    """Where the interactions come from.

    Attributes:
        path: interaction file; empty = the built-in synthetic dataset.
        valid: validation file for a user-given split (with `test`).
        test: test file for a user-given split.
        user_features: user side-feature file (MovieLens `u.user` is recognised).
        item_features: item side-feature file (MovieLens `u.item` / `movies.csv` are recognised).
        synthetic_users: users of the synthetic dataset.
        synthetic_items: items of the synthetic dataset.
        synthetic_interactions_per_user: mean interactions per synthetic user.
        synthetic_seed: seed of the synthetic generator.
        options: how to read and split (twotower.data.DataConfig: format, columns, feedback, kcore, split...).
    """

    path: str = ""
    valid: str = ""
    test: str = ""
    user_features: str = ""
    item_features: str = ""
    synthetic_users: int = 2000
    synthetic_items: int = 1000
    synthetic_interactions_per_user: float = 25.0
    synthetic_seed: int = 0
    options: DataConfig = field(default_factory=DataConfig)

    FILES = ("path", "valid", "test", "user_features", "item_features")  # the settings that name a file

    def resolved(self, base: str | os.PathLike[str]) -> DataSource:
        """This source with every relative file setting made absolute against directory `base`: the
        config file's folder for paths written in it, the working directory for flags. A saved model
        then names its data wherever it is evaluated from."""
        base = Path(base)
        changes = {name: str((base / value).absolute()) for name in self.FILES
                   if (value := getattr(self, name)) and not Path(value).is_absolute()}
        return dataclasses.replace(self, **changes)
