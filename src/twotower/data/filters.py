"""Which rows count as positives, duplicate removal, k-core filtering and code compaction; all
vectorised over the whole table (bincount / sort), never a loop over rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data.types import DataError

FEEDBACK_MODES = ("all", "label", "rating")


def select_positives(
    table: pa.Table, feedback: str = "all", threshold: float | None = None, *, source: str = ""
) -> pa.Table:
    """Keeps the rows that count as positive interactions.

    Args:
        table: columns `user`, `item`, optionally `rating` / `label` (float64).
        feedback: "all" (every row is a positive), "label" (`label == 1`), or "rating"
            (`rating >= threshold`).
        threshold: the rating threshold, required for feedback="rating".
        source: named in errors.

    Raises:
        DataError: the needed column is missing, or no row is positive.
    """
    where = f" in {source}" if source else ""
    if feedback not in FEEDBACK_MODES:
        raise ValueError(f"feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
    if feedback == "all":
        kept = table
    else:
        column = "label" if feedback == "label" else "rating"
        if column not in table.column_names:
            raise DataError(
                f"feedback={feedback!r} needs a {column} column{where}; the columns are {table.column_names}"
            )
        if feedback == "label":
            mask = pc.equal(table.column("label"), 1.0)
        else:
            if threshold is None:
                raise ValueError("feedback='rating' needs a threshold (e.g. threshold=4.0)")
            mask = pc.greater_equal(table.column("rating"), float(threshold))
        kept = table.filter(mask)
    if kept.num_rows == 0:
        rule = {"all": "", "label": " (label == 1)", "rating": f" (rating >= {threshold})"}[feedback]
        raise DataError(f"no positive interactions{where}{rule}: {table.num_rows} rows, none positive")
    return kept


def dedupe(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
    """Row indices [m] (ascending) that keep one row per (user, item) pair: the latest by timestamp,
    the last in file order on ties or without timestamps."""
    n = len(users)
    key = users.astype(np.int64) * (int(items.max()) + 1 if n else 1) + items
    order = np.argsort(key, kind="stable")  # rows of one pair together, in file order
    k = key[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    if len(starts) == n:
        return np.arange(n)  # no duplicates: the common case, one sort
    ends = np.append(starts[1:], n) - 1
    if timestamps is None:
        return np.sort(order[ends])
    ts = timestamps[order]
    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    latest = ts == np.maximum.reduceat(ts, starts)[group]
    hit = np.flatnonzero(latest)  # the last latest row of each group is the one kept
    last = np.append(group[hit][1:] != group[hit][:-1], True)
    return np.sort(order[hit[last]])


def kcore(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, k_user: int, k_item: int) -> np.ndarray:
    """Bool mask [n] of rows kept by k-core filtering, iterated to a fixed point: afterwards every
    remaining user has >= k_user rows and every remaining item >= k_item rows.

    Each round removes all rows of users / items below their threshold (both at once) and recounts.
    """
    keep = np.ones(len(users), dtype=np.bool_)
    if k_user <= 1 and k_item <= 1:
        return keep
    alive = len(users)
    while True:
        uc = np.bincount(users[keep], minlength=num_users)
        ic = np.bincount(items[keep], minlength=num_items)
        keep &= (uc[users] >= k_user) & (ic[items] >= k_item)
        now = int(keep.sum())
        if now == alive:
            return keep
        alive = now


def compact(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumbers the codes that occur in `codes` [n] to 0..m-1, keeping their order.

    Returns:
        (new codes int32 [n], the old code of each new code int64 [m] ascending).
    """
    present = np.bincount(codes, minlength=size) > 0
    remap = np.cumsum(present, dtype=np.int64) - 1
    return remap[codes].astype(np.int32), np.flatnonzero(present)
