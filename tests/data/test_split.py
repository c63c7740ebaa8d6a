"""Splits: RecBole ratio counts, disjointness, leave-last-out, time cuts, cold start, histories."""

import numpy as np
import pytest

from twotower.data import CSR, DataError, Interactions, encode_ids, leave_last_out, ratio_split, time_split
from twotower.data.split import TEST, TRAIN, VALID, assemble


def _counts(assignment, users, user):
    a = assignment[users == user]
    return [int((a == TRAIN).sum()), int((a == VALID).sum()), int((a == TEST).sum())]


# RecBole 0.8/0.1/0.1 by hand: valid/test get int(0.1 * n); train the rest; a part with share in
# (0, 1) takes one row from train while train has > 1 (test first). n=2: share 0.2 -> test 1.
# n=3: test 1 (train 2 > 1), then valid 1. n=25: int(2.5) = 2 each, train 21.
@pytest.mark.parametrize(
    "n,expected", [(1, [1, 0, 0]), (2, [1, 0, 1]), (3, [1, 1, 1]), (10, [8, 1, 1]), (25, [21, 2, 2]), (19, [17, 1, 1])]
)
def test_ratio_counts_follow_recbole(n, expected):
    users = np.zeros(n, dtype=np.int32)
    assert _counts(ratio_split(users, (0.8, 0.1, 0.1), seed=3), users, 0) == expected


def test_ratio_split_random_per_user_and_seeded():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 5000).astype(np.int32)
    a = ratio_split(users, seed=1)
    assert np.array_equal(a, ratio_split(users, seed=1))
    assert not np.array_equal(a, ratio_split(users, seed=2))
    assert abs((a == TEST).mean() - 0.1) < 0.02 and abs((a == TRAIN).mean() - 0.8) < 0.02
    # which rows are held out is random, not the last ones of each user
    last = np.array([np.flatnonzero(users == u)[-1] for u in range(50)])
    assert (a[last] == TEST).mean() < 0.5
    with pytest.raises(ValueError):
        ratio_split(users, (0.0, 0.5, 0.5))


def test_leave_last_out_takes_latest():
    users = np.array([0, 0, 0, 0, 1, 1, 2], dtype=np.int32)
    ts = np.array([5, 9, 1, 7, 3, 2, 4])
    a = leave_last_out(users, ts)
    # user 0: ts 9 -> test, 7 -> valid; user 1 (2 rows): latest -> test; user 2 (1 row): train
    assert a.tolist() == [TRAIN, TEST, TRAIN, VALID, TEST, TRAIN, TRAIN]
    with pytest.raises(DataError, match="timestamps"):
        leave_last_out(users, None)


def test_time_split():
    ts = np.arange(100)
    a = time_split(ts, cuts=(70, 90))
    assert (a[:70] == TRAIN).all() and (a[70:90] == VALID).all() and (a[90:] == TEST).all()
    b = time_split(ts, ratios=(0.8, 0.1, 0.1))
    assert [(b == k).sum() for k in (TRAIN, VALID, TEST)] == [80, 10, 10]
    with pytest.raises(ValueError):
        time_split(ts)


def _dataset(users, items, assignment, require_valid=True):
    u, uv = encode_ids(np.asarray(users))
    i, iv = encode_ids(np.asarray(items))
    return assemble(
        Interactions(u, i, None), np.asarray(assignment, dtype=np.int8), uv, iv, require_valid=require_valid
    )


def test_assemble_drops_cold_start_and_renumbers():
    users = [10, 10, 20, 20, 30, 40, 20, 10]
    items = [1, 2, 1, 3, 9, 1, 2, 1]
    assignment = [TRAIN, TRAIN, TRAIN, VALID, TEST, TEST, VALID, TEST]  # item 3, user 30 / item 9, user 40 unseen
    ds = _dataset(users, items, assignment)
    assert ds.stats["cold_start_users"] == 2 and ds.stats["cold_start_items"] == 2
    assert ds.stats["cold_start_rows_dropped"] == 3
    assert ds.num_users == 2 and ds.num_items == 2  # only train entities keep codes
    assert ds.user_vocab.ids.tolist() == [10, 20] and ds.item_vocab.ids.tolist() == [1, 2]
    assert (ds.valid.users.tolist(), ds.valid.items.tolist()) == ([1], [1])  # (20, 2) in new codes
    assert (ds.test.users.tolist(), ds.test.items.tolist()) == ([0], [0])  # (10, 1)


def test_empty_set_is_an_error():
    with pytest.raises(DataError, match="test set empty"):
        _dataset([1, 1, 2], [1, 2, 9], [TRAIN, TRAIN, TEST], require_valid=False)  # only test row is cold
    with pytest.raises(DataError, match="valid set empty"):
        _dataset([1, 1, 1], [1, 2, 1], [TRAIN, TRAIN, TEST])
    ds = _dataset([1, 1, 1], [1, 2, 1], [TRAIN, TRAIN, TEST], require_valid=False)
    assert len(ds.valid) == 0


def test_histories_sorted_unique_and_complete():
    rng = np.random.default_rng(5)
    users = rng.integers(0, 40, 2000)
    items = rng.integers(0, 60, 2000)
    ds = _dataset(users, items, ratio_split(users, seed=0))
    for csr, parts in ((ds.train_history, [ds.train]), (ds.train_valid_history, [ds.train, ds.valid])):
        assert csr.indptr.dtype == np.int64 and csr.indices.dtype == np.int32 and csr.num_rows == ds.num_users
        for u in range(ds.num_users):
            row = csr.row(u)
            want = sorted({int(i) for p in parts for i in p.items[p.users == u]})
            assert row.tolist() == want


def test_csr_from_pairs():
    csr = CSR.from_pairs(np.array([2, 0, 2, 2]), np.array([7, 3, 1, 7]), 4)
    assert csr.indptr.tolist() == [0, 1, 1, 3, 3] and csr.indices.tolist() == [3, 1, 7]
    with pytest.raises(ValueError, match="out of range"):
        CSR.from_pairs(np.array([4]), np.array([0]), 4)


def test_with_valid_in_train_moves_every_valid_row_into_train_and_keeps_test():
    from twotower.data import build_dataset, generate, with_valid_in_train

    ds = build_dataset(generate(num_users=120, num_items=90, interactions_per_user=12, seed=3), seed=1)
    assert len(ds.valid) > 0
    refit = with_valid_in_train(ds)
    pairs = lambda part: sorted(zip(part.users.tolist(), part.items.tolist(), strict=True))  # noqa: E731
    assert pairs(refit.train) == sorted(pairs(ds.train) + pairs(ds.valid))
    assert len(refit.valid) == 0 and refit.stats["valid_rows"] == 0
    assert pairs(refit.test) == pairs(ds.test)
    assert (refit.num_users, refit.num_items) == (ds.num_users, ds.num_items)
    expected = {u: set() for u in range(ds.num_users)}
    for u, i in pairs(ds.train) + pairs(ds.valid):
        expected[u].add(i)
    for history in (refit.train_history, refit.train_valid_history):
        got = {u: set(history.indices[history.indptr[u]:history.indptr[u + 1]].tolist()) for u in range(ds.num_users)}
        assert got == expected
    assert "valid" not in refit.unknown_targets
