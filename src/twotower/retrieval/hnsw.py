"""Approximate top-K over item vectors with hnswlib (HNSW), for serving.

Vectors in and scores out are those of the exact scorer: feed it `TwoTowerModel.item_search_vectors()`
and `user_search_vectors()` (the inner-product form of every scoring) and say the model's `scoring`.
The graph lives in the space that matches it (`twotower.retrieval.scoring.HNSWSpace`: inner product
for "dot" and "cosine", L2 over the raw item vectors for "neg_l2"); hnswlib labels are the item codes.

Threading rule: never search while the index is being mutated from another thread (hnswlib does not
guard its graph). `HNSWIndex` enforces it with a readers-writer lock: any number of searches run
together (hnswlib releases the GIL), while `add` / `update` / `remove` / `rebuild` / `ef` changes wait
for running searches and hold new ones back until they finish.

Files (`twotower.retrieval.hnsw_files`): `save(directory)` writes `index.hnsw` and `index.json`, each
atomically; `load` refuses files whose checksum, catalogue size or vocabulary do not match.

Example:
    >>> rng = np.random.default_rng(0)
    >>> items = rng.normal(size=(500, 16)).astype(np.float32)
    >>> index = HNSWIndex.build(items, ef=64)
    >>> scores, ids = index.search(items[:2], k=3, exclude=(np.array([0, 1, 1]), np.array([0])))
    >>> ids.shape, int(ids[0, 0]) != 0
    ((2, 3), True)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from twotower.data.types import take_rows
from twotower.metrics import hit_matrix
from twotower.retrieval import hnsw_files
from twotower.retrieval.checks import check_exclude
from twotower.retrieval.exact import ExactIndex
from twotower.retrieval.hnsw_files import INDEX_FILE, META_FILE, vocabulary_fingerprint
from twotower.retrieval.rwlock import ReadWriteLock
from twotower.retrieval.scoring import HNSWSpace

__all__ = ["INDEX_FILE", "META_FILE", "HNSWIndex", "vocabulary_fingerprint"]


class HNSWIndex:
    """HNSW index over item vectors (labels = item codes) with seen-item filtering and exact fallback.

    Args:
        dim: width D of the search vectors (for "neg_l2": D + 1, the form's extra column included).
        scoring: the model's scoring, "dot", "cosine" or "neg_l2" (see the module docstring).
        M: graph degree (memory and recall grow with it).
        ef_construction: candidate list size while building.
        ef: candidate list size while searching (recall vs speed); raised to the fetch size when a
            search needs more results.
        num_threads: hnswlib threads for add and search (None = all cores).
        rebuild_threshold: rebuild the graph from the live vectors when deleted slots exceed this
            fraction of all slots (None = never automatically).
        max_fetch: most neighbours one filtered search asks hnswlib for; a query whose k + |excluded|
            is larger, and that is left with fewer than k results, goes to the exact scorer.
        max_elements: initial capacity (grows as needed).
    """

    def __init__(
        self,
        dim: int,
        *,
        scoring: str = "dot",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 100,
        num_threads: int | None = None,
        rebuild_threshold: float | None = 0.3,
        max_fetch: int = 1024,
        max_elements: int = 1024,
    ) -> None:
        space = HNSWSpace(scoring)  # checks the scoring
        if dim < space.min_dim:
            raise ValueError(f"dim must be >= {space.min_dim} for scoring {scoring!r}; got {dim}")
        if M < 2:
            raise ValueError(f"M must be >= 2; got {M}")
        if ef_construction < 1 or ef < 1:
            raise ValueError(f"ef_construction and ef must be >= 1; got {ef_construction} and {ef}")
        if max_fetch < 1:
            raise ValueError(f"max_fetch must be >= 1; got {max_fetch}")
        if rebuild_threshold is not None and not 0 < rebuild_threshold < 1:
            raise ValueError(f"rebuild_threshold must be in (0, 1) or None; got {rebuild_threshold}")
        self.dim, self.M, self.ef_construction = int(dim), int(M), int(ef_construction)
        self.scoring = scoring
        self._space = space
        self._graph_dim = space.graph_dim(self.dim)
        self._ef = int(ef)
        self.num_threads = -1 if num_threads is None else int(num_threads)
        self.rebuild_threshold = rebuild_threshold
        self.max_fetch = int(max_fetch)
        self._lock = ReadWriteLock()
        self._exact_lock = threading.Lock()  # concurrent searches build the exact fallback once
        self._labels: set[int] = set()  # every label in the graph, deleted ones included
        self._deleted: set[int] = set()
        self._exact_cache: tuple[np.ndarray, ExactIndex] | None = None
        self._index = self._new_graph(max(int(max_elements), 1))

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, labels: np.ndarray | None = None, **options: Any) -> HNSWIndex:
        """A new index over search vectors `vectors` [N, D] float32 with labels `labels` [N] (default
        0..N-1); `options` as the constructor's (`scoring="neg_l2"` for a neg_l2 model)."""
        vectors = _check_vectors(vectors, None)
        index = cls(vectors.shape[1], max_elements=max(len(vectors), 1), **options)
        if len(vectors):
            index.add(vectors, labels)
        return index

    def _new_graph(self, capacity: int) -> hnswlib.Index:
        graph = hnswlib.Index(space=self._space.name, dim=self._graph_dim)
        graph.init_index(
            max_elements=capacity, ef_construction=self.ef_construction, M=self.M, allow_replace_deleted=True
        )
        graph.set_ef(self._ef)
        graph.set_num_threads(self.num_threads if self.num_threads > 0 else os.cpu_count() or 1)
        return graph

    # -- properties -------------------------------------------------------------------------------
    @property
    def ef(self) -> int:
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"ef must be >= 1; got {value}")
        with self._lock.write():
            self._ef = int(value)
            self._index.set_ef(self._ef)

    def __len__(self) -> int:
        """Number of live (not deleted) items."""
        return self._index.get_current_count() - len(self._deleted)

    @property
    def num_deleted(self) -> int:
        return len(self._deleted)

    def labels(self) -> np.ndarray:
        """Sorted int64 labels of the live items."""
        with self._lock.read():
            return self._live_labels()

    def _live_labels(self) -> np.ndarray:
        return np.sort(np.fromiter(self._labels - self._deleted, dtype=np.int64))

    def _missing(self, labels: np.ndarray) -> list[int]:
        return [label for label in labels.tolist() if label not in self._labels or label in self._deleted]

    # -- mutation ---------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Inserts items, or replaces the vectors of labels already present (an upsert).

        A removed label that comes back is revived in place; new labels reuse the slots of removed
        items first (hnswlib `replace_deleted`), then grow the index.

        Args:
            vectors: float32 [n, D].
            labels: int [n] unique non-negative item codes (default: continue after the largest label).
        """
        vectors = _check_vectors(vectors, self.dim)
        with self._lock.write():
            labels = self._check_labels(labels, len(vectors))
            if not len(labels):
                return
            is_present = np.fromiter(
                (label in self._labels for label in labels.tolist()), dtype=bool, count=len(labels)
            )
            revived = [int(label) for label in labels[is_present] if int(label) in self._deleted]
            for label in revived:
                self._index.unmark_deleted(label)
                self._deleted.discard(label)
            vectors = self._space.items_to_graph(vectors)
            if is_present.any():  # same label: hnswlib updates the vector and its links
                self._index.add_items(vectors[is_present], labels[is_present], num_threads=self.num_threads)
            fresh = ~is_present
            if fresh.any():
                needed = self._index.element_count + max(0, int(fresh.sum()) - len(self._deleted))
                if needed > self._index.get_max_elements():
                    self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
                self._index.add_items(
                    vectors[fresh], labels[fresh], num_threads=self.num_threads, replace_deleted=bool(self._deleted)
                )
                if self._deleted:  # slots were reused (hnswlib picks which): their old labels are gone
                    self._labels = set(self._index.get_ids_list())
                    self._deleted &= self._labels
                else:
                    self._labels.update(labels[fresh].tolist())
            self._exact_cache = None

    def update(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Replaces the vectors of live items; unknown or removed labels raise ValueError."""
        labels = np.asarray(labels, dtype=np.int64)
        with self._lock.read():
            missing = self._missing(labels)
        if missing:
            raise ValueError(f"update of labels not in the index: {missing[:10]} (use add to insert)")
        self.add(vectors, labels)

    def remove(self, labels: np.ndarray) -> None:
        """Marks items deleted (they stop appearing in results; their slots are reused by `add`).

        Rebuilds the graph when deleted slots exceed `rebuild_threshold` of all slots.
        """
        labels = np.sort(np.asarray(labels, dtype=np.int64).ravel())
        labels = labels[np.concatenate(([True], labels[1:] != labels[:-1]))] if labels.size else labels
        with self._lock.write():
            missing = self._missing(labels)
            if missing:
                raise ValueError(f"remove of labels not in the index: {missing[:10]}")
            for label in labels.tolist():
                self._index.mark_deleted(label)
                self._deleted.add(label)
            self._exact_cache = None
            total = self._index.get_current_count()
            if self.rebuild_threshold is not None and total and len(self._deleted) > self.rebuild_threshold * total:
                self._rebuild()

    def rebuild(self) -> None:
        """Builds a fresh graph from the live vectors (drops deleted slots, restores graph quality)."""
        with self._lock.write():
            self._rebuild()

    def _rebuild(self) -> None:
        labels = self._live_labels()
        vectors = (
            self._index.get_items(labels, return_type="numpy").astype(np.float32)
            if len(labels)
            else np.zeros((0, self._graph_dim), np.float32)
        )
        graph = self._new_graph(max(len(labels), 1))
        if len(labels):
            graph.add_items(vectors, labels, num_threads=self.num_threads)
        self._index, self._labels, self._deleted, self._exact_cache = graph, set(labels.tolist()), set(), None

    # -- search -----------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, *, exclude: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k by inner product, with per-query seen-item filtering.

        With `exclude`, each query over-fetches k + (its number of excluded items) neighbours (rounded
        up to a power of two so queries share hnswlib calls; capped at `max_fetch`) and drops the
        excluded ones; a query left with fewer than k results while more items exist is answered by
        the exact scorer over the live vectors instead (as is a whole group of queries if hnswlib
        cannot return that many neighbours). Same output contract as `twotower.topk`.

        Args:
            queries: float32 [B, D].
            k: results per query (>= 1).
            exclude: optional CSR (indptr [B + 1], item codes) of items to skip per query.

        Returns:
            (scores float32 [B, k] descending, ids int64 [B, k]); missing slots hold -inf / -1.
        """
        queries = _check_vectors(queries, self.dim, name="queries")
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1; got {k!r}")
        k = int(k)
        self._space.check_queries(queries)
        num = len(queries)
        if exclude is not None:
            indptr, indices = check_exclude(exclude, num, None)  # labels: no fixed upper bound
        scores = np.full((num, k), -np.inf, dtype=np.float32)
        ids = np.full((num, k), -1, dtype=np.int64)
        with self._lock.read():
            live = len(self)
            if num == 0 or live == 0:
                return scores, ids
            cap = min(max(k, self.max_fetch), live)
            need = np.full(num, k, dtype=np.int64) if exclude is None else k + np.diff(indptr)
            # Queries grouped by fetch size (powers of two), so a light user does not pay for a heavy one.
            fetch = np.minimum(np.left_shift(1, np.ceil(np.log2(need)).astype(np.int64)), cap)
            for size in np.unique(fetch).tolist():
                rows = np.flatnonzero(fetch == size)
                sub = None if exclude is None else take_rows((indptr, indices), rows)
                scores[rows], ids[rows] = self._search_group(queries[rows], k, size, sub, live)
        return scores, ids

    def _search_group(
        self, queries: np.ndarray, k: int, fetch: int, exclude: tuple[np.ndarray, np.ndarray] | None, live: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fetches `fetch` neighbours per query, drops excluded ones, answers short rows exactly."""
        try:
            labels, distances = self._index.knn_query(
                self._space.queries_to_graph(queries), k=fetch, num_threads=self.num_threads
            )
        except RuntimeError:  # hnswlib could not find `fetch` live neighbours for some query
            return self._exact(queries, k, exclude)
        labels = labels.astype(np.int64)
        found = self._space.form_scores(queries, distances)
        keep = np.ones(labels.shape, dtype=bool) if exclude is None else ~hit_matrix(labels, *exclude)[0]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept ones first, in rank order
        n_keep = np.minimum(keep.sum(axis=1), k)
        width = order.shape[1]
        taken = np.arange(width)[None, :] < n_keep[:, None]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        ids[:, :width] = np.where(taken, np.take_along_axis(labels, order, axis=1), -1)
        scores[:, :width] = np.where(taken, np.take_along_axis(found, order, axis=1), -np.inf)
        # Short rows: fewer than k kept although the fetch did not cover every live item.
        short = np.flatnonzero((n_keep < k) & (fetch < live))
        if short.size:
            sub = None if exclude is None else take_rows(exclude, short)
            scores[short], ids[short] = self._exact(queries[short], k, sub)
        return scores, ids

    def _exact(
        self, queries: np.ndarray, k: int, exclude: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the live vectors (labels mapped to rows of the packed matrix and back). The
        vectors are packed once per state of the index (an `ExactIndex`: a query costs a scan of the
        packed items, not a repacking), and dropped on any add, update or removal."""
        labels, exact = self._exact_index()
        rows_exclude = None
        if exclude is not None:
            indptr, indices = exclude
            pos = np.searchsorted(labels, indices)
            inside = (pos < len(labels)) & (labels[np.minimum(pos, len(labels) - 1)] == indices)
            kept_before = np.concatenate([[0], np.cumsum(inside, dtype=np.int64)])
            rows_exclude = (kept_before[indptr], pos[inside])  # exclusions of items still in the index
        scores, rows = exact.search(queries, k, exclude=rows_exclude)
        return scores, np.where(rows >= 0, labels[np.maximum(rows, 0)], -1)

    def _exact_index(self) -> tuple[np.ndarray, ExactIndex]:
        """(live labels, their packed search vectors), built once per state of the index even when
        searches that need it run together (they hold the read lock, so the state cannot change)."""
        with self._exact_lock:
            if self._exact_cache is None:
                labels = self._live_labels()
                stored = self._index.get_items(labels, return_type="numpy")
                self._exact_cache = (labels, ExactIndex(self._space.items_from_graph(stored, self._graph_dim)))
            return self._exact_cache

    # -- files ------------------------------------------------------------------------------------
    def save(
        self, directory: str | os.PathLike[str], *, num_items: int | None = None, item_ids: Any | None = None
    ) -> Path:
        """Writes `index.hnsw` + `index.json` into `directory` (e.g. the model directory), atomically.

        Args:
            num_items: catalogue size the labels refer to (checked on load).
            item_ids: the item vocabulary's external ids in code order (fingerprint checked on load).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            meta = {
                "space": self._space.name,
                "scoring": self.scoring,
                "dim": self.dim,
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef": self._ef,
                "rebuild_threshold": self.rebuild_threshold,
                "max_fetch": self.max_fetch,
                "max_elements": int(self._index.get_max_elements()),
                "count": len(self),
                "deleted": sorted(self._deleted),
                "num_items": num_items,
            }
            hnsw_files.write_files(directory, self._index.save_index, meta, item_ids)
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        num_items: int | None = None,
        item_ids: Any | None = None,
        num_threads: int | None = None,
    ) -> HNSWIndex:
        """Reads an index saved by `save`, restoring `ef` and the deleted set.

        Args:
            num_items: expected catalogue size (refused if the file says otherwise).
            item_ids: expected item vocabulary ids (refused if the fingerprint differs).

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: checksum, catalogue size, vocabulary or format mismatch.
        """
        directory = Path(directory)
        with hnsw_files.files_lock(directory, exclusive=False):  # the pair of one build, while a rebuild replaces it
            meta = hnsw_files.read_description(directory, num_items=num_items, item_ids=item_ids)
            index = cls(
                meta["dim"],
                scoring=meta.get("scoring", "dot"),  # files from before neg_l2 had its own space: inner product
                M=meta["M"],
                ef_construction=meta["ef_construction"],
                ef=meta["ef"],
                num_threads=num_threads,
                rebuild_threshold=meta["rebuild_threshold"],
                max_fetch=meta["max_fetch"],
            )
            index._load_graph(directory, meta)
        return index

    def _load_graph(self, directory: Path, meta: dict[str, Any]) -> None:
        """Replaces the empty graph with the saved one, once its header and deleted set agree with `meta`."""
        index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
        if meta["space"] != self._space.name:
            raise ValueError(f"{meta_path}: space {meta['space']!r} does not go with scoring {self.scoring!r}")
        header = hnsw_files.graph_header(index_path)
        if header["data_bytes"] != 4 * self._graph_dim or header["M"] != meta["M"]:
            raise ValueError(
                f"{index_path} holds {header['data_bytes'] // 4}-d vectors with M = {header['M']}; {meta_path} says "
                f"{self._graph_dim}-d (dim {meta['dim']}, scoring {self.scoring!r}) with M = {meta['M']}: "
                "rebuild the index"
            )
        graph = hnswlib.Index(space=self._space.name, dim=self._graph_dim)
        graph.load_index(str(index_path), max_elements=max(meta["max_elements"], header["max_elements"]),
                         allow_replace_deleted=True)
        graph.set_ef(meta["ef"])  # hnswlib does not save ef
        graph.set_num_threads(self.num_threads if self.num_threads > 0 else os.cpu_count() or 1)
        self._index = graph
        self._labels = set(graph.get_ids_list())
        self._deleted = set(int(x) for x in meta["deleted"])
        hnsw_files.check_deleted(graph, self._labels, self._deleted, directory)
        if len(self) != meta["count"]:
            raise ValueError(f"{index_path} holds {len(self)} live items; {meta_path} says {meta['count']}")

    # -- checks -----------------------------------------------------------------------------------
    def _check_labels(self, labels: np.ndarray | None, n: int) -> np.ndarray:
        if labels is None:
            start = max(self._labels, default=-1) + 1
            return np.arange(start, start + n, dtype=np.int64)
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer item codes; got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match the vectors; got {labels.shape}")
        if n and labels.min() < 0:
            raise ValueError("labels must be non-negative item codes")
        if len(np.unique(labels)) != n:
            raise ValueError("labels must be unique within one call")
        return labels


def _check_vectors(vectors: Any, dim: int | None, name: str = "vectors") -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, D]; got shape {vectors.shape}")
    if vectors.dtype != np.float32:
        raise TypeError(f"{name} must be float32; got {vectors.dtype} (convert with .astype(np.float32))")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns; got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return np.ascontiguousarray(vectors)
