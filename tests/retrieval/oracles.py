"""Test oracle of exact top-K: each query's float64 inner products with every item, then a plain
Python sort by the documented order. Shares no code with `twotower.retrieval`; the C++ scorer and
`topk_eager` both answer to it."""

from __future__ import annotations

import math

import numpy as np


def _rank_key(score: float, item: int) -> tuple[bool, float, int]:
    """Higher score first, then lower id; NaN after every number (-inf included)."""
    nan = math.isnan(score)
    return nan, 0.0 if nan else -score, item


def topk(queries: np.ndarray, items: np.ndarray, k: int,
         exclude: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [B, k], ids int64 [B, k]); excluded ids never appear; empty slots: -inf, -1."""
    queries, items = np.asarray(queries, np.float64), np.asarray(items, np.float64)
    scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
    for b, query in enumerate(queries):
        banned = set() if exclude is None else set(np.asarray(exclude[1])[exclude[0][b]:exclude[0][b + 1]].tolist())
        row = (items @ query).tolist()
        ranked = sorted((i for i in range(len(row)) if i not in banned), key=lambda i: _rank_key(row[i], i))[:k]
        scores[b, : len(ranked)] = [row[i] for i in ranked]
        ids[b, : len(ranked)] = ranked
    return scores, ids
