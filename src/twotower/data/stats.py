"""Summary statistics of an interaction data set (`twotower data stats FILE`): sizes, sparsity,
activity per user and item, popularity skew (Gini, head share), ratings and time range."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import numpy as np
import pyarrow as pa

from twotower.data.csr import sorted_unique
from twotower.data.dataset import DataConfig, EncodedInteractions, load_encoded
from twotower.data.types import SplitDataset


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts [n]: 0 = all equal, -> 1 = all mass on one entry.

    Example:
        >>> round(gini(np.array([0, 0, 0, 4])), 3)  # (2*(4*4))/(4*4) - 5/4
        0.75
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2.0 * np.dot(np.arange(1, n + 1), x) / (n * total) - (n + 1) / n)


def head_share(counts: np.ndarray, fraction: float) -> float:
    """Share of all interactions that go to the top `fraction` of entries (at least one entry)."""
    x = np.sort(np.asarray(counts))[::-1]
    k = max(1, int(np.ceil(fraction * len(x))))
    return float(x[:k].sum() / max(1, x.sum()))


def _spread(counts: np.ndarray) -> dict[str, float]:
    return {
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "mean": float(counts.mean()),
        "max": int(counts.max()),
    }


def describe_arrays(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, *,
                    timestamps: np.ndarray | None = None,
                    ratings: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """Statistics of interactions given as codes [n]."""
    n = len(users)
    per_user = np.bincount(users, minlength=num_users)
    per_item = np.bincount(items, minlength=num_items)
    pairs = len(sorted_unique(users.astype(np.int64) * max(1, num_items) + items))
    out: dict[str, Any] = {
        "interactions": n,
        "users": num_users,
        "items": num_items,
        "density": n / max(1, num_users * num_items),
        "sparsity": 1.0 - n / max(1, num_users * num_items),
        "duplicate_pairs": n - pairs,
        "per_user": _spread(per_user),
        "per_item": _spread(per_item),
        "item_gini": gini(per_item),
        "top1pct_item_share": head_share(per_item, 0.01),
        "top10pct_item_share": head_share(per_item, 0.10),
        "user_gini": gini(per_user),
    }
    if ratings is not None and len(ratings):
        values, counts = np.unique(ratings, return_counts=True)
        out["rating"] = {"min": float(values[0]), "max": float(values[-1]), "mean": float(ratings.mean())}
        if len(values) <= 20:
            out["rating"]["histogram"] = {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)}
    if timestamps is not None and len(timestamps):
        lo, hi = int(timestamps.min()), int(timestamps.max())
        out["time"] = {"min": lo, "max": hi, "span_days": (hi - lo) / 86400}
        if 0 <= lo and hi < 32503680000:  # plausible Unix seconds: show dates too
            out["time"]["first"] = dt.datetime.fromtimestamp(lo, dt.UTC).isoformat()
            out["time"]["last"] = dt.datetime.fromtimestamp(hi, dt.UTC).isoformat()
    return out


def describe(data: EncodedInteractions | SplitDataset | str | os.PathLike | pa.Table,
             config: DataConfig | None = None, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Statistics of a file (read with `config` / options), encoded interactions or a split dataset.

    For a file: positives as the feedback option defines them, before any k-core or split; the read
    report (rows skipped and why) is included. For a SplitDataset: the train part, plus split sizes.
    """
    if isinstance(data, SplitDataset):
        t = data.train
        out = describe_arrays(t.users, t.items, data.num_users, data.num_items, timestamps=t.timestamps)
        out["split"] = {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)}
        out["build"] = {k: v for k, v in data.stats.items() if k != "sources"}
        return out
    if not isinstance(data, EncodedInteractions):
        data = load_encoded(data, config, **options)
    out = describe_arrays(
        data.users, data.items, len(data.user_vocab), len(data.item_vocab), timestamps=data.timestamps,
        ratings=data.ratings
    )
    rep = data.report
    out["read"] = {"source": rep.source, "rows_read": rep.rows_read, "rows_skipped": rep.rows_skipped,
                   "skipped_lines": list(rep.skipped_lines), "reasons": dict(rep.reasons)}  # fmt: skip
    return out


def split_summary(dataset: SplitDataset, unknown_note: str = "") -> list[str]:
    """Two lines for the opening of a run: the split sizes, then every row the data layer left out
    and why (malformed, not positive, duplicate, k-core, valid / test rows of a user or an item
    without train rows, followed by `unknown_note`: what evaluation does with those).

    Example:
        >>> from twotower.data import build_dataset, generate
        >>> split_summary(build_dataset(generate(100, 80, interactions_per_user=10)))[0]
        'data: 100 users, 80 items; rows: train 889, valid 116, test 116'
    """
    stats = dataset.stats
    reasons = []
    for part, report in stats.get("sources", {}).items():
        if report["rows_skipped"]:
            why = ", ".join(f"{reason} {count:,}" for reason, count in report["reasons"].items())
            reasons.append(f"{report['rows_skipped']:,} malformed {part} rows ({why})")
    for key, text in (("non_positive_rows", "rows not positive (data.options.feedback)"),
                      ("duplicates_removed", "duplicate (user, item) rows"),
                      ("kcore_rows_removed", "train rows below the k-core")):
        if stats.get(key):
            reasons.append(f"{stats[key]:,} {text}")
    unknown = []
    for split, targets in dataset.unknown_targets.items():
        if targets.user_rows:
            users = f"{targets.users:,} user{'s' if targets.users > 1 else ''}"
            unknown.append(f"{targets.user_rows:,} {split} rows of {users} without train rows")
        if targets.item_rows:
            unknown.append(f"{targets.item_rows:,} {split} rows whose item has no train row")
    if unknown:
        reasons.append("; ".join(unknown) + (f" ({unknown_note})" if unknown_note else ""))
    sizes = (f"{dataset.num_users:,} users, {dataset.num_items:,} items; rows: train {len(dataset.train):,}, "
             f"valid {len(dataset.valid):,}, test {len(dataset.test):,}")
    return [f"data: {sizes}", "left out: " + ("; ".join(reasons) if reasons else "nothing")]


def format_stats(stats: dict[str, Any]) -> str:
    """A readable multi-line rendering of `describe` output."""
    lines = []

    def walk(d: dict[str, Any], indent: str) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                walk(value, indent + "  ")
            elif isinstance(value, float):
                lines.append(f"{indent}{key}: {value:.6g}")
            else:
                lines.append(f"{indent}{key}: {value}")

    walk(stats, "")
    return "\n".join(lines)
