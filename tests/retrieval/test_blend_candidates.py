"""The blend over a live catalogue and over approximate candidates (`blended_topk`,
`rerank_candidates`, `TowerMoments`) against a float64 brute force of the exact blend."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.retrieval.graph_rank import TowerMoments, blended_topk, candidate_count, rerank_candidates


def z64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    sd = x.std(1, keepdims=True)
    return np.where(sd > 0, (x - x.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1), 0)


def brute_force(queries, vectors, filter_rows, alive, weight, exclude_dense, k):
    """float64 labels of the k best alive, not excluded labels by z(towers) + weight z(filter), both
    standardised over the alive labels; ties to the lower label; -1 where none is left."""
    live = np.flatnonzero(alive)
    scores = np.full((len(queries), len(alive)), -np.inf)
    towers = queries.astype(np.float64) @ vectors[live].astype(np.float64).T
    scores[:, live] = z64(towers) + weight * z64(filter_rows[:, live])
    scores[exclude_dense] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(alive)), scores.shape), -scores), axis=1)[:, :k]
    return np.where(np.take_along_axis(scores, order, 1) == -np.inf, -1, order)


def dense_to_csr(dense: np.ndarray):
    return (np.concatenate([[0], np.cumsum(dense.sum(1))]).astype(np.int64),
            np.concatenate([np.flatnonzero(row) for row in dense]).astype(np.int64))


def case(seed: int, num_items: int = 40, num_queries: int = 6, dim: int = 5):
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
    vectors = rng.normal(size=(num_items, dim)).astype(np.float32)
    sparse = rng.random((num_queries, num_items)) < 0.5  # most items 0, as a filter scores unrelated items
    filter_rows = (rng.random((num_queries, num_items)) * sparse).astype(np.float32)
    exclude_dense = rng.random((num_queries, num_items)) < 0.2
    return rng, queries, vectors, filter_rows, exclude_dense


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tower_moments_standardise_as_over_the_whole_catalogue(seed: int) -> None:
    rng, queries, vectors, _, _ = case(seed, num_items=300)
    vectors += rng.normal(size=vectors.shape[1]).astype(np.float32)  # a mean far from 0
    moments = TowerMoments.of(vectors)
    full = queries.astype(np.float64) @ vectors.astype(np.float64).T
    columns = rng.choice(300, size=17, replace=False)
    np.testing.assert_allclose(moments.standardised(queries, full[:, columns]), z64(full)[:, columns], atol=1e-5)
    gone, new = rng.choice(300, size=40, replace=False), rng.normal(size=(9, vectors.shape[1])).astype(np.float32)
    changed = moments.changed(vectors[gone], new)
    kept = np.concatenate([np.delete(vectors, gone, axis=0), new])
    again = TowerMoments.of(kept)
    assert changed.count == again.count == 300 - 40 + 9
    np.testing.assert_allclose(changed.total, again.total, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(changed.outer, again.outer, rtol=1e-9, atol=1e-9)
    full = queries.astype(np.float64) @ kept.astype(np.float64).T
    np.testing.assert_allclose(changed.standardised(queries, full), z64(full), atol=1e-5)


def test_tower_moments_of_a_query_with_equal_scores_give_zeros() -> None:
    vectors = np.array([[1.0, 2.0], [1.0, -3.0], [1.0, 0.5]], dtype=np.float32)
    query = np.array([[2.0, 0.0]], dtype=np.float32)  # every item scores 2
    np.testing.assert_array_equal(TowerMoments.of(vectors).standardised(query, query @ vectors.T), np.zeros((1, 3)))


@pytest.mark.parametrize("seed", [0, 1])
def test_blended_topk_matches_the_brute_force(seed: int) -> None:
    _, queries, vectors, filter_rows, exclude_dense = case(seed)
    exclude_dense[2] = True
    exclude_dense[2, 5] = False  # one item left: one id, then -1
    got = blended_topk(queries @ vectors.T, filter_rows, 0.8, dense_to_csr(exclude_dense), 6)
    want = brute_force(queries, vectors, filter_rows, np.ones(40, bool), 0.8, exclude_dense, 6)
    np.testing.assert_array_equal(got, want)
    assert got[2].tolist() == [5, -1, -1, -1, -1, -1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_label_a_candidate_gives_the_exact_blend_over_the_live_labels(seed: int) -> None:
    rng, queries, vectors, filter_rows, exclude_dense = case(seed)
    alive = rng.random(40) < 0.8
    filter_rows[:, 35:] = 0  # labels added live: the filter never saw them
    found = np.tile(np.flatnonzero(alive), (len(queries), 1))
    found[exclude_dense[:, alive]] = -1  # as a search that left the exclusions out
    got = rerank_candidates(queries, vectors, TowerMoments.of(vectors[alive]), filter_rows, alive, 1.3, found,
                            dense_to_csr(exclude_dense), 7)
    want = brute_force(queries, vectors, filter_rows, alive, 1.3, exclude_dense, 7)
    np.testing.assert_array_equal(got, want)
    assert alive[got[got >= 0]].all()


def test_the_filters_own_candidates_reach_the_answer() -> None:
    """With the towers' candidates alone (their best `candidate_count`), a heavily weighted filter's
    favourites beyond them would be missed; the filter's own candidates bring them in."""
    rng, queries, vectors, filter_rows, exclude_dense = case(3, num_items=1500, num_queries=8)
    k, weight = 10, 4.0
    count = candidate_count(k, 1500)
    assert count < 1500
    towers = queries @ vectors.T
    towers[exclude_dense] = -np.inf
    found = np.argsort(-towers, axis=1, kind="stable")[:, :count]
    got = rerank_candidates(queries, vectors, TowerMoments.of(vectors), filter_rows, None, weight, found,
                            dense_to_csr(exclude_dense), k)
    want = brute_force(queries, vectors, filter_rows, np.ones(1500, bool), weight, exclude_dense, k)
    np.testing.assert_array_equal(got, want)
    assert not all(np.isin(want[row], found[row]).all() for row in range(len(want)))  # the case needs them


def test_no_candidates_left_gives_minus_ones_and_short_lists_are_padded() -> None:
    _, queries, vectors, filter_rows, _ = case(4, num_items=5, num_queries=2)
    exclude_dense = np.zeros((2, 5), dtype=bool)
    exclude_dense[0] = True
    found = np.array([[-1, -1, -1, -1, -1], [0, 1, 2, 3, 4]])
    got = rerank_candidates(queries, vectors, TowerMoments.of(vectors), filter_rows, None, 0.5, found,
                            dense_to_csr(exclude_dense), 8)
    assert got.shape == (2, 8)
    assert (got[0] == -1).all() and sorted(got[1, :5].tolist()) == [0, 1, 2, 3, 4] and (got[1, 5:] == -1).all()
