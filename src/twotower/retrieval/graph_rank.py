"""Ranking by the towers blended with a graph filter (`model.graph_filter`): `graph_ranker` for one
weight, `GraphSweep` for choosing the weight on validation and ranking test in one scoring pass.
The blend is `twotower.model.graph_filter.blend`; the lists follow `topk_torch`'s contract."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from twotower.data.csr import CSRPair, csr_pair, row_ids, take_rows
from twotower.model.graph_filter import GraphFilter, standardise
from twotower.retrieval.exact_torch import scores_topk

__all__ = ["GraphSweep", "graph_ranker"]

# (user codes [b], their exclusion CSR) -> top-K item ids [b, K], as `twotower.evaluate.Ranker`.
Ranker = Callable[[np.ndarray, CSRPair | None], np.ndarray]


def graph_ranker(user_vectors: np.ndarray, item_vectors: np.ndarray, graph: GraphFilter, history: CSRPair,
                 k: int) -> Ranker:
    """Ranks by the towers' inner products blended with a graph filter's scores at `graph.weight`
    (`twotower.model.graph_filter.blend`), over the whole catalogue, in `topk_torch`'s order.

    Args:
        user_vectors, item_vectors: as `twotower.evaluate.exact_ranker`'s.
        graph: the filter, its blend weight included.
        history: CSR over users (row = user code) of the histories the filter reads (the training split).
        k: list length.
    """
    blended = _BlendedScores(user_vectors, item_vectors, graph, history)

    def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
        parts = []
        for start, towers, filtered in blended.chunks(np.asarray(users, dtype=np.int64)):
            rows = np.arange(start, start + len(towers))
            parts.append(_top_k(towers + np.float32(graph.weight) * filtered, None if exclude is None
                                else take_rows(exclude, rows), k))
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)

    return rank


class GraphSweep:
    """The blended top-k lists of several weights and several exclusion rules (one per split),
    computed in one pass over the users: each user's blended scores are computed once, whichever
    weight and split asks first, and every (split, weight) list is kept by user code. So choosing
    a weight on validation and ranking test with it costs one scoring pass, not one per weight and
    split.

    Args:
        user_vectors, item_vectors, graph, history, k: as `graph_ranker`'s.
        weights: the blend weights.
        excludes: per split name, the CSR over all users of the items its rankings leave out (the
            split's `SplitTargets.exclude`); a split's rankers read theirs from here.
    """

    def __init__(self, user_vectors: np.ndarray, item_vectors: np.ndarray, graph: GraphFilter, history: CSRPair, k: int,
                 weights: Sequence[float], excludes: dict[str, CSRPair | None]) -> None:
        self._blended = _BlendedScores(user_vectors, item_vectors, graph, history)
        self._k, self._weights, self._excludes = int(k), tuple(float(w) for w in weights), dict(excludes)
        num_users = len(user_vectors)
        self._done = np.zeros(num_users, dtype=bool)
        self._lists = {(split, w): np.full((num_users, self._k), -1, dtype=np.int32)
                       for split in self._excludes for w in self._weights}

    def ranker(self, weight: float, split: str) -> Ranker:
        """The ranker of one weight and split (the `exclude` it is called with is the split's own
        rows, which the sweep already holds)."""
        key = (split, float(weight))
        if key not in self._lists:
            raise ValueError(f"weight {weight} and split {split!r} are not among the sweep's weights "
                             f"{list(self._weights)} and splits {list(self._excludes)}")

        def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
            users = np.asarray(users, dtype=np.int64)
            self._fill(users[~self._done[users]])
            return self._lists[key][users].astype(np.int64)

        return rank

    def _fill(self, users: np.ndarray) -> None:
        users = np.unique(users)
        for start, towers, filtered in self._blended.chunks(users):
            rows = users[start:start + len(towers)]
            for split, exclude in self._excludes.items():
                excluded = None if exclude is None else take_rows(exclude, rows)
                for weight in self._weights:
                    scores = towers + np.float32(weight) * filtered if weight else towers.copy()
                    self._lists[(split, weight)][rows] = _top_k(scores, excluded, self._k)
        self._done[users] = True


class _BlendedScores:
    """The two standardised halves of the blend for chunks of users, bounded in memory."""

    def __init__(self, user_vectors: np.ndarray, item_vectors: np.ndarray, graph: GraphFilter,
                 history: CSRPair) -> None:
        if graph.num_items != len(item_vectors):
            raise ValueError(f"the graph filter covers {graph.num_items} items; the model has {len(item_vectors)}")
        self._queries = torch.from_numpy(np.array(user_vectors, dtype=np.float32))  # copies: inputs may be read-only
        self._items = torch.from_numpy(np.array(item_vectors, dtype=np.float32))
        self._graph, self._history = graph, csr_pair(history)

    def chunks(self, users: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yields (offset into `users`, standardised tower scores, standardised filter scores)."""
        step = max(1, (1 << 24) // max(len(self._items), 1))  # bounds the [rows, items] matrices
        for start in range(0, len(users), step):
            rows = users[start:start + step]
            towers = standardise((self._queries[torch.from_numpy(rows)] @ self._items.T).numpy())
            yield start, towers, standardise(self._graph.scores(*take_rows(self._history, rows)))


def _top_k(scores: np.ndarray, exclude: CSRPair | None, k: int) -> np.ndarray:
    """int64 [rows, k] the best columns of each row, as the exact rankers order them (ties: lower
    id), excluded ones (and slots beyond them) as -1."""
    excluded = None if exclude is None else (torch.from_numpy(row_ids(exclude[0])),
                                             torch.from_numpy(np.asarray(exclude[1], dtype=np.int64)))
    return scores_topk(torch.from_numpy(np.asarray(scores, dtype=np.float32)), min(k, scores.shape[1]),
                       excluded)[1].numpy()
