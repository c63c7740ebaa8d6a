"""Ranking metrics: vectorised implementation vs a per-user Python loop, and a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twotower.metrics import RankingMetrics, hit_matrix, ranking_metrics


def naive_metrics(topk: np.ndarray, relevant: list[set[int]], ks: list[int], num_items: int) -> dict[str, float]:
    """Straight from the definitions, one user at a time (the oracle)."""
    sums: dict[str, float] = {}
    users = [u for u in range(len(relevant)) if relevant[u]]
    for k in ks:
        totals = dict.fromkeys(["recall", "ndcg", "mrr", "hit", "precision", "map"], 0.0)
        for u in users:
            rel = relevant[u]
            top = [int(i) for i in topk[u, :k]]
            hits = [1 if (i >= 0 and i in rel) else 0 for i in top]
            n = sum(hits)
            totals["recall"] += n / len(rel)
            totals["precision"] += n / k
            totals["hit"] += 1.0 if n else 0.0
            totals["mrr"] += 1.0 / (hits.index(1) + 1) if n else 0.0
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
            totals["ndcg"] += dcg / idcg
            ap = sum(sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits) if h)
            totals["map"] += ap / min(len(rel), k)
        for name, total in totals.items():
            sums[f"{name}@{k}"] = total / len(users)
        shown = {int(i) for u in users for i in topk[u, :k] if i >= 0}
        sums[f"coverage@{k}"] = len(shown) / num_items
    return sums


def to_csr(sets: list[set[int]], rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    rows = [sorted(s) for s in sets]
    if rng is not None:  # unsorted rows with duplicates: must not change anything
        rows = [list(rng.permutation(r + r[:1])) for r in rows]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    return indptr, np.array([x for r in rows for x in r], dtype=np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_per_user_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_users, num_items, width = 70, 40, 12
    topk = np.stack([rng.permutation(num_items)[:width] for _ in range(num_users)])
    topk[rng.random(topk.shape) < 0.1] = -1  # padding slots
    relevant = [set(rng.choice(num_items, size=rng.integers(0, 15), replace=False).tolist()) for _ in range(num_users)]
    ks = [1, 3, 5, 12]
    got = ranking_metrics(topk, *to_csr(relevant, rng), ks, num_items)
    want = naive_metrics(topk, relevant, ks, num_items)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


def test_hand_computed_case() -> None:
    topk = np.array([[3, 1, 4, 2], [0, 5, -1, -1]])
    indptr, indices = np.array([0, 3, 4]), np.array([1, 2, 9, 0])  # user 0: {1, 2, 9}; user 1: {0}
    got = ranking_metrics(topk, indptr, indices, ks=[2, 4], num_items=10)
    # User 0 hits at ranks 2 and 4; user 1 at rank 1.
    # @4: recall (2/3 + 1)/2 = 5/6; precision (2/4 + 1/4)/2 = 0.375; MRR (1/2 + 1)/2 = 0.75;
    #     NDCG user 0 = (1/log2 3 + 1/log2 5) / (1 + 1/log2 3 + 1/log2 4) = 1.061606 / 2.130930 = 0.498189,
    #     user 1 = 1, mean 0.749095; MAP user 0 = (1/2 + 2/4) / min(3, 4) = 1/3, user 1 = 1, mean 2/3;
    #     coverage = |{3, 1, 4, 2, 0, 5}| / 10 = 0.6.
    assert got["recall@4"] == pytest.approx(5 / 6)
    assert got["precision@4"] == pytest.approx(0.375)
    assert got["mrr@4"] == pytest.approx(0.75)
    assert got["hit@4"] == pytest.approx(1.0)
    assert got["ndcg@4"] == pytest.approx(0.749095, abs=1e-6)
    assert got["map@4"] == pytest.approx(2 / 3)
    assert got["coverage@4"] == pytest.approx(0.6)
    # @2: user 0 top [3, 1] hits at rank 2: recall 1/3, NDCG (1/log2 3) / (1 + 1/log2 3) = 0.386853,
    #     MAP (1/2) / min(3, 2) = 1/4; user 1: recall 1, NDCG 1, MAP 1.
    assert got["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["ndcg@2"] == pytest.approx((0.386853 + 1) / 2, abs=1e-6)
    assert got["map@2"] == pytest.approx((0.25 + 1) / 2)
    assert got["coverage@2"] == pytest.approx(0.4)


def test_users_without_relevant_items_are_left_out() -> None:
    topk = np.array([[0, 1], [0, 1]])
    got = ranking_metrics(topk, np.array([0, 1, 1]), np.array([1]), ks=[2], num_items=3)
    assert got["recall@2"] == 1.0 and got["mrr@2"] == 0.5  # only user 0 counts


def test_batches_accumulate_like_one_call() -> None:
    rng = np.random.default_rng(3)
    topk = np.stack([rng.permutation(50)[:10] for _ in range(40)])
    relevant = [set(rng.choice(50, size=rng.integers(1, 8), replace=False).tolist()) for _ in range(40)]
    indptr, indices = to_csr(relevant)
    acc = RankingMetrics([5, 10], 50)
    for s in range(0, 40, 13):
        e = min(s + 13, 40)
        acc.update(topk[s:e], indptr[s : e + 1] - indptr[s], indices[indptr[s] : indptr[e]])
    one = ranking_metrics(topk, indptr, indices, [5, 10], 50)
    assert acc.num_users == 40
    for key, value in one.items():
        assert acc.result()[key] == pytest.approx(value, rel=1e-12)


def test_hit_matrix_and_errors() -> None:
    hits, counts = hit_matrix(np.array([[2, -1, 7]]), np.array([0, 3]), np.array([7, 7, 2]))
    assert hits.tolist() == [[True, False, True]] and counts.tolist() == [2]
    with pytest.raises(ValueError, match="U \\+ 1 = 2"):
        hit_matrix(np.array([[1]]), np.array([0, 1, 1]), np.array([1]))
    with pytest.raises(ValueError, match="largest cutoff 20"):
        ranking_metrics(np.array([[1]]), np.array([0, 1]), np.array([1]), ks=[20], num_items=3)
    with pytest.raises(ValueError, match="ks must be"):
        RankingMetrics([], 3)
    with pytest.raises(TypeError, match="integer"):
        hit_matrix(np.array([[1.0]]), np.array([0, 1]), np.array([1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_hit_matrix_with_ids_near_2_to_the_63(seed: int) -> None:
    """Ids so large that user * width + item would overflow int64 give the same hits as small ids
    with the same equalities (a relabelling of the ids never changes which recommendations hit)."""
    rng = np.random.default_rng(seed)
    small_top = rng.integers(-1, 30, size=(6, 5))
    lengths = rng.integers(0, 6, size=6)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    small_rel = rng.integers(0, 30, size=int(indptr[-1]))
    big = lambda ids: np.where(ids >= 0, ids + (2**62 - 100), -1)  # noqa: E731
    expected = hit_matrix(small_top, indptr, small_rel)
    got = hit_matrix(big(small_top), indptr, big(small_rel))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_the_lightgcn_protocol_definitions_by_hand() -> None:
    # LightGCN's (and Gowalla's README) definitions at K = 2, where they differ from the common
    # alternatives: recall's denominator is the number of the user's test items, not min(|R|, K);
    # NDCG's ideal DCG runs over min(|R|, K) positions, not |R|; a user without test items is skipped.
    topk = np.array([[5, 7], [1, 2], [3, 4]])
    indptr, indices = np.array([0, 3, 4, 4]), np.array([5, 8, 9, 2])  # user 0: {5, 8, 9}; user 1: {2}; user 2: none
    got = ranking_metrics(topk, indptr, indices, ks=[2], num_items=10)
    # user 0: one hit at rank 1 of 3 test items: recall 1/3 (1/2 under min(|R|, K));
    #         DCG 1, ideal 1 + 1/log2 3 = 1.630930 (two positions), NDCG 0.613147 (0.530721 over |R| = 3).
    # user 1: its one item at rank 2: recall 1, DCG 1/log2 3 = 0.630930, ideal 1, NDCG 0.630930.
    # user 2 is left out of the means.
    assert got["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 1 / math.log2(3)) / 2)
    assert got["ndcg@2"] == pytest.approx((0.613147 + 0.630930) / 2, abs=1e-6)


def test_a_cutoff_beyond_the_catalogue_costs_the_catalogue_not_the_cutoff() -> None:
    # A complete ranking of 5 items scored at k = 10**12: every position past 5 is a miss, so each
    # metric equals its value at k = 5, except precision (hits / k); nothing is allocated k wide.
    from twotower.metrics import RankingMetrics

    rng = np.random.default_rng()
    top = np.stack([rng.permutation(5) for _ in range(4)])
    relevant = [[0, 3], [4], [1, 2, 3], [2]]
    indptr = np.cumsum([0] + [len(r) for r in relevant])
    indices = np.array([x for r in relevant for x in r])
    huge, full = RankingMetrics([10**12], 5), RankingMetrics([5], 5)
    huge.update(top, indptr, indices)
    full.update(top, indptr, indices)
    for name in ("recall", "ndcg", "mrr", "hit", "map"):
        assert huge.result()[f"{name}@{10**12}"] == pytest.approx(full.result()[f"{name}@5"]), name
    assert huge.result()[f"precision@{10**12}"] == pytest.approx(full.result()["precision@5"] * 5 / 10**12)
    assert huge.result()[f"recall@{10**12}"] == 1.0  # the whole catalogue is ranked: every item is found
    with pytest.raises(ValueError, match="smaller than the largest cutoff 10"):
        RankingMetrics([10], 20).update(top, indptr, indices)  # a truncated ranking is still refused


def test_evaluation_at_a_huge_k_ranks_the_catalogue_once() -> None:
    from twotower.evaluate import evaluate_vectors, ranking_width

    rng = np.random.default_rng()
    users, items = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    relevant = [[0, 5], [1], [2, 3, 8], [7], [6], [4]]
    indptr = np.cumsum([0] + [len(r) for r in relevant])
    csr = (indptr, np.array([x for r in relevant for x in r]))
    assert ranking_width([10, 10**9], 9) == 9 and ranking_width([3], 9) == 3
    huge = evaluate_vectors(users, items, csr, ks=[10**9], progress=False, num_threads=1).metrics
    full = evaluate_vectors(users, items, csr, ks=[9], progress=False, num_threads=1).metrics
    assert huge[f"ndcg@{10**9}"] == pytest.approx(full["ndcg@9"]) and huge[f"recall@{10**9}"] == 1.0
