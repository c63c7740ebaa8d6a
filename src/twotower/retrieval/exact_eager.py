"""Eager NumPy exact top-K: the simplest correct answer, with `topk`'s signature (public as
`twotower.topk_eager`). Tests check it, like the C++ scorer, against the plain-loop oracle in
`tests/retrieval/oracles.py`.

It materialises the full score matrix (in blocks of queries), masks excluded items and sorts every row
with a stable total order, so it is slow but obviously right. Scores are computed in float64.
"""

from __future__ import annotations

import numpy as np

from twotower.retrieval.checks import check_exclude, check_k, check_matrix

_BLOCK_ELEMENTS = 1 << 22  # scores held at once: bounds memory for large catalogues


def topk_eager(
    queries: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    num_threads: int | None = None,
    simd: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, same contract as `twotower.topk`.

    Order: higher score first, then lower item id; NaN scores rank after every number (-inf included);
    excluded items never appear; missing slots hold id -1 and score -inf.

    Args:
        queries: [B, D] float32.
        items: [N, D] float32.
        k: results per query, k >= 1 (k > N pads).
        exclude: optional CSR (indptr [B+1], indices) of item ids to skip per query.
        num_threads: accepted for signature parity; this path is single-threaded.
        simd: accepted for signature parity; this path has one.

    Returns:
        (scores float32 [B, k], ids int64 [B, k]).
    """
    del num_threads, simd
    queries = check_matrix("queries", queries)
    items = check_matrix("items", items)
    if queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"queries and items must have the same dimension D; got queries {queries.shape} and items {items.shape}"
        )
    k = check_k(k)
    num_queries, num_items = queries.shape[0], items.shape[0]
    exclude = check_exclude(exclude, num_queries, num_items)

    out_scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    out_ids = np.full((num_queries, k), -1, dtype=np.int64)
    item_ids = np.arange(num_items, dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(num_items, 1))
    items64 = items.astype(np.float64)
    for start in range(0, num_queries, block):
        stop = min(start + block, num_queries)
        scores = queries[start:stop].astype(np.float64) @ items64.T
        for row in range(stop - start):
            keep = np.ones(num_items, dtype=bool)
            if exclude is not None:
                indptr, indices = exclude
                keep[indices[indptr[start + row] : indptr[start + row + 1]]] = False
            row_scores, row_ids = scores[row][keep], item_ids[keep]
            is_nan = np.isnan(row_scores)
            # lexsort: the last key is the primary one.
            order = np.lexsort((row_ids, -np.where(is_nan, 0.0, row_scores), is_nan))[:k]
            out_scores[start + row, : order.size] = row_scores[order]
            out_ids[start + row, : order.size] = row_ids[order]
    return out_scores, out_ids
