"""distinct (hash table, first-occurrence order) and its sort-based eager version against the
plain-loop oracle."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.kernels.distinct import distinct
from twotower.kernels.distinct_eager import distinct_eager

from . import oracles


@pytest.mark.parametrize("impl", [distinct, distinct_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("size,high", [(0, 5), (1, 1), (17, 3), (1000, 10), (17408, 1682), (5000, 2**62)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle(size, high, seed, impl):
    ids = np.random.default_rng(seed).integers(0, high, size)
    values, inverse = impl(ids)
    want_values, want_inverse = oracles.distinct(ids)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(inverse, want_inverse)
    np.testing.assert_array_equal(values[inverse], ids)
    assert len(set(values.tolist())) == len(values)


def test_negative_and_colliding_ids():
    # keys that agree in their low bits exercise probing; negatives must hash like any other key
    ids = np.array([-5, 1 << 40, 0, (1 << 40) + 1024, -5, 0, 1 << 40], dtype=np.int64)
    values, inverse = distinct(ids)
    np.testing.assert_array_equal(values, [-5, 1 << 40, 0, (1 << 40) + 1024])
    np.testing.assert_array_equal(values[inverse], ids)


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.int64), np.array([1.0, 2.0]), np.array([True])])
def test_rejects_non_integer_or_non_1d(bad):
    with pytest.raises(TypeError, match="1-d integer"):
        distinct(bad)


def test_uint64_ids_beyond_int64_are_refused():
    with pytest.raises(ValueError, match="fit int64"):
        distinct(np.array([1, 2**64 - 1], dtype=np.uint64))
    values, inverse = distinct(np.array([5, 2**63 - 1, 5], dtype=np.uint64))
    assert values.tolist() == [5, 2**63 - 1] and inverse.tolist() == [0, 1, 0]
