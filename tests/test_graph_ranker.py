"""The blended ranking (towers + graph filter) against a float64 brute force, and the weight sweep."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.evaluate import GraphSweep, graph_ranker
from twotower.model.graph_filter import GraphFilter


def setup(seed: int, num_users: int = 30, num_items: int = 25):
    rng = np.random.default_rng(seed)
    dense = rng.random((num_users, num_items)) < 0.2
    indptr = np.concatenate([[0], np.cumsum(dense.sum(1))]).astype(np.int64)
    indices = np.concatenate([np.flatnonzero(row) for row in dense]).astype(np.int64)
    users = rng.normal(size=(num_users, 6)).astype(np.float32)
    items = rng.normal(size=(num_items, 6)).astype(np.float32)
    graph = GraphFilter.fit(indptr, indices, num_items, rank=4)
    return rng, dense, (indptr, indices), users, items, graph


def brute_force(users, items, graph, dense, rows, weight, exclude_dense, k):
    """float64: standardised inner products + weight * standardised filter scores, excluded items
    out, best first."""
    towers = users[rows].astype(np.float64) @ items.T.astype(np.float64)
    filt = graph.scores(np.concatenate([[0], np.cumsum(dense[rows].sum(1))]),
                        np.concatenate([np.flatnonzero(r) for r in dense[rows]])).astype(np.float64)

    def z(x):
        sd = x.std(1, keepdims=True)
        return np.where(sd > 0, (x - x.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1), 0)

    scores = z(towers) + weight * z(filt)
    scores[exclude_dense] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(scores, order, 1) == -np.inf, -1, order)


@pytest.mark.parametrize("seed", [0, 1])
def test_graph_ranker_matches_the_float64_brute_force(seed: int) -> None:
    rng, dense, history, users, items, graph = setup(seed)
    graph = graph.with_weight(0.7)
    rows = np.array([3, 0, 17, 29, 8])
    exclude_dense = dense[rows].copy()
    exclude_dense[1, :] = True  # a user with everything excluded: every slot -1
    exclude_dense[1, 0] = False
    exclude = (np.concatenate([[0], np.cumsum(exclude_dense.sum(1))]).astype(np.int64),
               np.concatenate([np.flatnonzero(r) for r in exclude_dense]).astype(np.int64))
    got = graph_ranker(users, items, graph, history, 5)(rows, exclude)
    want = brute_force(users, items, graph, dense, rows, 0.7, exclude_dense, 5)
    np.testing.assert_array_equal(got, want)
    assert list(got[1]) == [0, -1, -1, -1, -1]


def test_weight_zero_is_the_towers_ranking() -> None:
    _, dense, history, users, items, graph = setup(2)
    rows = np.arange(10)
    got = graph_ranker(users, items, graph.with_weight(0.0), history, 6)(rows, None)
    np.testing.assert_array_equal(got, np.argsort(-(users[rows] @ items.T), axis=1, kind="stable")[:, :6])


def test_the_sweep_scores_each_batch_once_and_gives_each_weights_ranking(monkeypatch: pytest.MonkeyPatch) -> None:
    _, dense, history, users, items, graph = setup(3)
    weights = (0.0, 0.3, 2.0)
    calls = []
    real = GraphFilter.scores
    monkeypatch.setattr(GraphFilter, "scores", lambda self, *a: calls.append(1) or real(self, *a))
    sweep = GraphSweep(users, items, graph, history, 4, weights)
    rows = np.array([1, 5, 9])
    lists = {w: sweep.ranker(w)(rows, None) for w in weights}
    assert len(calls) == 1
    for w in weights:
        np.testing.assert_array_equal(lists[w], brute_force(users, items, graph, dense, rows, w,
                                                            np.zeros((3, items.shape[0]), bool), 4))
    assert not np.array_equal(lists[0.0], lists[2.0])  # the weight changes the ranking here
    with pytest.raises(ValueError, match="weight 0.5 is not one of the sweep's"):
        sweep.ranker(0.5)


def test_a_filter_for_another_catalogue_is_refused() -> None:
    _, _, history, users, items, graph = setup(4)
    with pytest.raises(ValueError, match="the graph filter covers 25 items; the model has 24"):
        graph_ranker(users, items[:24], graph, history, 3)
