"""The one interface of top-K search over a fixed catalogue, which every index follows.

`ExactIndex` (exact, the C++ scorer) and `HNSWIndex` (approximate, hnswlib) both answer
`search(queries, k, exclude=...)` with the contract of `twotower.topk`: the caller, e.g. the
`Recommender`, does not need to know which one it holds.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

CSRPair = tuple[np.ndarray, np.ndarray]


@runtime_checkable
class Searcher(Protocol):
    """Top-k items by inner product for each query, excluding items per query.

    `queries` [B, D] float32 search vectors (`twotower.retrieval.scoring.inner_product_form`);
    `exclude` an optional CSR (indptr [B + 1], item codes) of items to skip per query. Returns
    (scores float32 [B, k] descending, ids int64 [B, k]), missing slots holding -inf and -1.
    """

    def search(self, queries: Any, k: int, *, exclude: CSRPair | None = None) -> tuple[np.ndarray, np.ndarray]: ...
