"""The blended ranking (towers + graph filter) against a float64 brute force, and the weight sweep."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.model.graph_filter import GraphFilter
from twotower.retrieval.graph_rank import GraphSweep, graph_ranker


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


def test_the_sweep_scores_each_user_once_for_every_weight_sharpening_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    rng, dense, history, users, items, graph = setup(3)
    weights, times = (0.0, 0.3, 2.0), (0.0, 1.5)
    other = rng.random(dense.shape) < 0.3  # a second split's exclusions
    excludes = {"valid": (np.concatenate([[0], np.cumsum(dense.sum(1))]).astype(np.int64),
                          np.concatenate([np.flatnonzero(r) for r in dense]).astype(np.int64)),
                "test": (np.concatenate([[0], np.cumsum(other.sum(1))]).astype(np.int64),
                         np.concatenate([np.flatnonzero(r) for r in other]).astype(np.int64))}
    calls = []
    real = GraphFilter.sharpened_scores
    monkeypatch.setattr(GraphFilter, "sharpened_scores",
                        lambda self, *a: calls.append((len(a[0]) - 1, tuple(a[2]))) or real(self, *a))
    sweep = GraphSweep(users, items, graph, history, 4, weights, excludes, sharpenings=times)
    rows = np.array([1, 5, 9])
    lists = {(split, t, w): sweep.ranker(w, split, t)(rows, None) for split in excludes for t in times for w in weights}
    assert calls == [(3, times)]  # one pass over the three users served every ranking
    later = sweep.ranker(0.3, "test", 1.5)(np.array([9, 2]), None)  # user 2 is new: scored then, alone
    assert calls == [(3, times), (1, times)]
    for (split, t, w), got in lists.items():
        mask = (dense if split == "valid" else other)[rows]
        want = brute_force(users, items, graph.with_weight(0.0, t), dense, rows, w, mask, 4)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(later, brute_force(users, items, graph.with_weight(0.0, 1.5), dense,
                                                     np.array([9, 2]), 0.3, other[[9, 2]], 4))
    assert not np.array_equal(lists[("valid", 0.0, 0.0)], lists[("valid", 0.0, 2.0)])  # the weight matters here
    assert not np.array_equal(lists[("valid", 0.0, 2.0)], lists[("valid", 1.5, 2.0)])  # and the sharpening
    with pytest.raises(ValueError, match="weight 0.5, sharpening 0.0 and split 'valid' are not among the sweep's"):
        sweep.ranker(0.5, "valid")
    with pytest.raises(ValueError, match="sharpening 1.0"):
        sweep.ranker(0.3, "valid", 1.0)


def test_a_filter_for_another_catalogue_is_refused() -> None:
    _, _, history, users, items, graph = setup(4)
    with pytest.raises(ValueError, match="the graph filter covers 25 items; the model has 24"):
        graph_ranker(users, items[:24], graph, history, 3)


def test_the_approximate_blend_through_an_exhaustive_index_is_the_exact_blend() -> None:
    """`graph_ann_ranker` over an HNSW index searched exhaustively (ef = every item) and
    `evaluate_ann` with the filter: the same lists and metrics as the exact blend."""
    from twotower.evaluate import evaluate_ann, evaluate_rankings
    from twotower.retrieval.graph_rank import graph_ann_ranker
    from twotower.retrieval.hnsw import HNSWIndex

    rng, dense, history, users, items, graph = setup(5, num_users=40, num_items=300)
    graph = graph.with_weight(1.5, sharpening=1.0)
    index = HNSWIndex.build(items, scoring="dot", M=16, ef_construction=300, ef=300)
    rows = np.arange(40)
    exclude_dense = dense.copy()
    exclude = (np.concatenate([[0], np.cumsum(exclude_dense.sum(1))]).astype(np.int64),
               np.concatenate([np.flatnonzero(r) for r in exclude_dense]).astype(np.int64))
    got = graph_ann_ranker(index, users, items, graph, history, 10)(rows, exclude)
    want = graph_ranker(users, items, graph, history, 10)(rows, exclude)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, brute_force(users, items, graph, dense, rows, 1.5, exclude_dense, 10))
    relevant_dense = (rng.random(dense.shape) < 0.05) & ~dense
    relevant = (np.concatenate([[0], np.cumsum(relevant_dense.sum(1))]).astype(np.int64),
                np.concatenate([np.flatnonzero(r) for r in relevant_dense]).astype(np.int64))
    result = evaluate_ann(index, users, items, relevant, exclude=exclude, ks=(10,), progress=False, graph=graph,
                          history=history)
    exact = evaluate_rankings(graph_ranker(users, items, graph, history, 10), relevant, num_items=300, ks=(10,),
                              exclude=exclude, progress=False)
    assert result.metrics == pytest.approx(exact.metrics, abs=1e-12)
    assert result.extra["ann_recall@10"] == 1.0
    towers = evaluate_ann(index, users, items, relevant, exclude=exclude, ks=(10,), progress=False)
    assert towers.metrics != result.metrics  # the filter's blend ranks differently here


def test_the_sweep_ranks_nested_exclusions_from_one_deeper_list() -> None:
    """Test's exclusions hold validation's and more (train + valid against train): the sweep takes
    one list per pair and drops each split's further items. Users who leave out many more items
    than the list length, tied scores across the cut, and a user with nothing left must still
    come out as the float64 brute force ranks each split on its own."""
    rng, dense, history, users, items, graph = setup(6, num_users=24, num_items=40)
    items[7] = items[3]  # equal tower scores; the filter may still split them, weight 0 may not
    train = dense
    test = train | (rng.random(dense.shape) < 0.1)
    test[2, :] = True  # far more further exclusions than the list is long
    test[2, [5, 30]] = False
    test[4, :] = True  # nothing left to rank
    excludes = {name: (np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64),
                       np.concatenate([np.flatnonzero(r) for r in mask]).astype(np.int64))
                for name, mask in (("valid", train), ("test", test))}
    weights, times = (0.0, 0.4), (0.0, 2.0)
    sweep = GraphSweep(users, items, graph, history, 6, weights, excludes, sharpenings=times)
    rows = np.arange(24)
    for name, mask in (("valid", train), ("test", test)):
        for t in times:
            for w in weights:
                got = sweep.ranker(w, name, t)(rows, None)
                want = brute_force(users, items, graph.with_weight(0.0, t), dense, rows, w, mask[rows], 6)
                np.testing.assert_array_equal(got, want, err_msg=f"{name} T {t} w {w}")
    assert list(sweep.ranker(0.0, "test")(np.array([2]), None)[0][2:]) == [-1, -1, -1, -1]
    assert (sweep.ranker(0.4, "test", 2.0)(np.array([4]), None) == -1).all()
