"""`Recommender`: a saved model directory answering by external id -- for users seen in training, for
new users from their side features or the items they interacted with, and item to item.

Everything a caller would otherwise copy from the command line lives here once: id coercion and the
named error for unknown ids, seen-item filtering, the search (exact, or the saved HNSW index), the
model's true scores (the `neg_l2` correction of `twotower.retrieval.scoring`) and decoding back to
external ids. `twotower recommend` and `twotower index query` print what it returns.

Example (README.md, "Python API", has a complete one):

    recommender = twotower.Recommender.load("runs/ml-100k/model")
    top = recommender.recommend([196], k=5)[0]    # top.items: external item ids, top.scores: float32
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twotower.data.types import take_rows
from twotower.model.model_dir import TrainedModel, load_model_dir
from twotower.model.towers import TowerInputs
from twotower.retrieval.checks import check_k
from twotower.retrieval.exact import ExactIndex
from twotower.retrieval.hnsw import INDEX_FILE, HNSWIndex
from twotower.retrieval.scoring import item_queries, true_scores
from twotower.retrieval.searcher import CSRPair, Searcher

if TYPE_CHECKING:
    from twotower.retrieval.graph_rank import TowerMoments

__all__ = ["INDEX_DIR", "Recommendation", "Recommender", "UnknownIdError", "build_index", "load_index", "save_index"]

INDEX_DIR = "index"  # the HNSW index's place inside a model directory


class UnknownIdError(ValueError):
    """External ids that are not in the model's vocabulary (not in its training data).

    Attributes:
        kind: "user" or "item".
        ids: every unknown id, as given.
    """

    def __init__(self, kind: str, ids: Sequence[Any], where: str | os.PathLike[str]) -> None:
        self.kind, self.ids = kind, list(ids)
        super().__init__(f"unknown {kind} id(s) {self.ids}: not in the training data of {where}")


@dataclass(frozen=True)
class Recommendation:
    """One query's answer, best first.

    Attributes:
        query: the user id or item id as given; for new users, their position in the request.
        items: external item ids [n <= k].
        scores: float32 [n] in the model's own scoring (for "neg_l2": -||u - v||^2): the towers'
            scores, also where a graph filter's blend ordered the items (`Recommender.recommend`).
    """

    query: Any
    items: np.ndarray
    scores: np.ndarray


# -- the HNSW index of a model directory ---------------------------------------------------------------
def build_index(trained: TrainedModel, *, M: int = 16, ef_construction: int = 200, ef: int = 100) -> HNSWIndex:
    """An HNSW index over the items of a trained model, in its scoring's space (not saved)."""
    model = trained.model
    return HNSWIndex.build(model.item_search_vectors(), scoring=model.config.scoring, M=M,
                           ef_construction=ef_construction, ef=ef)


def save_index(index: HNSWIndex, trained: TrainedModel) -> Path:
    """Saves `index` inside the model directory, tied to its catalogue size and item vocabulary."""
    return index.save(trained.path / INDEX_DIR, num_items=trained.model.num_items, item_ids=trained.item_vocab.ids)


def has_index(trained: TrainedModel) -> bool:
    """Whether the model directory holds a saved HNSW index."""
    return (trained.path / INDEX_DIR / INDEX_FILE).is_file()


def load_index(trained: TrainedModel) -> HNSWIndex:
    """The index saved in the model directory, refused unless built for this model's items and scoring.

    Raises:
        FileNotFoundError: no index was saved (build one with `twotower index build MODEL_DIR`, or
            `save_index(build_index(trained), trained)`).
        ValueError: the index belongs to other items or another scoring.
    """
    model = trained.model
    index = HNSWIndex.load(trained.path / INDEX_DIR, num_items=model.num_items, item_ids=trained.item_vocab.ids)
    if index.scoring != model.config.scoring:
        raise ValueError(f"the index in {trained.path / INDEX_DIR} was built for {index.scoring!r} scores; the model "
                         f"scores by {model.config.scoring!r}: rebuild it (twotower index build)")
    return index


# -- the recommender ----------------------------------------------------------------------------------
class Recommender:
    """Top-k items of a saved model by external id, exact or through its HNSW index.

    Thread-safe for concurrent readers: the searches share only read-only arrays and an index whose
    search is safe from many threads (the exact scorer, or `HNSWIndex` under its readers lock); the
    tower passes run one request at a time, because encoding switches the shared module to eval mode
    and back.

    Build with `Recommender.load(model_dir)` (or `Recommender(trained)` from a loaded directory).
    """

    def __init__(self, trained: TrainedModel, *, ann: bool = False, ef: int | None = None) -> None:
        if ef is not None and not ann:
            raise ValueError("ef sets the HNSW index's search breadth: pass it with ann=True")
        self._trained = trained
        self._model = trained.model
        self._scoring = trained.model.config.scoring
        self._lock = threading.Lock()
        self._item_vectors: np.ndarray | None = None
        self._moments: TowerMoments | None = None
        self._searcher: Searcher | None = self._ann_searcher(ef) if ann else None  # exact: packed on first search
        self.ann = ann

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], *, ann: bool = False, ef: int | None = None) -> Recommender:
        """Loads a model directory written by `twotower train` (RUN/model).

        Args:
            model_dir: the model directory.
            ann: search the HNSW index saved in it (`twotower index build MODEL_DIR` writes it)
                instead of scanning every item exactly.
            ef: the index's candidate list while searching (default: the saved value); with `ann`.

        Raises:
            FileNotFoundError: the directory, one of its files, or (with `ann`) the index is missing.
            ValueError: the files do not agree with each other or with the model.
        """
        return cls(load_model_dir(model_dir), ann=ann, ef=ef)

    def _search(self, queries: np.ndarray, k: int, exclude: CSRPair | None) -> tuple[np.ndarray, np.ndarray]:
        if self._searcher is None:
            vectors = self.item_search_vectors()
            with self._lock:
                if self._searcher is None:
                    self._searcher = ExactIndex(vectors)
        return self._searcher.search(queries, k, exclude=exclude)

    def _ann_searcher(self, ef: int | None) -> Searcher:
        index = load_index(self._trained)
        if ef is not None:
            index.ef = ef
        return index

    # -- description ------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The model directory."""
        return self._trained.path

    @property
    def trained(self) -> TrainedModel:
        """The loaded model directory (model, vocabularies, seen items, settings)."""
        return self._trained

    @property
    def scoring(self) -> str:
        """The model's scoring, in which every score is reported."""
        return self._scoring

    @property
    def num_items(self) -> int:
        return self._model.num_items

    def __repr__(self) -> str:
        search = "HNSW" if self.ann else "exact"
        return f"Recommender({str(self.path)!r}, {self.num_items} items, {self._scoring}, {search})"

    # -- queries ----------------------------------------------------------------------------------
    def recommend(self, user_ids: Sequence[Any], k: int = 10, *, exclude_seen: bool = True) -> list[Recommendation]:
        """Top-k items for users seen in training; for a model saved with a graph filter
        (`model.graph_filter`), ranked by the blend of the towers and the filter as the model was
        evaluated (exactly, or with `ann` over the HNSW index's and the filter's candidates:
        `twotower.retrieval.graph_rank.rerank_candidates`).

        Args:
            user_ids: external user ids (ints, or their text, for integer vocabularies).
            k: results per user (>= 1); more than the catalogue returns the whole catalogue.
            exclude_seen: leave out each user's known items (train, valid and test interactions).

        Returns:
            One `Recommendation` per user, in the order given.

        Raises:
            UnknownIdError: listing every id not in the training data.
        """
        k = check_k(k)
        users = _as_id_list(user_ids, "user_ids")
        if self._trained.graph is not None:
            return self._blended_answer(users, k, exclude_seen)
        queries, exclude = self.user_queries(users, exclude_seen=exclude_seen)
        return self._answer(users, queries, k, exclude)

    def _blended_answer(self, users: list[Any], k: int, exclude_seen: bool) -> list[Recommendation]:
        """`recommend` of a model saved with a graph filter: the blend's ranking, the filter reading
        each user's known items (train, valid and test)."""
        codes = self._codes(users, "user")
        queries, exclude = self.code_queries(codes, exclude_seen=exclude_seen)
        return self._blend(users, queries, self.histories(codes), k, exclude)

    def _blend(self, asked: list[Any], queries: np.ndarray, histories: CSRPair, k: int,
               exclude: CSRPair | None) -> list[Recommendation]:
        """The blend's top k for queries [B, D'] whose filter reads `histories` (CSR, row = query)."""
        from twotower.retrieval.graph_rank import graph_ann_ranker, graph_ranker  # torch: on use

        graph, items, k = self._trained.graph, self.item_search_vectors(), min(k, self.num_items)
        if self.ann:
            rank = graph_ann_ranker(self._searcher, queries, items, graph, histories, k, self._tower_moments())
        else:
            rank = graph_ranker(queries, items, graph, histories, k)
        ids = rank(np.arange(len(queries), dtype=np.int64), exclude)
        scores = np.einsum("bd,bkd->bk", queries, items[np.maximum(ids, 0)]).astype(np.float32)
        return self._decoded(asked, queries, scores, ids)

    def histories(self, codes: np.ndarray) -> CSRPair:
        """The known items (train, valid and test) of users given by code, as a CSR of item codes:
        what a graph filter reads for them."""
        seen = self._trained.seen
        return take_rows((seen.indptr, seen.indices), np.asarray(codes, dtype=np.int64))

    def _tower_moments(self) -> TowerMoments:
        """The item vectors' moments (computed once), which the approximate blend standardises by."""
        from twotower.retrieval.graph_rank import TowerMoments

        vectors = self.item_search_vectors()
        with self._lock:
            if self._moments is None:
                self._moments = TowerMoments.of(vectors)
            return self._moments

    def user_queries(self, user_ids: Sequence[Any], *, exclude_seen: bool = True) -> tuple[np.ndarray, CSRPair | None]:
        """The search vectors [B, D'] of users seen in training and, with `exclude_seen`, their known
        items as a CSR of item codes: what `recommend` searches with (`twotower serve` calls this to
        batch many requests into one search of its own live catalogue).

        Raises:
            UnknownIdError: listing every id not in the training data.
        """
        return self.code_queries(self._codes(_as_id_list(user_ids, "user_ids"), "user"), exclude_seen=exclude_seen)

    def code_queries(self, codes: Any, *, exclude_seen: bool = True) -> tuple[np.ndarray, CSRPair | None]:
        """`user_queries` for users given by their codes (`codes(ids, "user")`; a caller that keeps
        its own id lookup skips the vocabulary here).

        Raises:
            ValueError: a code outside [0, number of users).
        """
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if codes.size and (codes.min() < 0 or codes.max() >= self._model.num_users):
            raise ValueError(f"user codes must lie in [0, {self._model.num_users}); got [{codes.min()}, {codes.max()}]")
        with self._lock:
            queries = self._model.user_search_vectors(codes)
        seen = self._trained.seen
        return queries, take_rows((seen.indptr, seen.indices), codes) if exclude_seen else None

    def codes(self, ids: Sequence[Any], kind: str) -> np.ndarray:
        """int64 codes of external `ids` of `kind` "user" or "item", -1 for an id not in the training
        data (no error: a caller answering each id on its own finds the unknown ones here)."""
        if kind not in ("user", "item"):
            raise ValueError(f"kind must be 'user' or 'item'; got {kind!r}")
        vocab = self._trained.user_vocab if kind == "user" else self._trained.item_vocab
        return _encode(vocab, _as_id_list(ids, f"{kind}_ids"))

    def recommend_for_features(
        self,
        features: Any = None,
        *,
        history: Sequence[Sequence[Any]] | None = None,
        k: int = 10,
        exclude_history: bool = True,
    ) -> list[Recommendation]:
        """Top-k items for users not seen in training, through the user tower (cold start); for a
        model saved with a graph filter and users given with a `history`, ranked by the blend of
        the towers and the filter, which reads that history (as `recommend` ranks known users).

        Args:
            features: the users' side features: a `twotower.data.FeatureTable` with one row per user,
                or one mapping per user (a single mapping for one user) from feature name to its value
                in the training feature table's coding: a categorical code (0 = missing), a list of
                codes for a multi-valued feature, a number or list of numbers for a dense one.
                Features left out are missing.
            history: per user, the external ids of the items they interacted with (for models that
                pool histories, `model.user_history`, or blend a graph filter, `model.graph_filter`).
            k: results per user (>= 1).
            exclude_history: leave each user's history items out of their results.

        Returns:
            One `Recommendation` per user; its `query` is the user's position in the request.

        Raises:
            UnknownIdError: an item of `history` is not in the training data.
            ValueError: neither argument, a feature the user tower does not have, or a history for a
                model that neither pools histories nor blends a filter.
        """
        k = check_k(k)
        queries, histories = self.new_user_queries(features, history=history)
        asked, exclude = list(range(len(queries))), histories if exclude_history else None
        if self._trained.graph is not None and histories is not None:
            return self._blend(asked, queries, histories, k, exclude)
        return self._answer(asked, queries, k, exclude)

    def encode_new_users(self, features: Any = None, *, history: Sequence[Sequence[Any]] | None = None) -> np.ndarray:
        """The search vectors [B, D'] that `recommend_for_features` searches with (same arguments)."""
        return self.new_user_queries(features, history=history)[0]

    def similar_items(self, item_ids: Sequence[Any], k: int = 10) -> list[Recommendation]:
        """The k items nearest each given item in the item tower's space, by the model's scoring
        (the item itself left out).

        Raises:
            UnknownIdError: listing every id not in the training data.
        """
        k = check_k(k)
        items = _as_id_list(item_ids, "item_ids")
        codes = self._codes(items, "item")
        queries = item_queries(self.item_search_vectors()[codes], self._scoring)
        itself = (np.arange(len(codes) + 1, dtype=np.int64), codes)
        return self._answer(items, queries, k, itself)

    # -- helpers ----------------------------------------------------------------------------------
    def _answer(self, asked: list[Any], queries: np.ndarray, k: int, exclude: CSRPair | None) -> list[Recommendation]:
        """Searches, turns search-form scores into the model's scores and decodes the item ids."""
        if not asked:
            return []
        scores, ids = self._search(queries, min(k, self.num_items), exclude)
        return self._decoded(asked, queries, scores, ids)

    def _decoded(self, asked: list[Any], queries: np.ndarray, scores: np.ndarray,
                 ids: np.ndarray) -> list[Recommendation]:
        """Search-form scores [B, k] turned into the model's scores, item codes into ids (-1 slots dropped)."""
        scores = true_scores(queries, scores, self._scoring)
        decode = self._trained.item_vocab.decode
        return [Recommendation(query, decode(row_ids[row_ids >= 0]), row_scores[row_ids >= 0])
                for query, row_scores, row_ids in zip(asked, scores, ids, strict=True)]

    def _codes(self, ids: list[Any], kind: str) -> np.ndarray:
        vocab = self._trained.user_vocab if kind == "user" else self._trained.item_vocab
        codes = _encode(vocab, ids)
        unknown = [value for value, code in zip(ids, codes, strict=True) if code < 0]
        if unknown:
            raise UnknownIdError(kind, unknown, self.path)
        return codes

    def item_search_vectors(self) -> np.ndarray:
        """The search vectors [N, D'] of every item in code order (encoded once, on first need; read-only)."""
        with self._lock:
            if self._item_vectors is None:
                vectors = self._model.item_search_vectors()
                vectors.flags.writeable = False
                self._item_vectors = vectors
            return self._item_vectors

    def new_item_vectors(self, features: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Search vectors [B, D'] of items not seen in training, from their side features through the
        item tower (item code -1): one mapping per item, in the training item feature table's coding
        (as `recommend_for_features` takes users').

        Raises:
            ValueError: the item tower reads no side features, or a feature it does not have.
        """
        layout = self._model.item_layout
        if layout is None:
            raise ValueError("item features need a model whose item tower reads side features; this one reads none")
        rows = _as_id_list(features, "features")
        if not all(isinstance(row, Mapping) for row in rows):
            raise TypeError("features must be a list of mappings from feature name to value")
        inputs = _inputs_from_mappings(rows, layout, "item")
        with self._lock:
            return self._model.item_search_vectors(np.full(len(rows), -1, dtype=np.int64), inputs=inputs)

    def new_user_queries(
        self, features: Any = None, *, history: Sequence[Sequence[Any]] | None = None
    ) -> tuple[np.ndarray, CSRPair | None]:
        """New users' search vectors [B, D'] (user code -1 with their inputs) and their histories as a
        CSR of item codes (None without `history`); arguments and errors as `recommend_for_features`."""
        inputs, count, histories = self._new_user_inputs(features, history)
        with self._lock:
            queries = self._model.user_search_vectors(np.full(count, -1, dtype=np.int64), inputs=inputs)
        return queries, histories

    def _new_user_inputs(self, features: Any, history: Sequence[Sequence[Any]] | None
                         ) -> tuple[TowerInputs, int, CSRPair | None]:
        """`TowerInputs` for new users, their number and their histories (CSR of item codes, or None),
        from the arguments as given. The user tower reads the histories only if it pools them."""
        if features is None and history is None:
            raise ValueError("recommend_for_features needs features=, history= or both")
        inputs, count, histories = TowerInputs(), None, None
        if features is not None:
            inputs, count = self._feature_inputs(features)
        if history is not None:
            pools = self._model.config.user_history
            if not pools and self._trained.graph is None:
                raise ValueError("history= needs a model whose user tower pools histories (model.user_history) or "
                                 "that blends a graph filter (model.graph_filter); this one does neither")
            rows = _as_id_list(history, "history")
            if count is not None and len(rows) != count:
                raise ValueError(f"features describe {count} users but history has {len(rows)}")
            histories, count = self._history_csr(rows), len(rows)
            if pools:
                inputs.history = histories
        return inputs, count, histories

    def _feature_inputs(self, features: Any) -> tuple[TowerInputs, int]:
        layout = self._model.user_layout
        if layout is None:
            raise ValueError("features= needs a model whose user tower reads side features; this one reads none")
        if all(hasattr(features, a) for a in ("categorical", "multi_categorical", "dense", "num_rows")):
            return TowerInputs.from_feature_table(features), int(features.num_rows)
        rows = [features] if isinstance(features, Mapping) else _as_id_list(features, "features")
        if not all(isinstance(row, Mapping) for row in rows):
            raise TypeError("features must be a FeatureTable, a mapping of feature values or a list of them")
        return _inputs_from_mappings(rows, layout, "user"), len(rows)

    def _history_csr(self, histories: list[Any]) -> CSRPair:
        offsets, flat = _lists_as_csr([_as_id_list(row, f"history[{i}]") for i, row in enumerate(histories)])
        return offsets, self._codes(flat, "item") if flat else np.zeros(0, dtype=np.int64)


def _as_id_list(ids: Any, name: str) -> list[Any]:
    """`ids` as a list; a lone id (a string or a number) is refused, naming the argument, rather than
    read as a sequence of characters or failing later."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a list of ids; got {type(ids).__name__} {ids!r} (wrap one id in a list)")
    return list(ids.tolist() if isinstance(ids, np.ndarray) else ids)


def _lists_as_csr(rows: list[list[Any]]) -> tuple[np.ndarray, list[Any]]:
    """(offsets int64 [len(rows) + 1], every row's values in one list): a list of lists in CSR form."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    return offsets, [value for row in rows for value in row]


def _encode(vocab: Any, ids: list[Any]) -> np.ndarray:
    """int64 codes of external ids, -1 for an id the vocabulary does not hold or cannot hold (text
    that is not a number for an integer vocabulary, a number beyond int64)."""
    values = [_as_int(value) for value in ids] if vocab.is_integer else ids
    codes = np.full(len(values), -1, dtype=np.int64)
    known = [i for i, value in enumerate(values) if value is not None]
    if not known:
        return codes
    try:
        codes[known] = vocab.encode([values[i] for i in known])
    except (TypeError, ValueError, OverflowError, ArithmeticError):  # one bad id: find it alone
        for i in known:
            try:
                codes[i] = vocab.encode([values[i]])[0]
            except (TypeError, ValueError, OverflowError, ArithmeticError):
                codes[i] = -1
    return codes


def _as_int(value: Any) -> int | None:
    """An id of an integer vocabulary: ints as they are, text parsed; None when it is no integer."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _inputs_from_mappings(rows: list[Mapping[str, Any]], layout: Any, side: str) -> TowerInputs:
    """`TowerInputs` of new users or items (`side`) described one mapping each (see
    `recommend_for_features`)."""
    known = {**{n: "categorical" for n in layout.categorical}, **{n: "multi" for n in layout.multi_categorical},
             **{n: "dense" for n in layout.dense}}
    given = sorted({name for row in rows for name in row})
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ValueError(f"features= names {unknown}, which the {side} tower does not have; "
                         f"its features: {sorted(known)}")
    inputs = TowerInputs()
    for name in given:
        values = [row.get(name) for row in rows]
        if known[name] == "categorical":
            inputs.categorical[name] = np.array([0 if v is None else v for v in values], dtype=np.int64)
        elif known[name] == "multi":
            offsets, flat = _lists_as_csr([[] if v is None else _as_id_list(v, f"features[{name!r}]") for v in values])
            inputs.multi_categorical[name] = (offsets, np.array(flat, dtype=np.int64))
        else:
            width = layout.dense[name]
            inputs.dense[name] = np.array([np.zeros(width) if v is None else np.reshape(v, width) for v in values],
                                          dtype=np.float32)
    return inputs
