"""The scoring algebra, in one place: what a model's score is, the inner product that ranks like it,
the correction back, and the hnswlib space that searches it.

A model scores a (user, item) pair of tower outputs (u, v) by one of `SCORINGS`:

- "dot": u.v
- "cosine": u.v, the towers having L2-normalised u and v
- "neg_l2": -||u - v||^2 = 2 u.v - ||v||^2 - ||u||^2

Search form: the exact scorer, the HNSW index and the losses all take inner products, so every scoring
is rewritten as one (`inner_product_form`). "dot" and "cosine" stay as they are. "neg_l2" becomes
q' = [u, 1], v' = [2v, -||v||^2], whose inner product is the score plus ||u||^2, a constant per query:
the same ranking, and the same softmax over items. `true_scores` subtracts that constant again, so
that what a person sees is -||u - v||^2.

HNSW space (`HNSWSpace`): hnswlib's inner-product space ('ip') over the search form for "dot" and
"cosine"; for "neg_l2" its L2 space over the raw item vectors v recovered from [2v, -||v||^2] (a graph
over the form itself is useless: its inner products are dominated by the norm column), queries
[u, 1] searched as u, and each squared distance d reported as the form's score ||u||^2 - d.

This module imports NumPy only; torch tensors are handled when torch is already loaded.

Example:
    >>> u, v = np.array([[1.0, 2.0]]), np.array([[3.0, 0.0]])
    >>> q, w = inner_product_form(u, v, "neg_l2")
    >>> true_scores(q, (q @ w.T).astype(np.float32), "neg_l2").tolist()  # -((1-3)^2 + (2-0)^2)
    [[-8.0]]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from twotower.settings.model import SCORINGS

__all__ = [
    "SCORINGS",
    "HNSWSpace",
    "check_scoring",
    "inner_product_form",
    "item_queries",
    "pairwise_scores",
    "true_scores",
]

_HNSW_SPACE_NAMES = {"dot": "ip", "cosine": "ip", "neg_l2": "l2"}


def check_scoring(scoring: object) -> str:
    """`scoring` if it is one of `SCORINGS`; a ValueError naming the choices otherwise."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}; got {scoring!r}")
    return str(scoring)


def pairwise_scores(users: Any, items: Any, scoring: str) -> Any:
    """Exact scores of every (user, item) pair of torch tensors: [B, D] x [N, D] -> [B, N]."""
    if check_scoring(scoring) == "neg_l2":
        import torch

        return -torch.cdist(users, items).square()
    return users @ items.T


# -- the search form ---------------------------------------------------------------------------------
def inner_product_form(queries: Any, items: Any, scoring: str, *, exact: bool = False) -> tuple[Any, Any]:
    """Rewrites (query, item) vectors so that their inner product ranks items exactly by `scoring`.

    - "dot": unchanged.
    - "cosine": unchanged; the towers already L2-normalise their outputs, so the inner product is
      the cosine.
    - "neg_l2": -||q - v||^2 = 2 q.v - ||v||^2 - ||q||^2. The last term is the same for every item of
      a query, so q' = [q, 1] and v' = [2 v, -||v||^2] give q'.v' = -||q - v||^2 + ||q||^2: the exact
      score up to a per-query constant, hence the same ranking (and the same softmax over items).

      With `exact`, q' = [q, 1, -||q||^2] and v' = [2 v, -||v||^2, 1] give q'.v' = -||q - v||^2 itself,
      for a softmax over queries (the item-to-query side of a symmetric loss), where the per-query
      constant does not cancel.

    Works on torch tensors (differentiable) and on NumPy arrays; either side may be None to
    transform only the other.

    Args:
        queries: [B, D] or None.
        items: [N, D] or None.
        scoring: "dot", "cosine" or "neg_l2".

    Returns:
        (queries' [B, D'], items' [N, D']) with D' = D, or D + 1 for "neg_l2" (D + 2 with `exact`).

    Example:
        >>> q, v = np.ones((1, 2), np.float32), np.eye(2, dtype=np.float32)
        >>> inner_product_form(q, v, "neg_l2")[1].tolist()
        [[2.0, 0.0, -1.0], [0.0, 2.0, -1.0]]
    """
    if scoring in ("dot", "cosine"):
        return queries, items
    if scoring != "neg_l2":
        raise ValueError(f"scoring must be 'dot', 'cosine' or 'neg_l2'; got {scoring!r}")
    out_q = out_v = None
    if queries is not None:
        out_q = _append_columns(queries, True, exact)
    if items is not None:
        out_v = _append_columns(items, False, exact)
    return out_q, out_v


def _append_columns(x: Any, query: bool, exact: bool) -> Any:
    """neg_l2's extra columns. Queries: [q, 1] ([q, 1, -||q||^2] when exact); items: [2v, -||v||^2]
    ([2v, -||v||^2, 1] when exact). The norm is summed in float64 on both paths (and by the HNSW
    space, which recomputes it from v), so they give the same float32 column."""
    if _is_tensor(x):
        import torch

        wide = x.double()
        norm = -(wide * wide).sum(dim=1, keepdim=True).to(x.dtype)
        ones = torch.ones_like(x[:, :1])
        parts = [x, ones, norm] if query else [2 * x, norm, ones]
        return torch.cat(parts if exact else parts[:2], dim=1)
    wide = x.astype(np.float64)
    norm = -_squared_norms(wide)
    ones = np.ones_like(wide[:, :1])
    parts = [wide, ones, norm] if query else [2 * wide, norm, ones]
    return np.concatenate(parts if exact else parts[:2], axis=1).astype(x.dtype)


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


def _squared_norms(rows: np.ndarray) -> np.ndarray:
    """float64 [n, 1] squared L2 norms of the rows of `rows` [n, d]."""
    wide = rows.astype(np.float64)
    return (wide * wide).sum(axis=1, keepdims=True)


def item_queries(items: np.ndarray, scoring: str) -> np.ndarray:
    """Item search vectors [N, D'] (`inner_product_form`'s item side) as query search vectors of the
    same items, for item-to-item search: unchanged for "dot" and "cosine"; [v, 1] from [2v, -||v||^2]
    for "neg_l2" (halving is exact in float32)."""
    if check_scoring(scoring) != "neg_l2":
        return items
    raw = np.ascontiguousarray(items[:, :-1] * np.float32(0.5))
    return inner_product_form(raw, None, scoring)[0]


def true_scores(queries: np.ndarray, scores: np.ndarray, scoring: str) -> np.ndarray:
    """Search-form scores [B, k] of search-form queries [B, D'] as the model's own scores, in the dtype
    of `scores`: unchanged for "dot" and "cosine"; for "neg_l2" minus ||q||^2 (summed in float64), the
    constant the form drops, giving -||q - v||^2. Padding (-inf) stays -inf."""
    if check_scoring(scoring) != "neg_l2":
        return scores
    return (scores - _squared_norms(queries[:, :-1])).astype(scores.dtype, copy=False)


# -- the HNSW space ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HNSWSpace:
    """How hnswlib searches the search form of one scoring (see the module docstring).

    Attributes:
        scoring: the model's scoring.
    """

    scoring: str

    def __post_init__(self) -> None:
        check_scoring(self.scoring)

    @property
    def name(self) -> str:
        """hnswlib's space: 'ip' or 'l2'."""
        return _HNSW_SPACE_NAMES[self.scoring]

    @property
    def min_dim(self) -> int:
        """The narrowest search form: neg_l2's carries its norm column besides at least one value."""
        return 2 if self.name == "l2" else 1

    def graph_dim(self, dim: int) -> int:
        """Width of the vectors the graph stores, for search vectors of width `dim`."""
        return dim - 1 if self.name == "l2" else dim

    def items_to_graph(self, items: np.ndarray) -> np.ndarray:
        """Search-form item vectors -> what the graph stores: as given, or v from [2v, -||v||^2]."""
        if self.name == "ip":
            return items
        return np.ascontiguousarray(items[:, :-1] * np.float32(0.5))

    def items_from_graph(self, stored: np.ndarray, graph_dim: int) -> np.ndarray:
        """What the graph stores -> search-form item vectors (the exact scorer's input)."""
        stored = np.ascontiguousarray(stored, dtype=np.float32).reshape(-1, graph_dim)
        if self.name == "ip":
            return stored
        return inner_product_form(None, stored, self.scoring)[1]

    def queries_to_graph(self, queries: np.ndarray) -> np.ndarray:
        """Search-form queries -> what the graph is searched with: as given, or u from [u, 1]."""
        return queries if self.name == "ip" else np.ascontiguousarray(queries[:, :-1])

    def check_queries(self, queries: np.ndarray) -> None:
        """neg_l2 queries must be in the search form [u, 1]: a raw vector would lose a column silently."""
        if self.name == "l2" and len(queries) and not (queries[:, -1] == 1).all():
            raise ValueError("queries of a neg_l2 index must be in its search form [q, 1] "
                             "(TwoTowerModel.user_search_vectors): their last column must be 1")

    def form_scores(self, queries: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """hnswlib distances -> the search form's scores ('ip': 1 - <q, v>; 'l2': ||u||^2 - ||u - v||^2)."""
        if self.name == "ip":
            return (1.0 - distances).astype(np.float32)
        return (_squared_norms(queries[:, :-1]) - distances).astype(np.float32)
