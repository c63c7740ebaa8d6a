"""Positives, duplicate removal and k-core filtering (checked against a naive loop)."""

import numpy as np
import pyarrow as pa
import pytest

from twotower.data import DataError, dedupe, kcore, select_positives
from twotower.data.filters import compact


def test_feedback_modes():
    t = pa.table({"user": [1, 2, 3], "item": [1, 1, 1], "rating": [3.5, 4.0, 5.0], "label": [0.0, 1.0, 1.0]})
    assert select_positives(t, "all").num_rows == 3
    assert select_positives(t, "label").column("user").to_pylist() == [2, 3]
    assert select_positives(t, "rating", 4.5).column("user").to_pylist() == [3]
    with pytest.raises(DataError, match=r"no positive interactions.*rating >= 6"):
        select_positives(t, "rating", 6)
    with pytest.raises(DataError, match="needs a label column"):
        select_positives(t.drop(["label"]), "label")
    with pytest.raises(ValueError, match="threshold"):
        select_positives(t, "rating")


def test_dedupe_keeps_latest():
    users = np.array([0, 0, 1, 0, 1])
    items = np.array([5, 5, 5, 5, 6])
    ts = np.array([10, 30, 1, 20, 2])
    assert dedupe(users, items, ts).tolist() == [1, 2, 4]  # (0,5) latest at row 1
    assert dedupe(users, items, None).tolist() == [2, 3, 4]  # last in file order


@pytest.mark.parametrize("with_time", [True, False])
def test_dedupe_matches_naive(with_time):
    rng = np.random.default_rng(7)
    users, items = rng.integers(0, 20, 3000), rng.integers(0, 30, 3000)
    ts = rng.integers(0, 5, 3000) if with_time else None  # many ties in time
    best = {}
    for r in range(3000):  # keep the latest; on a tie (or without time) the later row
        pair = (users[r], items[r])
        if pair not in best or ts is None or ts[r] >= ts[best[pair]]:
            best[pair] = r
    assert dedupe(users, items, ts).tolist() == sorted(best.values())


def _naive_kcore(users, items, ku, ki):
    alive = set(range(len(users)))
    while True:
        uc, ic = {}, {}
        for r in alive:
            uc[users[r]] = uc.get(users[r], 0) + 1
            ic[items[r]] = ic.get(items[r], 0) + 1
        drop = {r for r in alive if uc[users[r]] < ku or ic[items[r]] < ki}
        if not drop:
            return alive
        alive -= drop


@pytest.mark.parametrize("seed,ku,ki", [(0, 3, 3), (1, 5, 2), (2, 2, 6), (3, 10, 10)])
def test_kcore_matches_naive_fixed_point(seed, ku, ki):
    rng = np.random.default_rng(seed)
    n = 3000
    users = (rng.pareto(1.2, n) * 5).astype(np.int64) % 300
    items = (rng.pareto(1.0, n) * 5).astype(np.int64) % 400
    keep = kcore(users, items, 300, 400, ku, ki)
    assert set(np.flatnonzero(keep)) == _naive_kcore(users.tolist(), items.tolist(), ku, ki)
    if keep.any():  # the fixed point holds
        assert np.bincount(users[keep])[np.unique(users[keep])].min() >= ku
        assert np.bincount(items[keep])[np.unique(items[keep])].min() >= ki


def test_compact():
    codes, old = compact(np.array([4, 1, 4, 7]), 9)
    assert codes.tolist() == [1, 0, 1, 2] and old.tolist() == [1, 4, 7]
