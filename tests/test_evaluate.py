"""Full-ranking evaluation: exact scorer vs a brute-force ranking, exclusion, baselines, model entry point."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_metrics import naive_metrics
from twotower.data.csr import group_by_user, take_rows
from twotower.evaluate import (
    evaluate_model,
    evaluate_popularity,
    evaluate_random,
    evaluate_rankings,
    evaluate_vectors,
    exact_ranker,
    popularity_ranker,
    random_ranker,
)
from twotower.model import ModelConfig, TwoTowerModel


def brute_force_topk(scores: np.ndarray, exclude: list[set[int]], k: int) -> np.ndarray:
    """Sort each row (higher score, then lower id) after dropping the excluded items."""
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for u, row in enumerate(scores):
        order = sorted((i for i in range(len(row)) if i not in exclude[u]), key=lambda i: (-row[i], i))[:k]
        out[u, : len(order)] = order
    return out


def sets_to_csr(sets: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sets], out=indptr[1:])
    return indptr, np.array([x for s in sets for x in sorted(s)], dtype=np.int64)


def random_sets(rng: np.random.Generator, num_users: int, num_items: int, low: int, high: int) -> list[set[int]]:
    return [set(rng.choice(num_items, size=rng.integers(low, high), replace=False).tolist()) for _ in range(num_users)]


def test_exact_evaluation_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    num_users, num_items, dim = 57, 90, 6
    users = rng.normal(size=(num_users, dim)).astype(np.float32)
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    seen = random_sets(rng, num_users, num_items, 0, 30)
    relevant = [s - seen[u] for u, s in enumerate(random_sets(rng, num_users, num_items, 0, 10))]
    ks = [5, 10, 20]
    got = evaluate_vectors(
        users, items, sets_to_csr(relevant), exclude=sets_to_csr(seen), ks=ks, batch_size=16, progress=False
    )
    want = naive_metrics(
        brute_force_topk(users.astype(np.float64) @ items.T.astype(np.float64), seen, 20), relevant, ks, num_items
    )
    assert got.num_users == sum(1 for r in relevant if r)
    for key, value in want.items():
        assert got.metrics[key] == pytest.approx(value, abs=1e-12), key


def test_exclusion_really_excludes() -> None:
    # Items 0..4 score highest for everyone; user u has seen them and its relevant item is 5 + u.
    num_users, num_items = 6, 30
    items = np.zeros((num_items, 1), dtype=np.float32)
    items[:5, 0] = 10.0
    items[5 : 5 + num_users, 0] = 5.0
    queries = np.ones((num_users, 1), dtype=np.float32)
    relevant = sets_to_csr([{5 + u} for u in range(num_users)])
    seen = sets_to_csr([set(range(5)) for _ in range(num_users)])
    without = evaluate_vectors(queries, items, relevant, ks=[5], progress=False)
    with_ = evaluate_vectors(queries, items, relevant, exclude=seen, ks=[5], progress=False)
    assert without.metrics["recall@5"] == 0.0
    # With items 0..4 excluded the top 5 is items 5..9 (equal scores: lower ids first), so users 0..4 hit.
    ids = exact_ranker(queries, items, 5)(np.arange(num_users), seen)
    assert not np.isin(ids, np.arange(5)).any()
    assert ids.tolist() == [[5, 6, 7, 8, 9]] * num_users  # ties broken by the lower id
    assert with_.metrics["recall@5"] == pytest.approx(5 / 6)


def toy_dataset(seed: int = 0, num_users: int = 120, num_items: int = 80) -> SimpleNamespace:
    """A SplitDataset-like object: skewed item popularity, per-user disjoint train/valid/test."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.8
    parts = {"train": ([], []), "valid": ([], []), "test": ([], [])}
    for u in range(num_users):
        chosen = rng.choice(num_items, size=12, replace=False, p=pop / pop.sum())
        for name, sl in (("train", slice(0, 8)), ("valid", slice(8, 10)), ("test", slice(10, 12))):
            parts[name][0].extend([u] * len(chosen[sl]))
            parts[name][1].extend(chosen[sl].tolist())
    inter = {
        name: SimpleNamespace(users=np.array(us, np.int32), items=np.array(its, np.int32))
        for name, (us, its) in parts.items()
    }
    train_h = group_by_user(inter["train"].users, inter["train"].items, num_users)
    tv_h = group_by_user(
        np.concatenate([inter["train"].users, inter["valid"].users]),
        np.concatenate([inter["train"].items, inter["valid"].items]),
        num_users,
    )
    return SimpleNamespace(
        num_users=num_users,
        num_items=num_items,
        **inter,
        train_history=SimpleNamespace(indptr=train_h[0], indices=train_h[1].astype(np.int32)),
        train_valid_history=SimpleNamespace(indptr=tv_h[0], indices=tv_h[1].astype(np.int32)),
    )


def test_popularity_baseline() -> None:
    data = toy_dataset()
    counts = np.bincount(data.train.items, minlength=data.num_items)
    seen = [
        set(data.train_valid_history.indices[a:b].tolist())
        for a, b in zip(data.train_valid_history.indptr[:-1], data.train_valid_history.indptr[1:], strict=True)
    ]
    ids = popularity_ranker(counts, 10)(
        np.arange(data.num_users),
        take_rows((data.train_valid_history.indptr, data.train_valid_history.indices), np.arange(data.num_users)),
    )
    np.testing.assert_array_equal(
        ids, brute_force_topk(np.tile(counts.astype(np.float64), (data.num_users, 1)), seen, 10)
    )
    test_relevant = [set() for _ in range(data.num_users)]
    for u, i in zip(data.test.users, data.test.items, strict=True):
        test_relevant[u].add(int(i))
    got = evaluate_popularity(data, split="test", ks=[10], progress=False)
    want = naive_metrics(ids, test_relevant, [10], data.num_items)
    for key, value in want.items():
        assert got.metrics[key] == pytest.approx(value, abs=1e-12), key
    # On skewed data the popular items beat chance clearly.
    assert (
        got.metrics["recall@10"] > 2 * evaluate_random(data, split="test", ks=[10], progress=False).metrics["recall@10"]
    )


def test_random_baseline_is_seeded_uniform_and_excludes() -> None:
    rng = np.random.default_rng(1)
    num_users, num_items, k = 400, 60, 10
    seen = random_sets(rng, num_users, num_items, 0, 20)
    excl = sets_to_csr(seen)
    ids = random_ranker(num_items, k, seed=3)(np.arange(num_users), excl)
    again = random_ranker(num_items, k, seed=3)(np.arange(num_users), excl)
    other = random_ranker(num_items, k, seed=4)(np.arange(num_users), excl)
    np.testing.assert_array_equal(ids, again)
    assert (ids != other).any()
    for u in range(num_users):
        assert len(set(ids[u].tolist())) == k and not set(ids[u].tolist()) & seen[u]
    # Recall of one random relevant item ~ k / (items left); average over users, 4 standard errors.
    relevant = [{int(rng.choice(sorted(set(range(num_items)) - s)))} for s in seen]
    result = evaluate_rankings(
        random_ranker(num_items, k, seed=5),
        sets_to_csr(relevant),
        num_items=num_items,
        ks=[k],
        exclude=excl,
        progress=False,
    )
    p = np.array([k / (num_items - len(s)) for s in seen])
    assert abs(result.metrics[f"recall@{k}"] - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / num_users
    # Fewer items left than k: padded with -1.
    tiny = random_ranker(4, 6, seed=0)(np.arange(2), sets_to_csr([{0}, set()]))
    assert (tiny[0] == -1).sum() == 3 and (tiny[1] == -1).sum() == 2


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_model_end_to_end(split: str) -> None:
    torch.manual_seed(0)
    data = toy_dataset(seed=2)
    model = TwoTowerModel(
        ModelConfig(embedding_dim=8, scoring="neg_l2"), num_users=data.num_users, num_items=data.num_items
    ).eval()
    got = evaluate_model(model, data, split=split, ks=[5, 20], batch_size=50, progress=False)
    with torch.no_grad():
        q = model.encode_users(torch.arange(data.num_users)).double()
        v = model.encode_items(torch.arange(data.num_items)).double()
        scores = (-torch.cdist(q, v).square()).numpy()
    history = data.train_history if split == "valid" else data.train_valid_history
    seen = [set(history.indices[a:b].tolist()) for a, b in zip(history.indptr[:-1], history.indptr[1:], strict=True)]
    target = getattr(data, split)
    relevant = [set() for _ in range(data.num_users)]
    for u, i in zip(target.users, target.items, strict=True):
        relevant[u].add(int(i))
    want = naive_metrics(brute_force_topk(scores, seen, 20), relevant, [5, 20], data.num_items)
    for key, value in want.items():
        assert got.metrics[key] == pytest.approx(value, abs=1e-9), key
    assert got.num_users == data.num_users and got.users_per_second > 0


def test_bad_arguments() -> None:
    data = toy_dataset()
    with pytest.raises(ValueError, match="split must be"):
        evaluate_popularity(data, split="train")
    with pytest.raises(ValueError, match="both are indexed by user code"):
        evaluate_rankings(
            lambda u, e: np.zeros((len(u), 5), np.int64),
            sets_to_csr([{1}]),
            num_items=3,
            ks=[5],
            exclude=sets_to_csr([{1}, {2}]),
            progress=False,
        )


def test_group_by_user_checks_item_codes_and_handles_huge_ones() -> None:
    with pytest.raises(ValueError, match="item codes must be >= 0; found -1"):
        group_by_user(np.array([1]), np.array([-1]), 3)
    indptr, items = group_by_user(np.array([1, 0, 1, 1]), np.array([2**62, 5, 3, 2**62]), 3)
    np.testing.assert_array_equal(indptr, [0, 1, 3, 3])
    np.testing.assert_array_equal(items, [5, 3, 2**62])


def test_shards_combined_give_the_unsharded_metrics() -> None:
    """Three shards of the users (as three ranks would rank them), their totals summed and their
    listed items OR-ed, give the one-process metrics, coverage and unreachable users included."""
    rng = np.random.default_rng(7)
    num_users, num_items, dim = 61, 40, 5
    users = rng.normal(size=(num_users, dim)).astype(np.float32)
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    seen = random_sets(rng, num_users, num_items, 0, 10)
    relevant = sets_to_csr([s - seen[u] for u, s in enumerate(random_sets(rng, num_users, num_items, 0, 6))])
    unreachable = rng.integers(0, 3, num_users)
    ranker = exact_ranker(users, items, 10)
    kwargs = dict(num_items=num_items, ks=[3, 10], exclude=sets_to_csr(seen), batch_size=7, progress=False,
                  unreachable=unreachable, unreachable_users=4)
    whole = evaluate_rankings(ranker, relevant, **kwargs)
    shards = []
    for index in range(3):
        evaluate_rankings(ranker, relevant, shard=(index, 3), combine=lambda acc: shards.append(acc.totals()), **kwargs)
    sums = sum(part[0] for part in shards)
    count = sum(part[1] for part in shards)
    listed = np.logical_or.reduce([part[2] for part in shards])

    def combine(acc) -> None:
        acc.set_totals(sums, count, listed)

    combined = evaluate_rankings(ranker, relevant, shard=(0, 3), combine=combine, **kwargs)
    assert combined.num_users == whole.num_users
    assert shards[1][1] < whole.num_users / 2  # each shard ranked a part of the users
    for key, value in whole.metrics.items():
        assert combined.metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_a_bad_shard_is_named() -> None:
    relevant = sets_to_csr([{1}, {2}])
    ranker = exact_ranker(np.ones((2, 1), np.float32), np.ones((4, 1), np.float32), 2)
    with pytest.raises(ValueError, match="shard must be"):
        evaluate_rankings(ranker, relevant, num_items=4, ks=[2], progress=False, shard=(2, 2))
