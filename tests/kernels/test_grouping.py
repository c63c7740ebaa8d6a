"""grouping (Numba counting sorts) and its sort-based eager versions against the plain-loop oracles:
the stable order by key and per-row sorted, duplicate-free CSRs, on ragged inputs (empty, unused
keys, heavy repeats)."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.kernels.grouping import csr_from_pairs, stable_group_order
from twotower.kernels.grouping_eager import csr_from_pairs_eager, stable_group_order_eager

from . import oracles


@pytest.mark.parametrize("impl", [stable_group_order, stable_group_order_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("n,num_keys", [(0, 1), (1, 1), (17, 3), (1000, 5000), (50_000, 300), (3000, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_stable_group_order_matches_oracle(n, num_keys, seed, impl):
    keys = np.random.default_rng(seed).integers(0, num_keys, n).astype(np.int32)
    order = impl(keys, num_keys)
    np.testing.assert_array_equal(order, oracles.stable_group_order(keys, num_keys))
    assert order.dtype == np.int64


@pytest.mark.parametrize("n,num_rows,width", [(0, 3, 1), (1, 1, 1), (40, 5, 4), (2000, 100, 50), (60_000, 700, 3000),
                                              (5000, 2, 10), (300, 4, 2**31 - 1)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("impl", [csr_from_pairs, csr_from_pairs_eager], ids=["kernel", "eager"])
def test_csr_from_pairs_matches_oracle(n, num_rows, width, seed, impl):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, num_rows, n)
    cols = rng.integers(0, width, n).astype(np.int32)  # narrow widths: many repeated pairs; the last: wide
    indptr, indices = impl(rows, cols, num_rows)
    want_indptr, want_indices = oracles.csr_from_pairs(rows, cols, num_rows)
    np.testing.assert_array_equal(indptr, want_indptr)
    np.testing.assert_array_equal(indices, want_indices)
    assert indptr.dtype == np.int64 and indices.dtype == np.int32


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"keys must be in \[0, 3\); found 3 at position 1"):
        stable_group_order(np.array([0, 3]), 3)
    with pytest.raises(TypeError, match="keys must be a 1-d integer array"):
        stable_group_order(np.array([0.5]), 3)
    with pytest.raises(ValueError, match=r"rows must be in \[0, 2\); found -1 at position 0"):
        csr_from_pairs(np.array([-1]), np.array([0]), 2)
    with pytest.raises(ValueError, match="one length"):
        csr_from_pairs(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError, match=r"cols must be in \[0, 2147483648\); found 2147483648"):
        csr_from_pairs(np.array([0]), np.array([2**31]), 2)


@pytest.mark.parametrize("count", [1.5, True, np.float64(3), -1])
def test_counts_must_be_non_negative_integers(count):
    """A float count passed the range check but sized the kernel's arrays by int(count): rows were
    dropped (or written out of bounds)."""
    error = ValueError if count == -1 else TypeError
    with pytest.raises(error, match="num_rows"):
        csr_from_pairs(np.array([1, 0, 1]), np.array([5, 2, 3]), count)
    with pytest.raises(error, match="num_keys"):
        stable_group_order(np.array([0, 1]), count)
