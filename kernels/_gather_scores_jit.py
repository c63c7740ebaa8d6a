"""Numba kernels behind `twotower.kernels.gather_scores` (float32 and float64; `cache=True`,
`nogil=True`). Checks, dispatch and documentation live in `gather_scores.py`.

Scores and query gradients are summed in float64 whatever the storage dtype (one rounding per
element); vector gradients are accumulated in their own dtype, one add per (row, candidate) that
points at them, in a fixed order."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def first_out_of_range(index, num_rows):
    """Flat position of the first index outside [0, num_rows), or -1 when all are in range."""
    flat = index.reshape(-1)
    for p in range(flat.shape[0]):
        if flat[p] < 0 or flat[p] >= num_rows:
            return p
    return -1


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def forward(query, vectors, index, out):
    """out[b, j] = query[b] . vectors[index[b, j]]."""
    batch, dim = query.shape
    width = index.shape[1]
    for b in range(batch):
        for j in range(width):
            row = index[b, j]
            acc = 0.0
            for d in range(dim):
                acc += float(query[b, d]) * float(vectors[row, d])
            out[b, j] = acc


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def backward(grad, query, vectors, index, grad_query, grad_vectors, want_query, want_vectors):
    """grad_query[b] = sum_j grad[b, j] vectors[index[b, j]];
    grad_vectors[r] = sum over (b, j) with index[b, j] == r of grad[b, j] query[b].

    Both outputs arrive zeroed. Rows are visited in order (b, then j), one thread, so the result is
    the same bit for bit on every run. `acc` holds one row of grad_query in float64."""
    batch, dim = query.shape
    width = index.shape[1]
    acc = np.zeros(dim)
    for b in range(batch):
        if want_query:
            for d in range(dim):
                acc[d] = 0.0
        for j in range(width):
            g = float(grad[b, j])
            if g == 0.0:
                continue
            row = index[b, j]
            if want_query:
                for d in range(dim):
                    acc[d] += g * float(vectors[row, d])
            if want_vectors:
                for d in range(dim):
                    grad_vectors[row, d] += g * float(query[b, d])
        if want_query:
            for d in range(dim):
                grad_query[b, d] = acc[d]
