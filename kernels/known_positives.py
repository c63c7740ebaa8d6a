"""Which of a batch's candidates each row's user already has: the (row, column) pairs that leave
that row's softmax (`twotower.losses.known_positives`).

    pairs = known_positive_pairs(indptr, indices, users, candidates, num_items)     # int64 [P, 2]

Row r's user is `users[r]`; its known positives are the sorted CSR row `indices[indptr[u]:indptr[u + 1]]`
(the training history, as `samplers.build_exclusion_index` validated it); `candidates` [C] are the
batch's candidate item ids in the loss's column order. A pair (r, c) is listed when
`candidates[c]` is in the user's row, rows ascending, columns ascending within a row.

The kernel sorts the C candidates and marks where each candidate item starts among them in a
table over the item ids (up to the largest candidate), so each history item of each row is one
table look-up: O(C log C + sum of the rows' history lengths), against the B x C key searches of
the plain form (`known_positives_eager`, torch, device-agnostic: the GPU path and the tests'
reference). Imports NumPy and Numba only.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["known_positive_pairs"]

_NO_PAIRS = np.empty((0, 2), dtype=np.int64)


@njit(cache=True, nogil=True)
def _first_positions(srt, size):
    """first[item]: where `item` starts among the sorted candidates, -1 where it is not one."""
    first = np.full(size, -1, dtype=np.int64)
    for t in range(srt.shape[0]):
        if 0 <= srt[t] < size and (t == 0 or srt[t] != srt[t - 1]):
            first[srt[t]] = t
    return first


@njit(cache=True, nogil=True)
def _scan(indptr, indices, users, order, srt, first, starts, out, write):
    """Counts (write False) or writes (write True, from starts[r]) each row's pairs."""
    n, size = srt.shape[0], first.shape[0]
    counts = np.zeros(users.shape[0], dtype=np.int64)
    for r in range(users.shape[0]):
        u = users[r]
        k = starts[r] if write else 0
        for p in range(indptr[u], indptr[u + 1]):
            item = indices[p]
            t = first[item] if 0 <= item < size else -1
            if t < 0:
                continue
            while t < n and srt[t] == item:
                if write:
                    out[k, 0] = r
                    out[k, 1] = order[t]
                k += 1
                t += 1
        if write:
            out[starts[r]:k, 1].sort()
        else:
            counts[r] = k
    return counts


def _ids(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"known_positive_pairs: {name} must be a 1-d integer array, got {values.dtype} "
                        f"shape {values.shape}")
    return np.ascontiguousarray(values, dtype=np.int64)


def known_positive_pairs(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray,
                         candidates: np.ndarray, num_items: int) -> np.ndarray:
    """(row, column) pairs [P, 2] int64: candidate `candidates[column]` is in row's user's history.

    Args:
        indptr, indices: the history CSR (int64 [U + 1]; [nnz] sorted within each row).
        users: [B] int user code of each row (0 <= user < U).
        candidates: [C] int candidate item ids (ids outside [0, num_items) match nothing).
        num_items: N, the catalogue size: the history's ids are below it (the look-up table's size).
    """
    users, candidates = _ids(users, "users"), _ids(candidates, "candidates")
    indptr, indices = np.ascontiguousarray(indptr, dtype=np.int64), np.ascontiguousarray(indices)
    if users.size and (users.min() < 0 or users.max() >= indptr.size - 1):
        raise ValueError(f"known_positive_pairs: users must be row codes in [0, {indptr.size - 1}) of the history, "
                         f"got {users.min()}..{users.max()}")
    order = np.argsort(candidates, kind="stable").astype(np.int64)
    srt = candidates[order]
    if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 0:
        raise ValueError(f"known_positive_pairs: num_items must be an int >= 0, got {num_items!r}")
    first = _first_positions(srt, int(num_items))
    starts = np.zeros(users.shape[0] + 1, dtype=np.int64)
    np.cumsum(_scan(indptr, indices, users, order, srt, first, starts, _NO_PAIRS, False), out=starts[1:])
    out = np.empty((int(starts[-1]), 2), dtype=np.int64)
    _scan(indptr, indices, users, order, srt, first, starts, out, True)
    return out
