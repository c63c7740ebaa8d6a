"""Bounds check shared by the Numba kernels that index a table with caller-given rows."""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def first_out_of_range(index, num_rows):
    """Flat position of the first entry of `index` (any shape) outside [0, num_rows), or -1."""
    flat = index.reshape(-1)
    for p in range(flat.shape[0]):
        if flat[p] < 0 or flat[p] >= num_rows:
            return p
    return -1
