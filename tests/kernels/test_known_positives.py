"""known_positive_pairs (Numba: history items binary-searched among the sorted candidates) and its
torch form (every (row, candidate) key searched among the history's keys) against a set-membership
loop written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.kernels.known_positives import known_positive_pairs
from twotower.kernels.known_positives_eager import known_positive_pairs_eager


def oracle(indptr, indices, users, candidates) -> np.ndarray:
    out = []
    for r, u in enumerate(users.tolist()):
        row = set(indices[indptr[u]:indptr[u + 1]].tolist())
        out.extend((r, c) for c, item in enumerate(candidates.tolist()) if item in row)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def history(seed: int, num_users: int, num_items: int, max_degree: int, dtype=np.int32):
    """A sorted CSR with empty rows, rows of one item and heavy rows."""
    rng = np.random.default_rng(seed)
    degrees = np.minimum(rng.integers(1, max_degree + 1, num_users), num_items)
    if num_users >= 3:
        degrees[:3] = [0, 1, min(num_items, max_degree * 3)]
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(degrees)
    indices = np.concatenate([np.sort(rng.choice(num_items, d, replace=False)) for d in degrees]).astype(dtype)
    return indptr, indices


def eager(indptr, indices, users, candidates, num_items) -> np.ndarray:
    return known_positive_pairs_eager(*(torch.from_numpy(np.asarray(a)) for a in (indptr, indices, users,
                                                                                   candidates)), num_items).numpy()


@pytest.mark.parametrize("impl", [known_positive_pairs, eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("shape", [(1, 1, 5, 2), (40, 70, 12, 30), (200, 300, 25, 400), (5, 8, 6, 0)],
                         ids=lambda s: f"U{s[0]}-N{s[1]}-deg{s[2]}-C{s[3]}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_membership_loop(impl, shape, seed):
    num_users, num_items, degree, num_candidates = shape
    indptr, indices = history(seed, num_users, num_items, degree)
    rng = np.random.default_rng(seed + 10)
    users = rng.integers(0, num_users, 3 * num_users)  # repeats: a user on several rows
    candidates = rng.integers(0, num_items, num_candidates)  # repeats: an item in several columns
    got = impl(indptr, indices, users, candidates, num_items)
    want = oracle(indptr, indices, users, candidates)
    np.testing.assert_array_equal(got, want)  # rows ascending, columns ascending within a row
    if num_candidates and degree > 1:
        assert len(want) > 0  # the case exercises matches


def test_int64_history_and_empty_inputs():
    indptr, indices = history(4, 20, 50, 10, dtype=np.int64)
    users, candidates = np.arange(20), np.arange(50)
    np.testing.assert_array_equal(known_positive_pairs(indptr, indices, users, candidates, 50),
                                  oracle(indptr, indices, users, candidates))
    assert known_positive_pairs(indptr, indices, np.zeros(0, np.int64), candidates, 50).shape == (0, 2)


@pytest.mark.parametrize("impl", [known_positive_pairs, eager], ids=["kernel", "eager"])
def test_ids_outside_the_catalogue_match_nothing(impl):
    """Padding (-1) and ids past the catalogue are nobody's positive: no pair, and no wrap-around
    into another user's key or a table slot."""
    indptr, indices = history(6, 10, 20, 6)
    users = np.arange(10)
    candidates = np.array([-1, 19, 20, 20 + 19, -21, 3, 10**9])
    want = oracle(indptr, indices, users, candidates)
    assert set(want[:, 1].tolist()) <= {1, 5}
    np.testing.assert_array_equal(impl(indptr, indices, users, candidates, 20), want)


def test_bad_inputs_are_named():
    indptr, indices = history(5, 10, 20, 4)
    with pytest.raises(ValueError, match=r"users must be row codes in \[0, 10\)"):
        known_positive_pairs(indptr, indices, np.array([0, 10]), np.array([1]), 20)
    with pytest.raises(TypeError, match="candidates must be a 1-d integer array"):
        known_positive_pairs(indptr, indices, np.array([0]), np.array([1.0]), 20)
    with pytest.raises(TypeError, match="users must be a 1-d integer array"):
        known_positive_pairs(indptr, indices, np.zeros((2, 2), np.int64), np.array([1]), 20)
    with pytest.raises(ValueError, match="num_items must be an int >= 0"):
        known_positive_pairs(indptr, indices, np.array([0]), np.array([1]), -1)


def test_the_key_search_gives_the_same_pairs_a_block_of_rows_at_a_time(monkeypatch):
    from twotower.kernels import known_positives_eager

    indptr, indices = history(7, 40, 70, 12)
    rng = np.random.default_rng(8)
    users, candidates = rng.integers(0, 40, 90), rng.integers(0, 70, 50)
    monkeypatch.setattr(known_positives_eager, "_BLOCK_ELEMENTS", 7 * 50 + 3)  # blocks of 7 rows
    np.testing.assert_array_equal(eager(indptr, indices, users, candidates, 70),
                                  oracle(indptr, indices, users, candidates))
