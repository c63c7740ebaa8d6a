"""The software-prefetch helper of the Numba kernels: a hint that must compile for every table the
kernels read and never change what the loop around it computes."""

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from twotower.kernels._prefetch_jit import _prefetch_element, prefetch_row


@njit
def _gather_sum(table, rows, distance):
    """sum of table[rows[i]] over i, each row prefetched `distance` iterations ahead."""
    total = np.zeros(table.shape[1], dtype=np.float64)
    for i in range(rows.shape[0]):
        if i + distance < rows.shape[0]:
            prefetch_row(table, rows[i + distance])
        for d in range(table.shape[1]):
            total[d] += table[rows[i], d]
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32])
@pytest.mark.parametrize("dim", [1, 15, 16, 17, 64, 100])
def test_prefetched_gather_matches_numpy(dtype: type, dim: int) -> None:
    rng = np.random.default_rng(dim)
    table = (rng.standard_normal((300, dim)) * 100).astype(dtype)
    rows = rng.integers(0, 300, 1000)
    for distance in (1, 16, 2000):  # 2000: never prefetches (past the end)
        np.testing.assert_allclose(_gather_sum(table, rows, distance), table[rows].astype(np.float64).sum(axis=0),
                                   rtol=1e-12)


def test_prefetch_of_the_last_row_and_a_strided_view() -> None:
    table = np.arange(50 * 33, dtype=np.float32).reshape(50, 33)
    rows = np.array([49, 0, 49, 3])
    np.testing.assert_array_equal(_gather_sum(table, rows, 1), table[rows].astype(np.float64).sum(axis=0))
    view = table[::2, 1:]  # non-contiguous: every element still addressed through its strides
    np.testing.assert_array_equal(_gather_sum(view, np.array([24, 1, 0]), 1),
                                  view[[24, 1, 0]].astype(np.float64).sum(axis=0))


def test_prefetch_rejects_what_it_cannot_address() -> None:
    @njit
    def one_dimensional(x):
        _prefetch_element(x, 0, 0)

    with pytest.raises(TypingError):
        one_dimensional(np.zeros(4))
