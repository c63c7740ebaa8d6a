"""Tests of the epoch iterator: coverage and shapes, seeding (with or without prefetch), negatives
and logQ, and argument errors (the worker thread itself: test_prefetch.py)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

import twotower.training.batches as batches_module
from twotower.training.batches import Batch, BatchConfig, BatchIterator


def make_pairs(seed: int = 0, num_users: int = 40, num_items: int = 120, per_user: int = 12):
    """Distinct (user, item) training pairs with a skewed item popularity."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_items + 1)
    p /= p.sum()
    users, items = [], []
    for u in range(num_users):
        chosen = rng.choice(num_items, size=int(rng.integers(1, per_user + 1)), replace=False, p=p)
        users.append(np.full(chosen.size, u))
        items.append(chosen)
    return np.concatenate(users).astype(np.int32), np.concatenate(items).astype(np.int32), num_items


def collect(it: BatchIterator, epoch: int) -> list[Batch]:
    with it.epoch(epoch) as batches:
        return list(batches)


def test_epoch_covers_every_pair_once_in_contiguous_int64():
    users, items, n_items = make_pairs()
    it = BatchIterator(users, items, num_items=n_items, config=BatchConfig(batch_size=32, seed=1))
    got = collect(it, 0)
    assert len(got) == len(it) == -(-users.size // 32)
    assert [b.users.size for b in got[:-1]] == [32] * (len(got) - 1) and 0 < got[-1].users.size <= 32
    for b in got:
        for arr in (b.users, b.items):
            assert arr.dtype == np.int64 and arr.flags.c_contiguous
    pairs = np.concatenate([b.users * n_items + b.items for b in got])
    np.testing.assert_array_equal(np.sort(pairs), np.sort(users.astype(np.int64) * n_items + items))
    assert not np.array_equal(pairs, users.astype(np.int64) * n_items + items), "rows were not shuffled"
    other = np.concatenate([b.users * n_items + b.items for b in collect(it, 1)])
    assert not np.array_equal(pairs, other), "two epochs shuffled alike"


def test_drop_last_and_no_shuffle():
    users, items, n_items = make_pairs()
    it = BatchIterator(
        users, items, num_items=n_items, config=BatchConfig(batch_size=32, drop_last=True, shuffle=False)
    )
    got = collect(it, 0)
    assert len(got) == users.size // 32 and all(b.users.size == 32 for b in got)
    np.testing.assert_array_equal(np.concatenate([b.items for b in got]), items[: 32 * len(got)])


FULL_CONFIG = dict(
    batch_size=16,
    num_negatives=5,
    negative_kind="uniform",
    num_shared_negatives=7,
    shared_negative_kind="popularity",
    log_q="static",
)


def assert_same_batches(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for field in (
            "users", "items", "negatives", "negative_log_q", "shared_negatives", "shared_log_q", "item_log_q"
        ):
            xa, ya = getattr(x, field), getattr(y, field)
            assert (xa is None) == (ya is None), field
            if xa is not None:
                np.testing.assert_array_equal(xa, ya, err_msg=field)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_same_seed_same_batches_with_or_without_prefetch(kind):
    users, items, n_items = make_pairs()
    config = BatchConfig(**{**FULL_CONFIG, "negative_kind": kind}, seed=5)
    first = collect(BatchIterator(users, items, num_items=n_items, config=config), 2)
    again = collect(BatchIterator(users, items, num_items=n_items, config=config), 2)
    inline = collect(
        BatchIterator(users, items, num_items=n_items,
                      config=BatchConfig(**{**FULL_CONFIG, "negative_kind": kind}, seed=5, prefetch=0)),
        2,
    )
    assert_same_batches(first, again)
    assert_same_batches(first, inline)
    other = collect(
        BatchIterator(
            users, items, num_items=n_items, config=BatchConfig(**{**FULL_CONFIG, "negative_kind": kind}, seed=6)
        ),
        2
    )
    assert not np.array_equal(first[0].negatives, other[0].negatives)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_negatives_exclude_positives_and_log_q_is_exact(kind):
    users, items, n_items = make_pairs()
    it = BatchIterator(users, items, num_items=n_items, config=BatchConfig(**{**FULL_CONFIG, "negative_kind": kind}))
    positives = {u: set(items[users == u].tolist()) for u in np.unique(users)}
    counts = np.bincount(items, minlength=n_items)
    weights = counts**0.75
    for b in collect(it, 0):
        assert b.negatives.shape == (b.users.size, 5) and b.negatives.dtype == np.int64
        for u, row in zip(b.users.tolist(), b.negatives.tolist(), strict=True):
            assert not positives[u] & set(row), f"user {u} got a positive as negative"
        # Static logQ of the positives: log(count / total) of the training stream.
        np.testing.assert_allclose(b.item_log_q, np.log(counts[b.items] / counts.sum()), rtol=1e-6)
        assert b.item_log_q.dtype == np.float32
        # Shared negatives from count**0.75, with their per-draw log-probability.
        assert b.shared_negatives.shape == (7,)
        np.testing.assert_allclose(b.shared_log_q, np.log(weights[b.shared_negatives] / weights.sum()), rtol=1e-5)
        for r, u in enumerate(b.users.tolist()):
            pos = np.array(sorted(positives[u]))
            if kind == "uniform":
                expected = np.full(5, -np.log(n_items - pos.size))
            else:
                expected = np.log(weights[b.negatives[r]] / (weights.sum() - weights[pos].sum()))
            np.testing.assert_allclose(b.negative_log_q[r], expected, rtol=1e-5)


def test_history_as_a_csr_object_is_accepted():
    """`twotower.data`'s CSR (any object with indptr and indices) works like the tuple."""

    class CSRLike:
        def __init__(self, indptr, indices):
            self.indptr, self.indices = indptr, indices

    users, items, n_items = make_pairs()
    config = BatchConfig(batch_size=16, num_negatives=3, negative_kind="uniform", seed=4)
    plain = BatchIterator(users, items, num_items=n_items, config=config)
    history = plain._history
    as_object = BatchIterator(users, items, num_items=n_items, config=config, history=CSRLike(*history))
    as_tuple = BatchIterator(users, items, num_items=n_items, config=config, history=history)
    assert_same_batches(collect(as_object, 0), collect(as_tuple, 0))
    assert_same_batches(collect(as_object, 1), collect(plain, 1))


def test_hard_negatives_come_from_candidates_once_set():
    users, items, n_items = make_pairs()
    config = BatchConfig(batch_size=16, num_negatives=4, negative_kind="hard", hard_rank_range=(2, 10), seed=3)
    it = BatchIterator(users, items, num_items=n_items, config=config)
    # Before any candidates, hard rows fall back to uniform draws: the very ids of the uniform kind.
    uniform = BatchIterator(
        users, items, num_items=n_items,
        config=BatchConfig(batch_size=16, num_negatives=4, negative_kind="uniform", seed=3)
    )
    assert_same_batches(collect(it, 0), collect(uniform, 0))
    rng = np.random.default_rng(0)
    candidates = np.stack([rng.permutation(n_items)[:20] for _ in range(40)]).astype(np.int32)  # int32 kept as is
    it.set_candidates(candidates)
    positives = {u: set(items[users == u].tolist()) for u in np.unique(users)}
    for b in collect(it, 1):
        for u, row in zip(b.users.tolist(), b.negatives.tolist(), strict=True):
            window = set(candidates[u, 2:10].tolist()) - positives[u]
            if window:
                assert set(row) <= window, f"user {u}: {row} outside candidate ranks [2, 10)"


def test_streaming_log_q_is_deterministic_and_counts_consumed_batches_only():
    users, items, n_items = make_pairs(num_users=200, per_user=30)
    config = dict(batch_size=64, log_q="streaming", streaming_buckets=4096, seed=2)
    a = BatchIterator(users, items, num_items=n_items, config=BatchConfig(**config))
    b = BatchIterator(users, items, num_items=n_items, config=BatchConfig(**config, prefetch=0))
    for epoch in range(3):
        assert_same_batches(collect(a, epoch), collect(b, epoch))
    # Early stop after 2 batches: the estimator saw exactly 2 batches, whatever was prefetched.
    c = BatchIterator(users, items, num_items=n_items, config=BatchConfig(**config))
    with c.epoch(0) as batches:
        next(batches)
        time.sleep(0.05)  # let the worker run ahead
        next(batches)
    assert int(c.state_dict()["estimator.step"][0]) == 2
    # Resume from state: the next epoch's log_q matches an uninterrupted run.
    d = BatchIterator(users, items, num_items=n_items, config=BatchConfig(**config))
    d.load_state_dict(a.state_dict())
    e = BatchIterator(users, items, num_items=n_items, config=BatchConfig(**config))
    for epoch in range(3):
        collect(e, epoch)
    assert_same_batches(list(d), collect(e, 3))
    # After warm-up the estimate tracks the static frequencies (per-draw probabilities).
    counts = np.bincount(items, minlength=n_items)
    last = collect(a, 3)[-1]
    ratio = np.exp(last.item_log_q) / (counts[last.items] / counts.sum())
    assert 0.5 < np.median(ratio) < 2.0


def test_bad_input_raises_clear_errors():
    users, items, n_items = make_pairs()
    with pytest.raises(ValueError, match="batch_size"):
        BatchConfig(batch_size=0)
    with pytest.raises(ValueError, match="negative_kind"):
        BatchConfig(negative_kind="random", num_negatives=1)
    with pytest.raises(ValueError, match="set both"):
        BatchConfig(num_negatives=3)
    with pytest.raises(ValueError, match="log_q"):
        BatchConfig(log_q="yes")
    with pytest.raises(TypeError, match="hard_rank_range"):
        BatchConfig(num_negatives=2, negative_kind="hard", hard_rank_range=[0, 5])
    with pytest.raises(ValueError, match="hard_rank_range"):
        BatchConfig(num_negatives=2, negative_kind="hard", hard_rank_range=(5, 2))
    with pytest.raises(ValueError, match="same length"):
        BatchIterator(users, items[:-1], num_items=n_items, config=BatchConfig())
    with pytest.raises(ValueError, match="num_items"):
        BatchIterator(users, items, num_items=int(items.max()), config=BatchConfig())
    with pytest.raises(ValueError, match="empty"):
        BatchIterator(users[:0], items[:0], num_items=n_items, config=BatchConfig())
    # A user who has every item has no negative that excludes positives.
    full_users = np.concatenate([users, np.full(n_items, 99)])
    full_items = np.concatenate([items, np.arange(n_items)])
    config = BatchConfig(num_negatives=1, negative_kind="uniform")
    with pytest.raises(ValueError, match="user code 99"):
        BatchIterator(full_users, full_items, num_items=n_items, config=config)
    BatchIterator(
        full_users, full_items, num_items=n_items,
        config=BatchConfig(num_negatives=1, negative_kind="uniform", exclude_positives=False)
    )
    # An unsorted history is caught once, at construction.
    indptr = np.array([0, 2], np.int64)
    with pytest.raises(ValueError, match="not sorted"):
        BatchIterator(
            np.zeros(2, np.int64), np.array([3, 1]), num_items=5, config=BatchConfig(),
            history=(indptr, np.array([3, 1], np.int32))
        )
    it = BatchIterator(users, items, num_items=n_items, config=BatchConfig(num_negatives=1, negative_kind="hard"))
    with pytest.raises(ValueError, match="candidates must be"):
        it.set_candidates(np.zeros((3, 4), np.int64))


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(batches_module)
    assert result.attempted > 0 and result.failed == 0


def test_batches_list_their_distinct_items_and_where_each_occurrence_went():
    users, items, n_items = make_pairs()
    cfg = BatchConfig(batch_size=40, num_negatives=3, negative_kind="uniform", num_shared_negatives=7, seed=2)
    for b in collect(BatchIterator(users, items, num_items=n_items, config=cfg), 0):
        every = np.concatenate([b.items, b.negatives.ravel(), b.shared_negatives])
        assert np.unique(b.distinct_items).size == b.distinct_items.size
        np.testing.assert_array_equal(np.sort(b.distinct_items), np.unique(every))
        np.testing.assert_array_equal(b.distinct_items[b.item_rows], b.items)
        np.testing.assert_array_equal(b.distinct_items[b.negative_rows], b.negatives)
        np.testing.assert_array_equal(b.distinct_items[b.shared_rows], b.shared_negatives)
    plain = Batch(users=np.array([0, 1]), items=np.array([5, 5]))
    np.testing.assert_array_equal(plain.distinct_items, [5])
    assert plain.negative_rows is None and plain.shared_rows is None


def test_shards_split_the_global_batch_of_one_process() -> None:
    """Two shards' batches are the halves of the batches one process draws with twice the batch
    size (the same shuffle), the last global batch split 3 / 2 rows; their negatives differ."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 45), rng.integers(0, 30, 45)
    config = BatchConfig(batch_size=5, num_negatives=2, negative_kind="uniform", num_shared_negatives=3,
                         exclude_positives=False)
    whole = BatchIterator(users, items, num_items=30, config=dataclasses.replace(config, batch_size=10))
    shards = [BatchIterator(users, items, num_items=30, config=config, shard=(r, 2)) for r in (0, 1)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 5
    assert [shards[0].global_rows(i) for i in range(5)] == [10, 10, 10, 10, 5]
    with whole.epoch(1) as w, shards[0].epoch(1) as s0, shards[1].epoch(1) as s1:
        for full, first, second in zip(w, s0, s1, strict=True):
            np.testing.assert_array_equal(np.concatenate([first.users, second.users]), full.users)
            np.testing.assert_array_equal(np.concatenate([first.items, second.items]), full.items)
            assert not np.array_equal(first.shared_negatives, second.shared_negatives)
    assert (len(first.users), len(second.users)) == (3, 2)


def test_a_shard_refuses_streaming_log_q_and_bad_ranks() -> None:
    users, items = np.arange(6), np.arange(6)
    with pytest.raises(ValueError, match="batches.log_q = 'streaming' is not supported in distributed"):
        BatchIterator(users, items, num_items=6, config=BatchConfig(batch_size=2, log_q="streaming"), shard=(0, 2))
    with pytest.raises(ValueError, match="shard must be"):
        BatchIterator(users, items, num_items=6, config=BatchConfig(batch_size=2), shard=(2, 2))


def test_a_last_global_batch_smaller_than_the_world_is_dropped() -> None:
    users, items = np.arange(9) % 4, np.arange(9) % 5
    it = BatchIterator(users, items, num_items=5, config=BatchConfig(batch_size=2, negative_kind="none"),
                       shard=(2, 4))
    assert len(it) == 1  # 8 rows in one global batch; the 9th alone would leave 3 ranks without a row
