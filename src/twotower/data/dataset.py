"""One call from file(s) to a SplitDataset: read -> positives -> encode -> dedupe -> k-core ->
split -> histories -> side features; and the encoded-arrays stage on its own (`load_encoded`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from twotower.data.clean import ReadReport
from twotower.data.features import (
    FeatureSource,
    infer_source,
    load_features,
    movielens_item_features,
    movielens_user_features,
)
from twotower.data.filters import dedupe, kcore, select_positives
from twotower.data.io import InteractionTable, from_table, read_interactions
from twotower.data.split import TEST, TRAIN, VALID, assemble, leave_last_out, ratio_split, time_split
from twotower.data.types import DataError, FeatureTable, Interactions, SplitDataset
from twotower.data.vocab import Vocabulary, encode_ids
from twotower.settings.data import DataConfig

log = logging.getLogger("twotower.data")
Source = str | os.PathLike | pa.Table


@dataclass(frozen=True)
class EncodedInteractions:
    """Positive interactions as codes, before any split.

    Attributes:
        users / items: int32 [n] codes; timestamps: int64 [n] or None; ratings: float64 [n] or None.
        table: the positive rows as read (side-feature columns included), aligned with the codes.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None
    ratings: np.ndarray | None
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    report: ReadReport
    table: pa.Table

    def __len__(self) -> int:
        return len(self.users)


def _config(config: DataConfig | None, overrides: dict[str, Any]) -> DataConfig:
    base = config or DataConfig()
    unknown = set(overrides) - {f.name for f in dataclasses.fields(DataConfig)}
    if unknown:
        raise TypeError(f"unknown data option(s) {sorted(unknown)}")
    return dataclasses.replace(base, **overrides)


def read(source: Source, config: DataConfig, features: tuple[str, ...] = ()) -> InteractionTable:
    """Reads a file or maps an in-memory table with the reading options of `config`."""
    if isinstance(source, pa.Table):
        return from_table(source, columns=config.columns, features=features, strict=config.strict)
    return read_interactions(
        source,
        format=config.format,
        columns=config.columns,
        names=config.names,
        delimiter=config.delimiter,
        header=config.header,
        features=features,
        strict=config.strict,
        encoding=config.encoding,
    )


def _numpy(col: pa.ChunkedArray | None, dtype: type) -> np.ndarray | None:
    return None if col is None else col.to_numpy().astype(dtype, copy=False)


def load_encoded(source: Source, config: DataConfig | None = None, **options: Any) -> EncodedInteractions:
    """File or table -> positive interactions as int32 codes with their vocabularies (no split).

    Example:
        >>> enc = load_encoded("ratings.csv", format="ml-latest", feedback="rating", threshold=4)  # doctest: +SKIP
    """
    cfg = _config(config, options)
    read_result = read(source, cfg)
    table = select_positives(read_result.table, cfg.feedback, cfg.threshold, source=read_result.report.source)
    users, user_vocab = encode_ids(table.column("user"))
    items, item_vocab = encode_ids(table.column("item"))
    return EncodedInteractions(
        users,
        items,
        _numpy(table.column("timestamp") if "timestamp" in table.column_names else None, np.int64),
        _numpy(table.column("rating") if "rating" in table.column_names else None, np.float64),
        user_vocab,
        item_vocab,
        read_result.report,
        table,
    )


def build_dataset(
    source: Source,
    *,
    valid: Source | None = None,
    test: Source | None = None,
    user_features: FeatureSource | str | os.PathLike | None = None,
    item_features: FeatureSource | str | os.PathLike | None = None,
    config: DataConfig | None = None,
    **options: Any,
) -> SplitDataset:
    """Interaction file(s) -> SplitDataset, in one call.

    Args:
        source: the interaction file (or Arrow table); with `valid` / `test`, the training file.
        valid / test: user-given validation and test files (implies split="given"; `valid` optional).
        user_features / item_features: a FeatureSource, a MovieLens file (`u.user`, `users.dat`;
            `u.item`, `movies.csv`), or any feature file with a header (specs guessed by
            `features.infer_source`: key column by name, numbers dense, `a|b` text multi-valued).
        config: a DataConfig; keyword `options` override its fields (e.g. split="leave_last_out").

    Example:
        >>> from twotower.data import build_dataset, generate
        >>> ds = build_dataset(generate(num_users=100, num_items=80, interactions_per_user=10), kcore=2)
        >>> ds.num_users, len(ds.train) > len(ds.test) > 0
        (100, True)
    """
    cfg = _config(config, options)
    if test is not None or valid is not None:
        if test is None:
            raise ValueError("given split files need at least a test file (test=...)")
        cfg = dataclasses.replace(cfg, split="given")
    elif cfg.split == "given":
        raise ValueError("split='given' needs the test file (and optionally valid=...)")
    parts = [(TRAIN, source)] + [(code, s) for code, s in ((VALID, valid), (TEST, test)) if s is not None]
    stats: dict[str, Any] = {}
    table, part_of = _read_parts(parts, cfg, _interaction_feature_columns(user_features, item_features), stats)
    users, user_vocab = encode_ids(table.column("user"))
    items, item_vocab = encode_ids(table.column("item"))
    ts = _numpy(table.column("timestamp") if "timestamp" in table.column_names else None, np.int64)
    keep = _filter_rows(users, items, ts, part_of, len(user_vocab), len(item_vocab), cfg, stats)
    inter, part_of, table = Interactions(users, items, ts).take(keep), part_of[keep], table.filter(pa.array(keep))
    assignment, require_valid = _assign(cfg, inter, part_of, has_valid=valid is not None)
    ds = assemble(inter, assignment, user_vocab, item_vocab, require_valid=require_valid, stats=stats)
    uf = _features(user_features, ds.user_vocab, table, "user")
    itf = _features(item_features, ds.item_vocab, table, "item")
    return dataclasses.replace(ds, user_features=uf, item_features=itf)


def _interaction_feature_columns(*sources: FeatureSource | str | os.PathLike | None) -> tuple[str, ...]:
    """Columns of the (training) interaction file that FeatureSources without a file of their own need."""
    cols = [c for fs in sources if isinstance(fs, FeatureSource) and fs.source is None
            for spec in fs.specs for c in spec.columns]
    return tuple(dict.fromkeys(cols))


def _read_parts(
    parts: list[tuple[int, Source]], cfg: DataConfig, feature_cols: tuple[str, ...], stats: dict[str, Any]
) -> tuple[pa.Table, np.ndarray]:
    """Reads each part (train, and valid / test when given) and keeps its positives."""
    tables, stats["sources"], stats["non_positive_rows"] = [], {}, 0
    for code, src in parts:
        result = read(src, cfg, feature_cols if code == TRAIN else ())
        rep = result.report
        stats["sources"][("train", "valid", "test")[code]] = dataclasses.asdict(rep)
        if rep.rows_skipped:
            log.warning("%s", rep.summary())
        positives = select_positives(result.table, cfg.feedback, cfg.threshold, source=rep.source)
        stats["non_positive_rows"] += result.table.num_rows - positives.num_rows
        tables.append(positives)
    stats["rows_read"] = sum(s["rows_read"] for s in stats["sources"].values())
    stats["rows_skipped"] = sum(s["rows_skipped"] for s in stats["sources"].values())
    return _concat(tables, [code for code, _ in parts])


def _filter_rows(
    users: np.ndarray, items: np.ndarray, ts: np.ndarray | None, part_of: np.ndarray, num_users: int, num_items: int,
    cfg: DataConfig, stats: dict[str, Any],
) -> np.ndarray:  # fmt: skip
    """Bool mask [n]: duplicates removed within each part, k-core applied to the training part."""
    keep = np.ones(len(users), dtype=np.bool_)
    if cfg.dedupe:
        for p in np.unique(part_of):
            rows = np.flatnonzero(part_of == p)
            mask = np.zeros(len(rows), dtype=np.bool_)
            mask[dedupe(users[rows], items[rows], None if ts is None else ts[rows])] = True
            keep[rows] &= mask
        stats["duplicates_removed"] = int((~keep).sum())
    k_user, k_item = cfg.kcore if isinstance(cfg.kcore, (tuple, list)) else (cfg.kcore, cfg.kcore)
    train_rows = np.flatnonzero(keep & (part_of == TRAIN))
    core = kcore(users[train_rows], items[train_rows], num_users, num_items, k_user, k_item)
    stats["kcore_rows_removed"] = int((~core).sum())
    if not core.any():
        raise DataError(f"k-core filtering (k_user={k_user}, k_item={k_item}) removed every interaction")
    keep[train_rows[~core]] = False
    return keep


def _assign(cfg: DataConfig, inter: Interactions, part_of: np.ndarray, *, has_valid: bool) -> tuple[np.ndarray, bool]:
    """(train / valid / test assignment int8 [n], whether an empty validation set is an error)."""
    if cfg.split == "given":
        return part_of.astype(np.int8), has_valid
    if cfg.split == "ratio":
        return ratio_split(inter.users, tuple(cfg.ratios), seed=cfg.seed), len(cfg.ratios) == 3 and cfg.ratios[1] > 0
    if cfg.split == "leave_last_out":
        return leave_last_out(inter.users, inter.timestamps, cfg.n_valid, cfg.n_test), cfg.n_valid > 0
    if cfg.time_cuts is not None:
        cuts = (int(cfg.time_cuts[0]), int(cfg.time_cuts[1]))
        return time_split(inter.timestamps, cuts=cuts), cuts[0] < cuts[1]
    ratios = tuple(cfg.ratios)
    if len(ratios) != 3:
        raise ValueError(f"split='time' with ratios needs (train, valid, test), got {ratios}")
    return time_split(inter.timestamps, ratios=ratios), ratios[1] > 0  # type: ignore[arg-type]


def _concat(tables: list[pa.Table], parts: list[int]) -> tuple[pa.Table, np.ndarray]:
    """One table of the given parts with consistent id types and shared columns, and the part of
    each row [n] (0 train, 1 valid, 2 test)."""
    common = [c for c in tables[0].column_names if all(c in t.column_names for t in tables)]
    if "timestamp" in tables[0].column_names and "timestamp" not in common:
        log.warning("not every split file has timestamps; timestamps are dropped")
    for role in ("user", "item"):
        if any(not pa.types.is_integer(t.column(role).type) for t in tables):  # mixed: compare as text
            tables = [t.set_column(t.column_names.index(role), role, t.column(role).cast(pa.string())) for t in tables]
    part = np.concatenate([np.full(t.num_rows, p, dtype=np.int8) for t, p in zip(tables, parts, strict=True)])
    return pa.concat_tables([t.select(common) for t in tables], promote_options="permissive"), part


def _features(
    spec: FeatureSource | str | os.PathLike | None, vocab: Vocabulary, table: pa.Table, kind: str
) -> FeatureTable | None:
    if spec is None:
        return None
    if isinstance(spec, FeatureSource):
        return load_features(spec, vocab, table)
    name = Path(spec).name.lower()
    if kind == "item" and (name.startswith("u.item") or name == "movies.csv"):
        return movielens_item_features(spec, vocab)
    if kind == "user" and (name.startswith("u.user") or name == "users.dat"):
        return movielens_user_features(spec, vocab)
    inferred = infer_source(spec, kind)
    log.info("%s features from %s: key %r, %s", kind, spec, inferred.key, [(f.name, f.kind) for f in inferred.specs])
    try:
        return load_features(inferred, vocab)
    except DataError as err:
        raise DataError(f"{spec} ({kind} features, key column {inferred.key!r}): {err}") from None


