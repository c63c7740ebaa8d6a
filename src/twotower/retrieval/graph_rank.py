"""Ranking by the towers blended with a graph filter (`model.graph_filter`): `graph_ranker` for one
weight, `GraphSweep` for choosing the weight on validation and ranking test in one scoring pass,
`blended_topk` over given score rows (a live catalogue), and `rerank_candidates` for approximate
search (HNSW), which blends the candidates of the towers and of the filter with the catalogue's
own statistics (`TowerMoments`), so it orders them as the exact blend would.
The blend is `twotower.model.graph_filter.blend`; the lists follow `topk_torch`'s contract."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from twotower.data.csr import CSRPair, csr_pair, row_ids, take_rows
from twotower.model.graph_filter import GraphFilter, blend, standardise
from twotower.retrieval.exact_torch import scores_topk

__all__ = ["ALONE", "GraphSweep", "TowerMoments", "blended_topk", "candidate_count", "graph_ann_ranker", "graph_ranker",
           "rerank_candidates"]

# GraphSweep's weight for the filter's own ranking, without the towers.
ALONE = math.inf

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
            scores = torch.add(towers, filtered[graph.sharpening], alpha=graph.weight)
            parts.append(_top_k(scores.numpy(), None if exclude is None else take_rows(exclude, rows), k))
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)

    return rank


class GraphSweep:
    """The blended top-k lists of several (sharpening time, weight) pairs and several exclusion
    rules (one per split), computed in one pass over the users: each user's tower scores and
    filter scores (every sharpening time from one set of propagations) are computed once, whichever
    pair and split asks first, and every (split, sharpening, weight) list is kept by user code. So
    choosing the filter on validation and ranking test with it costs one scoring pass, not one per
    candidate and split, and one top-k per pair, not one per split (`_fill`: the splits' shared
    exclusions left out, each split's further ones dropped from a deeper list).

    Args:
        user_vectors, item_vectors, graph, history, k: as `graph_ranker`'s (`graph`'s own
            sharpening is not used: `sharpenings` are).
        weights: the blend weights.
        excludes: per split name, the CSR over all users of the items its rankings leave out (the
            split's `SplitTargets.exclude`); a split's rankers read theirs from here.
        sharpenings: the filter's sharpening times (`GraphFilter.sharpened_scores`).
        alone: the splits for which the filter's own rankings (no towers; `ranker(ALONE, ...)`) are
            kept too, for each sharpening time.
    """

    def __init__(self, user_vectors: np.ndarray, item_vectors: np.ndarray, graph: GraphFilter, history: CSRPair, k: int,
                 weights: Sequence[float], excludes: dict[str, CSRPair | None],
                 sharpenings: Sequence[float] = (0.0,), alone: Sequence[str] = ()) -> None:
        self._times = tuple(sorted({float(t) for t in sharpenings}))
        self._blended = _BlendedScores(user_vectors, item_vectors, graph, history, self._times)
        self._k, self._weights, self._excludes = int(k), tuple(float(w) for w in weights), dict(excludes)
        if unknown := sorted(set(alone) - set(self._excludes)):
            raise ValueError(f"alone names splits {unknown} the sweep does not rank ({list(self._excludes)})")
        num_users = len(user_vectors)
        self._done = np.zeros(num_users, dtype=bool)
        keys = {self._key(split, t, w) for split in self._excludes for t in self._times for w in self._weights}
        keys |= {self._key(split, t, ALONE) for split in alone for t in self._times}
        self._lists = {key: np.full((num_users, self._k), -1, dtype=np.int32) for key in sorted(keys)}

    def _key(self, split: str, sharpening: float, weight: float) -> tuple[str, float, float]:
        """Weight 0 is the towers alone whatever the sharpening: one list serves them all."""
        return (split, float(sharpening) if weight else self._times[0], float(weight))

    def ranker(self, weight: float, split: str, sharpening: float = 0.0) -> Ranker:
        """The ranker of one weight (`ALONE`: the filter's own ranking), sharpening time and split
        (the `exclude` it is called with is the split's own rows, which the sweep already holds)."""
        key = self._key(split, sharpening, weight)
        if key not in self._lists or float(sharpening) not in self._times:
            raise ValueError(f"weight {weight}, sharpening {sharpening} and split {split!r} are not among the "
                             f"sweep's weights {list(self._weights)}, sharpenings {list(self._times)} and splits "
                             f"{list(self._excludes)} (the filter alone: the splits given as alone)")

        def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
            users = np.asarray(users, dtype=np.int64)
            self._fill(users[~self._done[users]])
            return self._lists[key][users].astype(np.int64)

        return rank

    def _fill(self, users: np.ndarray) -> None:
        """Ranks `users` for every list. One top-k per (sharpening, weight) serves every split: it
        leaves out what all splits leave out, runs as deep as the most any split leaves out beyond
        that, and each split drops its own further items (ranking after dropping entries equals
        ranking without them; the order is total, ties to the lower id)."""
        users = np.unique(users)
        pairs: dict[tuple[float, float], list[str]] = {}
        for split, time, weight in self._lists:
            pairs.setdefault((time, weight), []).append(split)
        for start, towers, filtered in self._blended.chunks(users):
            rows = users[start:start + len(towers)]
            common, extra = _shared_exclusions({split: None if exclude is None else take_rows(exclude, rows)
                                                for split, exclude in self._excludes.items()}, towers.shape)
            deepest = {split: int(mask.sum(axis=1).max(initial=0)) for split, mask in extra.items()}
            scores = torch.empty_like(towers)  # one buffer for every list of the chunk (_top_k overwrites it)
            for (time, weight), splits in pairs.items():
                if weight == ALONE:
                    scores.copy_(filtered[time])
                elif weight:
                    torch.add(towers, filtered[time], alpha=weight, out=scores)
                else:
                    scores.copy_(towers)
                depth = self._k + max(deepest[split] for split in splits)
                top = _top_k(scores.numpy(), common, min(depth, towers.shape[1]))
                for split in splits:
                    self._lists[(split, time, weight)][rows] = _without(top, extra[split], self._k)
        self._done[users] = True


def _shared_exclusions(excluded: dict[str, CSRPair | None], shape: tuple[int, int]
                       ) -> tuple[CSRPair | None, dict[str, np.ndarray]]:
    """(the CSR of the items every split leaves out, per split a bool [rows, items] mask of the
    items it leaves out beyond those), for a chunk of rows."""
    masks = {}
    for split, exclude in excluded.items():
        mask = np.zeros(shape, dtype=bool)
        if exclude is not None:
            mask[row_ids(exclude[0]), np.asarray(exclude[1], dtype=np.int64)] = True
        masks[split] = mask
    common = np.logical_and.reduce(list(masks.values())) if masks else np.zeros(shape, dtype=bool)
    extra = {split: mask & ~common for split, mask in masks.items()}
    counts = common.sum(axis=1)
    shared = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.nonzero(common)[1].astype(np.int64))
    return (shared if len(shared[1]) else None), extra


def _without(top: np.ndarray, drop: np.ndarray, k: int) -> np.ndarray:
    """The first `k` entries of each row of `top` (int64 ids, -1 padding last) whose id `drop`
    [rows, items] does not mark, in their order; -1 where fewer are left."""
    dropped = np.take_along_axis(drop, np.maximum(top, 0), axis=1) & (top >= 0)
    order = np.argsort(dropped, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(top, order, axis=1)
    kept[np.take_along_axis(dropped, order, axis=1)] = -1
    if kept.shape[1] < k:
        kept = np.concatenate([kept, np.full((len(kept), k - kept.shape[1]), -1, dtype=kept.dtype)], axis=1)
    return kept


class _BlendedScores:
    """The two standardised halves of the blend for chunks of users, bounded in memory: the towers'
    scores and the filter's for each sharpening time."""

    def __init__(self, user_vectors: np.ndarray, item_vectors: np.ndarray, graph: GraphFilter,
                 history: CSRPair, sharpenings: Sequence[float] | None = None) -> None:
        if graph.num_items != len(item_vectors):
            raise ValueError(f"the graph filter covers {graph.num_items} items; the model has {len(item_vectors)}")
        self._queries = torch.from_numpy(np.array(user_vectors, dtype=np.float32))  # copies: inputs may be read-only
        self._items = torch.from_numpy(np.array(item_vectors, dtype=np.float32))
        self._graph, self._history = graph, csr_pair(history)
        self._times = (graph.sharpening,) if sharpenings is None else tuple(sharpenings)

    def chunks(self, users: np.ndarray) -> Iterator[tuple[int, torch.Tensor, dict[float, torch.Tensor]]]:
        """Yields (offset into `users`, standardised tower scores, standardised filter scores by
        sharpening time), float32 [rows, items] each."""
        step = max(1, (1 << 24) // max(len(self._items), 1))  # bounds the [rows, items] matrices
        for start in range(0, len(users), step):
            rows = users[start:start + step]
            towers = standardise((self._queries[torch.from_numpy(rows)] @ self._items.T).numpy())
            filtered = self._graph.sharpened_scores(*take_rows(self._history, rows), self._times)
            yield start, torch.from_numpy(towers), {t: torch.from_numpy(standardise(f))
                                                    for t, f in zip(self._times, filtered, strict=True)}


def blended_topk(tower_scores: np.ndarray, filter_scores: np.ndarray, weight: float, exclude: CSRPair | None,
                 k: int) -> np.ndarray:
    """int64 [B, k] the columns of the best blended scores (`twotower.model.graph_filter.blend`, each
    row standardised over all its columns), in `topk_torch`'s order; `exclude` a CSR of columns
    to leave out per row (-1 slots where fewer than k are left)."""
    return _top_k(blend(tower_scores, filter_scores, weight), exclude, k)


def candidate_count(k: int, available: int) -> int:
    """How many candidates the approximate blend takes from each of the towers and the filter per
    query: 4k, at least 200 (the filter's weight is small, so the blend's top k lie among the
    towers' best few k and the filter's own best), at most every item."""
    return max(1, min(max(4 * int(k), 200), int(available)))


@dataclass(frozen=True)
class TowerMoments:
    """The first two moments of a catalogue's search vectors, so the mean and spread of a query's
    tower scores over the whole catalogue come without scoring it: mean = q . mu, variance =
    q^T (S / n) q - (q . mu)^2 (population, as `standardise`). Kept as running sums (float64), so
    item changes update them in O(changed x D^2).

    Attributes:
        count: items counted.
        total: float64 [D] sum of their vectors.
        outer: float64 [D, D] sum of their outer products.
    """

    count: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def of(cls, vectors: np.ndarray) -> TowerMoments:
        """The moments of `vectors` [n, D]."""
        vectors = np.asarray(vectors, dtype=np.float64)
        return cls(len(vectors), vectors.sum(axis=0), vectors.T @ vectors)

    def changed(self, removed: np.ndarray, added: np.ndarray) -> TowerMoments:
        """The moments after `removed` [r, D] left the catalogue and `added` [a, D] joined it."""
        removed, added = (np.asarray(v, dtype=np.float64).reshape(-1, len(self.total)) for v in (removed, added))
        total = self.total - removed.sum(axis=0) + added.sum(axis=0)
        outer = self.outer - removed.T @ removed + added.T @ added
        return TowerMoments(self.count - len(removed) + len(added), total, outer)

    def standardised(self, queries: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """float32 scores [B, C] of `queries` [B, D] standardised as over the whole catalogue (a
        query whose scores are all equal gives zeros)."""
        if self.count <= 0:
            return np.zeros(np.shape(scores), dtype=np.float32)
        q = np.asarray(queries, dtype=np.float64)
        mean = q @ (self.total / self.count)
        variance = np.einsum("bd,de,be->b", q, self.outer / self.count, q) - mean ** 2
        spread = np.sqrt(np.maximum(variance, 0.0))
        centred = np.asarray(scores, dtype=np.float64) - mean[:, None]
        tiny = spread <= 1e-12 * np.maximum(np.abs(mean), 1.0)  # rounding, not spread
        out = np.divide(centred, spread[:, None], out=np.zeros_like(centred), where=~tiny[:, None])
        return out.astype(np.float32)


def rerank_candidates(queries: np.ndarray, vectors: np.ndarray, moments: TowerMoments, filter_rows: np.ndarray,
                      alive: np.ndarray | None, weight: float, found: np.ndarray, exclude: CSRPair | None,
                      k: int) -> np.ndarray:
    """The approximate blend: int64 labels [B, k] (-1 where none is left), best first, ties to the
    lower label.

    The candidates of each query are the towers' (`found`, from an approximate search that already
    left `exclude` out) and the filter's own best `candidate_count` live, not excluded labels; each
    is scored by the blend with the towers' scores standardised by `moments` and the filter's over
    the live labels. Where the exact blend's top k lie among both lists, the order is the same.

    Args:
        queries: float32 [B, D] search vectors.
        vectors: float32 [L, D] search vectors by label.
        moments: of the live labels' vectors.
        filter_rows: float32 [B, L] the filter's scores by label (0 for labels it never saw).
        alive: bool [L] the live labels (None: all).
        weight: the filter's blend weight.
        found: int64 [B, C] the towers' candidate labels (-1 padding).
        exclude: CSR of labels never to return per query.
        k: list length.
    """
    num, labels = len(queries), filter_rows.shape[1]
    live = np.ones(labels, dtype=bool) if alive is None else np.asarray(alive, dtype=bool)
    filter_z = np.zeros(filter_rows.shape, dtype=np.float32)
    filter_z[:, live] = standardise(filter_rows[:, live])
    pick = np.where(live[None, :], filter_z, -np.inf)
    if exclude is not None:
        pick[row_ids(exclude[0]), np.asarray(exclude[1], dtype=np.int64)] = -np.inf
    count = candidate_count(k, int(live.sum()))
    if count < labels:
        own = np.argpartition(-pick, count - 1, axis=1)[:, :count]
    else:
        own = np.tile(np.arange(labels), (num, 1))
    own = np.where(np.take_along_axis(pick, own, axis=1) > -np.inf, own, -1)
    pool = np.concatenate([np.asarray(found, dtype=np.int64).reshape(num, -1), own], axis=1)
    pool = np.sort(pool, axis=1)
    repeat = np.zeros(pool.shape, dtype=bool)
    repeat[:, 1:] = pool[:, 1:] == pool[:, :-1]
    usable = (pool >= 0) & ~repeat
    safe = np.maximum(pool, 0)
    towers = np.einsum("bd,bcd->bc", np.asarray(queries, dtype=np.float32), vectors[safe])
    score = moments.standardised(queries, towers) + np.float32(weight) * np.take_along_axis(filter_z, safe, axis=1)
    score = np.where(usable, score, -np.inf)
    order = np.lexsort((pool, -score), axis=1)[:, :k]
    out = np.take_along_axis(pool, order, axis=1)
    out[~np.take_along_axis(usable, order, axis=1)] = -1
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((num, k - out.shape[1]), -1, dtype=np.int64)], axis=1)
    return out


def graph_ann_ranker(index: Any, user_vectors: np.ndarray, item_vectors: np.ndarray, graph: GraphFilter,
                     history: CSRPair, k: int, moments: TowerMoments | None = None) -> Ranker:
    """The approximate blend as a ranker (`graph_ranker`'s contract): each user's candidates from
    `index` (a `Searcher`, e.g. `HNSWIndex`, over `item_vectors`) and from the filter, re-ranked by
    `rerank_candidates`.

    Args:
        index: searches the item vectors by inner product, leaving out `exclude`.
        user_vectors, item_vectors, graph, history, k: as `graph_ranker`'s.
        moments: `TowerMoments.of(item_vectors)`, when the caller keeps it.
    """
    moments = TowerMoments.of(item_vectors) if moments is None else moments
    vectors = np.asarray(item_vectors, dtype=np.float32)
    count = candidate_count(k, len(vectors))
    step = max(1, (1 << 24) // max(len(vectors), 1))  # bounds the [rows, items] filter scores

    def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        parts = []
        for start in range(0, len(users), step):
            rows = np.arange(start, min(start + step, len(users)))
            queries = np.ascontiguousarray(user_vectors[users[rows]], dtype=np.float32)
            excluded = None if exclude is None else take_rows(exclude, rows)
            found = index.search(queries, count, exclude=excluded)[1]
            filtered = graph.scores(*take_rows(history, users[rows]))
            parts.append(rerank_candidates(queries, vectors, moments, filtered, None, graph.weight, found, excluded, k))
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)

    return rank


def _top_k(scores: np.ndarray, exclude: CSRPair | None, k: int) -> np.ndarray:
    """int64 [rows, k] the best columns of each row, as the exact rankers order them (ties: lower
    id), excluded ones (and slots beyond them) as -1. `scores` is a temporary of the caller's: its
    excluded entries are overwritten."""
    excluded = None if exclude is None else (torch.from_numpy(row_ids(exclude[0])),
                                             torch.from_numpy(np.asarray(exclude[1], dtype=np.int64)))
    return scores_topk(torch.from_numpy(np.asarray(scores, dtype=np.float32)), min(k, scores.shape[1]),
                       excluded, overwrite=True)[1].numpy()
