"""Both indexes follow the `Searcher` protocol, so a caller such as `Recommender` can hold either."""

from __future__ import annotations

import numpy as np

from twotower.retrieval.exact import ExactIndex
from twotower.retrieval.hnsw import HNSWIndex
from twotower.retrieval.searcher import Searcher


def test_exact_and_hnsw_indexes_are_searchers_with_one_contract() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    exclude = (np.array([0, 2, 2, 3, 3, 3], np.int64), np.array([4, 9, 1], np.int64))
    exact, approximate = ExactIndex(items), HNSWIndex.build(items, ef=300, num_threads=1)
    assert isinstance(exact, Searcher) and isinstance(approximate, Searcher)
    assert not isinstance(items, Searcher)
    want_scores, want_ids = exact.search(queries, 6, exclude=exclude)
    got_scores, got_ids = approximate.search(queries, 6, exclude=exclude)
    np.testing.assert_array_equal(got_ids, want_ids)  # ef = N: the graph search is exhaustive here
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
