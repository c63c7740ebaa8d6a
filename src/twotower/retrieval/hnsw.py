"""Approximate top-K over item vectors with hnswlib (HNSW), for serving.

Vectors in and scores out are those of the exact scorer: feed it `TwoTowerModel.item_search_vectors()`
and `user_search_vectors()` (the inner-product form of every scoring) and say the model's `scoring`.
The graph lives in the space that matches it: hnswlib's inner-product space ('ip') over the vectors
as given for "dot" and "cosine" (no MIPS-to-L2 transform, which costs recall); for "neg_l2" its L2
space over the raw item vectors recovered from the form [2v, -||v||^2] (a graph over that form is
useless: its inner products are dominated by the norm column), queries [q, 1] searched as q, and
the squared distances reported as the form's scores ||q||^2 - ||q - v||^2. hnswlib labels are the
item codes.

Threading rule: never search while the index is being mutated from another thread (hnswlib does not
guard its graph). `HNSWIndex` enforces it with a readers-writer lock: any number of searches run
together (hnswlib releases the GIL), while `add` / `update` / `remove` / `rebuild` / `ef` changes wait
for running searches and hold new ones back until they finish.

Files: `save(directory)` writes `index.hnsw` (hnswlib's format) and `index.json` (the settings
hnswlib does not store -- `ef` among them -- the sha256 of `index.hnsw`, the catalogue size and the
item-vocabulary fingerprint), each atomically; `load` refuses files whose checksum, catalogue size or
vocabulary do not match.

Example:
    >>> rng = np.random.default_rng(0)
    >>> items = rng.normal(size=(500, 16)).astype(np.float32)
    >>> index = HNSWIndex.build(items, ef=64)
    >>> scores, ids = index.search(items[:2], k=3, exclude=(np.array([0, 1, 1]), np.array([0])))
    >>> ids.shape, int(ids[0, 0]) != 0
    ((2, 3), True)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from twotower.atomic import atomic_write, write_json_atomic
from twotower.data.types import take_rows
from twotower.metrics import hit_matrix
from twotower.retrieval.exact import ExactIndex

INDEX_FILE = "index.hnsw"
META_FILE = "index.json"
_FORMAT = "twotower.hnsw/1"


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def vocabulary_fingerprint(ids: Any) -> str:
    """sha256 of a vocabulary's external ids in code order (ints or strings), to tie files together."""
    ids = np.asarray(ids)
    digest = hashlib.sha256()
    if ids.dtype.kind in "iu":
        digest.update(b"int:")
        digest.update(ids.astype("<i8").tobytes())
    else:
        digest.update(b"str:")
        for value in ids.tolist():
            digest.update(str(value).encode("utf-8") + b"\x00")
    return digest.hexdigest()


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
        if scoring not in _SPACES:
            raise ValueError(f"scoring must be one of {tuple(_SPACES)}; got {scoring!r}")
        if dim < 1 or (scoring == "neg_l2" and dim < 2):
            raise ValueError(f"dim must be >= {2 if scoring == 'neg_l2' else 1} for scoring {scoring!r}; got {dim}")
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
        self._space = _SPACES[scoring]
        self._graph_dim = self.dim - 1 if self._space == "l2" else self.dim
        self._ef = int(ef)
        self.num_threads = -1 if num_threads is None else int(num_threads)
        self.rebuild_threshold = rebuild_threshold
        self.max_fetch = int(max_fetch)
        self._lock = _ReadWriteLock()
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
        graph = hnswlib.Index(space=self._space, dim=self._graph_dim)
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

    # -- the graph's space ----------------------------------------------------------------------------
    def _to_graph(self, vectors: np.ndarray) -> np.ndarray:
        """Search-form item vectors -> what the graph stores: as given, or v from [2v, -||v||^2]."""
        if self._space == "ip":
            return vectors
        return np.ascontiguousarray(vectors[:, :-1] * np.float32(0.5))

    def _from_graph(self, stored: np.ndarray) -> np.ndarray:
        """What the graph stores -> search-form item vectors (the exact scorer's input)."""
        stored = np.ascontiguousarray(stored, dtype=np.float32).reshape(-1, self._graph_dim)
        if self._space == "ip":
            return stored
        wide = stored.astype(np.float64)  # the norm as `inner_product_form` computes it: the same float32 column
        return np.concatenate([2 * stored, (-(wide * wide).sum(axis=1, keepdims=True)).astype(np.float32)], axis=1)

    def _graph_queries(self, queries: np.ndarray) -> np.ndarray:
        return queries if self._space == "ip" else np.ascontiguousarray(queries[:, :-1])

    def _scores(self, queries: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """hnswlib distances -> the search form's scores ('ip': 1 - <q, v>; 'l2': ||q - v||^2)."""
        if self._space == "ip":
            return (1.0 - distances).astype(np.float32)
        q = queries[:, :-1].astype(np.float64)
        return ((q * q).sum(axis=1, keepdims=True) - distances).astype(np.float32)

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
            vectors = self._to_graph(vectors)
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
        if self._space == "l2" and len(queries) and not (queries[:, -1] == 1).all():
            raise ValueError("queries of a neg_l2 index must be in its search form [q, 1] "
                             "(TwoTowerModel.user_search_vectors): their last column must be 1")
        num = len(queries)
        if exclude is not None:
            indptr, indices = _check_exclude(exclude, num)
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
                self._graph_queries(queries), k=fetch, num_threads=self.num_threads
            )
        except RuntimeError:  # hnswlib could not find `fetch` live neighbours for some query
            return self._exact(queries, k, exclude)
        labels = labels.astype(np.int64)
        found = self._scores(queries, distances)
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
        if self._exact_cache is None:
            labels = self._live_labels()
            vectors = self._from_graph(self._index.get_items(labels, return_type="numpy"))
            self._exact_cache = (labels, ExactIndex(vectors))
        labels, exact = self._exact_cache
        rows_exclude = None
        if exclude is not None:
            indptr, indices = exclude
            pos = np.searchsorted(labels, indices)
            inside = (pos < len(labels)) & (labels[np.minimum(pos, len(labels) - 1)] == indices)
            kept_before = np.concatenate([[0], np.cumsum(inside, dtype=np.int64)])
            rows_exclude = (kept_before[indptr], pos[inside])  # exclusions of items still in the index
        scores, rows = exact.search(queries, k, exclude=rows_exclude)
        return scores, np.where(rows >= 0, labels[np.maximum(rows, 0)], -1)

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
            checksum = ""

            def write_graph(tmp: Path) -> None:
                nonlocal checksum
                self._index.save_index(str(tmp))
                checksum = _sha256(tmp)

            atomic_write(directory / INDEX_FILE, write_graph)
            meta = {
                "format": _FORMAT,
                "space": self._space,
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
                "sha256": checksum,
                "num_items": num_items,
                "item_vocabulary": None if item_ids is None else vocabulary_fingerprint(item_ids),
            }
        write_json_atomic(directory / META_FILE, meta)
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
        index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
        for path in (index_path, meta_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: build the index first (twotower index build)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path} is not valid JSON: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path} is not a twotower HNSW index description (format {_FORMAT})")
        _check_meta(meta, meta_path)
        actual = _sha256(index_path)
        if actual != meta["sha256"]:
            raise ValueError(
                f"{index_path} does not match its checksum in {meta_path} "
                f"(sha256 {actual[:12]}... vs {meta['sha256'][:12]}...): rebuild the index"
            )
        if num_items is not None and meta["num_items"] is not None and int(num_items) != meta["num_items"]:
            raise ValueError(
                f"index in {directory} was built for {meta['num_items']} items; "
                f"the model has {num_items}: rebuild the index"
            )
        if (
            item_ids is not None
            and meta["item_vocabulary"] is not None
            and vocabulary_fingerprint(item_ids) != meta["item_vocabulary"]
        ):
            raise ValueError(f"index in {directory} was built for a different item vocabulary: rebuild the index")
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
        if meta["space"] != index._space:
            raise ValueError(f"{meta_path}: space {meta['space']!r} does not go with scoring {index.scoring!r}")
        header = _graph_header(index_path)
        if header["data_bytes"] != 4 * index._graph_dim or header["M"] != meta["M"]:
            raise ValueError(
                f"{index_path} holds {header['data_bytes'] // 4}-d vectors with M = {header['M']}; {meta_path} says "
                f"{index._graph_dim}-d (dim {meta['dim']}, scoring {index.scoring!r}) with M = {meta['M']}: rebuild the index"
            )
        graph = hnswlib.Index(space=index._space, dim=index._graph_dim)
        graph.load_index(str(index_path), max_elements=max(meta["max_elements"], header["max_elements"]),
                         allow_replace_deleted=True)
        graph.set_ef(meta["ef"])  # hnswlib does not save ef
        graph.set_num_threads(index.num_threads if index.num_threads > 0 else os.cpu_count() or 1)
        index._index = graph
        index._labels = set(graph.get_ids_list())
        index._deleted = set(int(x) for x in meta["deleted"])
        _check_deleted(graph, index._labels, index._deleted, index_path, meta_path)
        if len(index) != meta["count"]:
            raise ValueError(f"{index_path} holds {len(index)} live items; {meta_path} says {meta['count']}")
        return index

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_SPACES = {"dot": "ip", "cosine": "ip", "neg_l2": "l2"}

# index.json keys and their types (bool is not an int here).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "space": (str,), "dim": (int,), "M": (int,), "ef_construction": (int,), "ef": (int,),
    "rebuild_threshold": (float, int, type(None)), "max_fetch": (int,), "max_elements": (int,), "count": (int,),
    "deleted": (list,), "sha256": (str,), "num_items": (int, type(None)), "item_vocabulary": (str, type(None)),
}


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Every key `load` reads is there with its type; a hand-edited or truncated file is named."""
    for key, types in _META_TYPES.items():
        if key not in meta:
            raise ValueError(f"{path} lacks {key!r}: not a complete index description (rebuild the index)")
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{path}: {key!r} has the wrong type ({type(value).__name__}): rebuild the index")
    if "scoring" in meta and meta["scoring"] not in _SPACES:
        raise ValueError(f"{path}: unknown scoring {meta['scoring']!r}")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in meta["deleted"]):
        raise ValueError(f"{path}: 'deleted' must list non-negative item codes")


def _graph_header(path: Path) -> dict[str, int]:
    """The sizes hnswlib's file header records (its `saveIndex` layout), read before hnswlib trusts them:
    a description whose dim disagrees with the graph would make every search read past each vector."""
    layout = "<6Qi I3Qd Q"
    size = struct.calcsize(layout)
    with open(path, "rb") as f:
        raw = f.read(size)
    if len(raw) < size:
        raise ValueError(f"{path} is too short to be an hnswlib index ({len(raw)} bytes): rebuild the index")
    (_, max_elements, count, _, label_offset, data_offset, _, _, _, _, m, _, _) = struct.unpack(layout, raw)
    return {"max_elements": max_elements, "count": count, "data_bytes": label_offset - data_offset, "M": m}


def _check_deleted(graph: hnswlib.Index, labels: set[int], deleted: set[int], index_path: Path, meta_path: Path) -> None:
    """The deleted set of index.json must be the graph's own: every listed label is in the graph and
    marked deleted there, and every other label is live (hnswlib answers `get_items` for live labels only)."""
    unknown = sorted(deleted - labels)
    if unknown:
        raise ValueError(f"{meta_path} lists deleted labels that {index_path} does not hold: {unknown[:10]}")
    for label in sorted(deleted):
        if _is_live(graph, label):
            raise ValueError(f"{meta_path} lists label {label} as deleted; it is live in {index_path}: rebuild the index")
    live = np.sort(np.fromiter(labels - deleted, dtype=np.int64))
    for start in range(0, len(live), 65536):  # bounded memory: get_items copies the vectors out
        chunk = live[start : start + 65536]
        try:
            graph.get_items(chunk, return_type="numpy")
        except RuntimeError:
            dead = [int(x) for x in chunk if not _is_live(graph, int(x))]
            raise ValueError(
                f"{index_path} has deleted labels that {meta_path} lists as live: {dead[:10]}: rebuild the index"
            ) from None


def _is_live(graph: hnswlib.Index, label: int) -> bool:
    try:
        graph.get_items([label])
    except RuntimeError:
        return False
    return True


def _check_exclude(exclude: Any, num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """A CSR (indptr [B + 1], item codes) of integer arrays with non-negative ids."""
    if not isinstance(exclude, (tuple, list)) or len(exclude) != 2:
        raise TypeError("exclude must be a pair (indptr, indices)")
    indptr, indices = (np.asarray(part) for part in exclude)
    for name, part in (("indptr", indptr), ("indices", indices)):
        if part.ndim != 1 or part.dtype.kind not in "iu":
            raise TypeError(f"exclude {name} must be a 1-D integer array; got dtype {part.dtype}, shape {part.shape}")
    indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    if (
        indptr.shape != (num_queries + 1,)
        or indptr[0] != 0
        or indptr[-1] != len(indices)
        or np.any(np.diff(indptr) < 0)
    ):
        raise ValueError(
            f"exclude must be a CSR (indptr [B + 1 = {num_queries + 1}], indices) with indptr from 0 to len(indices)"
        )
    if len(indices) and indices.min() < 0:
        bad = int(np.flatnonzero(indices < 0)[0])
        raise ValueError(f"exclude indices must be item codes >= 0; found {int(indices[bad])} at position {bad}")
    return indptr, indices
