"""The live catalogue: the items a service searches, with items added, replaced and deleted while it
serves, each change visible to the next query.

Items are searched by label: a trained item's label is its code in the model's vocabulary (so the
users' seen items, stored as codes, stay valid exclusions), an item added live gets the next free
label. Labels are never reused, so an answer found just before a deletion still decodes.

Readers never wait for writers except inside hnswlib's readers-writer lock:
- the catalogue's own state (vectors, which labels are alive, the exact index) is immutable and
  replaced in one assignment (copy-on-write); a search reads `self._state` once and uses only that;
- with HNSW the graph is shared and mutated in place under `HNSWIndex`'s readers-writer lock
  (hnswlib must not search while it inserts); a deletion leaves the graph before the state says so,
  an addition enters it after its id can be decoded, so no search ever returns a deleted item
  once the deletion has returned, and never an id it cannot name.
Writers (`upsert`, `delete`) run one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from twotower.model.graph_filter import GraphFilter
from twotower.retrieval.exact import ExactIndex
from twotower.retrieval.graph_rank import TowerMoments, blended_topk, candidate_count, rerank_candidates
from twotower.retrieval.hnsw import HNSWIndex
from twotower.retrieval.recommend import Recommender, UnknownIdError, load_index
from twotower.retrieval.scoring import item_queries, true_scores
from twotower.retrieval.searcher import CSRPair
from twotower.serve.ids import IdLookup

__all__ = ["Answer", "LiveCatalogue"]


@dataclass(frozen=True)
class Answer:
    """One query's answer, best first: external item ids and the model's scores (plain lists, for JSON)."""

    items: list[Any]
    scores: list[float]


@dataclass(frozen=True)
class _State:
    """One immutable version of the catalogue.

    vectors: search vectors [L, D'] by label (rows of deleted labels keep their last vector).
    alive: bool [L], which labels are in the catalogue.
    added: external id -> label of items added live (ids outside the trained vocabulary).
    exact: the exact index over the alive rows, None with HNSW.
    row_labels: label of each row of `exact`; label_rows: row of each label (-1: deleted), None when
        rows are labels (nothing deleted).
    moments: of the alive vectors, for the approximate blend with a graph filter (HNSW only; else None).
    """

    vectors: np.ndarray
    alive: np.ndarray
    added: dict[Any, int]
    exact: ExactIndex | None
    row_labels: np.ndarray | None
    label_rows: np.ndarray | None
    moments: TowerMoments | None = None


class LiveCatalogue:
    """The searchable items of one served model: exact (the C++ scorer, re-packed on each change) or
    its saved HNSW index (changed in place).

    Args:
        recommender: the model whose items start the catalogue (its tower and vocabulary).
        ann: search the model directory's saved HNSW index instead of the exact scorer.
        num_threads: threads of one search (None: the scorer's and hnswlib's default, all cores).
    """

    def __init__(self, recommender: Recommender, *, ann: bool = False, num_threads: int | None = None) -> None:
        self.recommender = recommender
        self.scoring = recommender.scoring
        self.ann = ann
        self._vocab = recommender.trained.item_vocab
        self._ids = IdLookup(self._vocab)
        self._num_trained = recommender.num_items
        self._extra_ids: list[Any] = []  # labels num_trained.. in order; only appended to
        self._write_lock = threading.Lock()
        vectors = recommender.item_search_vectors()
        self._threads = num_threads
        self._hnsw: HNSWIndex | None = load_index(recommender.trained) if ann else None
        if self._hnsw is not None and num_threads is not None:
            self._hnsw.num_threads = num_threads
        alive = np.ones(len(vectors), dtype=bool)
        exact = None if ann else ExactIndex(vectors)
        moments = TowerMoments.of(vectors) if ann and recommender.trained.graph is not None else None
        self._state = _State(vectors, alive, {}, exact, None, None, moments)

    # -- reading ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Width D' of the search vectors."""
        return int(self._state.vectors.shape[1])

    def __len__(self) -> int:
        """Number of items in the catalogue now."""
        return int(self._state.alive.sum())

    def labels(self, ids: Sequence[Any]) -> np.ndarray:
        """int64 labels of external item ids, -1 for an id not in the catalogue (never added, or deleted)."""
        return self._labels(self._state, list(ids))

    def _labels(self, state: _State, ids: list[Any]) -> np.ndarray:
        keys = [self._ids.key(value) for value in ids]
        codes = self._ids.codes_of_keys(keys)
        labels = np.array([state.added.get(key, code) if key is not None else -1
                           for key, code in zip(keys, codes, strict=True)], dtype=np.int64)
        known = labels >= 0
        known[known] = state.alive[labels[known]]
        return np.where(known, labels, -1)

    def decode(self, labels: np.ndarray) -> list[Any]:
        """External ids of labels (each one once held by the catalogue)."""
        trained = labels < self._num_trained
        names = self._vocab.ids[np.where(trained, labels, 0)].tolist()
        if trained.all():
            return names
        return [name if known else self._extra_ids[label - self._num_trained]
                for name, known, label in zip(names, trained.tolist(), labels.tolist(), strict=True)]

    def item_queries(self, ids: Sequence[Any]) -> tuple[np.ndarray, CSRPair, np.ndarray]:
        """For item-to-item search: the query vectors of the given items found in the catalogue, the
        CSR that leaves each one out of its own answer, and every given id's label (-1: not in the
        catalogue; the queries are those of the others, in order)."""
        state = self._state
        labels = self._labels(state, list(ids))
        found = labels[labels >= 0]
        queries = item_queries(np.ascontiguousarray(state.vectors[found]), self.scoring)
        return queries, (np.arange(len(found) + 1, dtype=np.int64), found), labels

    def answer(self, queries: np.ndarray, k: int, exclude: CSRPair | None) -> list[Answer]:
        """Top-k for each query in the model's own scores, by external id (one search call for all)."""
        if not len(queries):
            return []
        scores, labels = self.search(queries, k, exclude=exclude)
        return self._decoded(queries, scores, labels)

    def blended_answer(self, queries: np.ndarray, graph: GraphFilter, histories: CSRPair, k: int,
                       exclude: CSRPair | None) -> list[Answer]:
        """`answer` for users of a model with a graph filter: ranked by the blend of the towers and
        the filter (`twotower.retrieval.graph_rank`), as `Recommender.recommend` ranks them, over the
        live catalogue (items added live score 0 in the filter; both halves are standardised over
        the items alive now). Exact, or with HNSW over the index's and the filter's candidates.

        Args:
            queries: the users' search vectors [B, D'].
            graph: the model's filter, its blend weight included.
            histories: CSR of each user's known item codes, which the filter reads.
            k: results per user.
            exclude: CSR of labels to leave out per user.
        """
        if not len(queries):
            return []
        state = self._state
        filtered = np.zeros((len(queries), len(state.vectors)), dtype=np.float32)
        filtered[:, : self._num_trained] = graph.scores(*histories)
        if self._hnsw is not None:
            found = self._hnsw.search(queries, candidate_count(k, len(self)), exclude=exclude)[1]
            found[found >= len(state.vectors)] = -1  # added after this state was read: not in its arrays
            labels = rerank_candidates(queries, state.vectors, state.moments, filtered, state.alive, graph.weight,
                                       found, exclude, k)
        else:
            live = state.row_labels if state.row_labels is not None else np.arange(len(state.vectors))
            if state.label_rows is not None and exclude is not None:
                exclude = _relabel(exclude, state.label_rows)
            towers = queries @ state.vectors[live].T
            rows = blended_topk(towers, filtered[:, live], graph.weight, exclude, min(k, len(live)))
            labels = np.full((len(queries), k), -1, dtype=np.int64)
            labels[:, : rows.shape[1]] = np.where(rows >= 0, live[np.maximum(rows, 0)], -1)
        scores = np.einsum("bd,bkd->bk", queries, state.vectors[np.maximum(labels, 0)]).astype(np.float32)
        return self._decoded(queries, np.where(labels >= 0, scores, -np.inf).astype(np.float32), labels)

    def _decoded(self, queries: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[Answer]:
        """Search-form scores [B, k] as the model's scores and labels as external ids (-1 slots dropped)."""
        scores = true_scores(queries, scores, self.scoring)
        out = []
        for row_scores, row_labels in zip(scores, labels, strict=True):
            found = row_labels >= 0
            out.append(Answer(self.decode(row_labels[found]), [float(s) for s in row_scores[found]]))
        return out

    def search(self, queries: np.ndarray, k: int, *, exclude: CSRPair | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `Searcher` contract over labels: (scores [B, k], labels [B, k], -1 where none is left)."""
        state = self._state
        if self._hnsw is not None:
            return self._hnsw.search(queries, k, exclude=exclude)
        rows = len(state.row_labels) if state.row_labels is not None else len(state.vectors)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        if rows == 0:
            return scores, labels
        if state.label_rows is not None and exclude is not None:
            exclude = _relabel(exclude, state.label_rows)
        found_scores, found = state.exact.search(queries, min(k, rows), exclude=exclude, num_threads=self._threads)
        if state.row_labels is not None:
            found = np.where(found >= 0, state.row_labels[np.maximum(found, 0)], -1)
        scores[:, : found.shape[1]], labels[:, : found.shape[1]] = found_scores, found
        return scores, labels

    # -- writing ----------------------------------------------------------------------------------
    def upsert(self, ids: Sequence[Any], vectors: np.ndarray) -> None:
        """Adds items, or replaces the vectors of items already there (deleted ones come back).

        Args:
            ids: external ids, unique; ints for a model with integer ids, text otherwise.
            vectors: their search vectors float32 [n, D'] (`TwoTowerModel.item_search_vectors` form).

        Raises:
            ValueError: an id of the wrong kind or given twice, vectors of the wrong shape.
        """
        ids = list(ids)
        keys = [self._ids.key(value) for value in ids]
        bad = [value for value, key in zip(ids, keys, strict=True) if key is None]
        if bad:
            kind = "integers" if self._vocab.is_integer else "text"
            raise ValueError(f"item ids must be {kind} for this model; got {bad[:5]}")
        if len(set(keys)) != len(keys):
            raise ValueError("item ids must be unique within one request")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors must have shape ({len(ids)}, {self.dim}); got {vectors.shape}")
        with self._write_lock:
            state = self._state
            codes = self._ids.codes_of_keys(keys)
            labels = np.array([state.added.get(key, code) for key, code in zip(keys, codes, strict=True)],
                              dtype=np.int64)
            fresh = np.flatnonzero(labels < 0)
            added = dict(state.added)
            start = len(state.vectors)
            for offset, position in enumerate(fresh.tolist()):
                labels[position] = start + offset
                added[keys[position]] = start + offset
                self._extra_ids.append(keys[position])  # decodable before any search can find it
            grown = np.concatenate([state.vectors, np.zeros((len(fresh), self.dim), np.float32)])
            replaced = labels[(labels < len(state.alive))]
            replaced = replaced[state.alive[replaced]]
            moments = None if state.moments is None else state.moments.changed(state.vectors[replaced], vectors)
            grown[labels] = vectors
            alive = np.concatenate([state.alive, np.zeros(len(fresh), bool)])
            alive[labels] = True
            if self._hnsw is not None:
                self._hnsw.add(vectors, labels)
            self._state = self._rebuilt(replace(state, vectors=grown, alive=alive, added=added, moments=moments))

    def delete(self, ids: Sequence[Any]) -> None:
        """Deletes items by external id, all or none.

        Raises:
            UnknownIdError: listing every id not in the catalogue (nothing is deleted then).
        """
        ids = list(ids)
        with self._write_lock:
            state = self._state
            labels = self._labels(state, ids)
            unknown = [value for value, label in zip(ids, labels.tolist(), strict=True) if label < 0]
            if unknown:
                raise UnknownIdError("item", unknown, "the catalogue")
            alive = state.alive.copy()
            alive[labels] = False
            gone = state.vectors[np.unique(labels)]
            moments = None if state.moments is None else state.moments.changed(gone, gone[:0])
            if self._hnsw is not None:
                self._hnsw.remove(labels)  # out of the graph before the state says so
            self._state = self._rebuilt(replace(state, alive=alive, moments=moments))

    def _rebuilt(self, state: _State) -> _State:
        """`state` with its exact index over the alive rows (nothing to do with HNSW)."""
        if self._hnsw is not None:
            return state
        if state.alive.all():
            return replace(state, exact=ExactIndex(state.vectors), row_labels=None, label_rows=None)
        row_labels = np.flatnonzero(state.alive)
        label_rows = np.full(len(state.alive), -1, dtype=np.int64)
        label_rows[row_labels] = np.arange(len(row_labels))
        exact = ExactIndex(np.ascontiguousarray(state.vectors[row_labels])) if len(row_labels) else None
        return replace(state, exact=exact, row_labels=row_labels, label_rows=label_rows)


def _relabel(exclude: CSRPair, label_rows: np.ndarray) -> CSRPair:
    """A CSR of labels to skip per query as one of rows of the exact index, deleted labels dropped."""
    indptr, indices = (np.asarray(part, dtype=np.int64) for part in exclude)
    rows = label_rows[indices]
    keep = rows >= 0
    query = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    counts = np.bincount(query[keep], minlength=len(indptr) - 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rows[keep]
