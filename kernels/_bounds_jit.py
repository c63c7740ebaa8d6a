"""Bounds check shared by the Numba kernels that index a table with caller-given rows."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def first_out_of_range(index, num_rows):
    """Flat position of the first entry of `index` (any shape) outside [0, num_rows), or -1."""
    flat = index.reshape(-1)
    for p in range(flat.shape[0]):
        if flat[p] < 0 or flat[p] >= num_rows:
            return p
    return -1


def checked_indices(values: np.ndarray, num_rows: int, what: str) -> np.ndarray:
    """`values` (any shape) as a contiguous int64 array whose entries all lie in [0, num_rows);
    otherwise IndexError naming `what`, the first bad entry's position and its value, e.g.
    "gather_scores: index[1, 0] = 4 is outside [0, 4)"."""
    array = np.ascontiguousarray(values, dtype=np.int64)
    bad = first_out_of_range(array, num_rows)
    if bad >= 0:
        where = ", ".join(str(int(i)) for i in np.unravel_index(int(bad), array.shape))
        raise IndexError(f"{what}[{where}] = {int(array.reshape(-1)[bad])} is outside [0, {num_rows})")
    return array
