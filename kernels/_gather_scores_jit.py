"""Numba kernels behind `twotower.kernels.gather_scores` (float32 and float64; `cache=True`,
`nogil=True`). Checks, dispatch and documentation live in `gather_scores.py`.

Sums run in the storage dtype (`zero` is a 0 of that dtype), so the loops over D vectorise; float32
results differ from a float64 computation by about 1e-7 relative per term."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._prefetch_jit import prefetch_row


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def forward(query, vectors, index, out, zero):
    """out[b, j] = query[b] . vectors[index[b, j]]."""
    batch, dim = query.shape
    width = index.shape[1]
    for b in range(batch):
        q = query[b]
        if b + 1 < batch:  # the next row's candidates are scattered over `vectors`: ask ahead
            for j in range(width):
                prefetch_row(vectors, index[b + 1, j])
        for j in range(width):
            v = vectors[index[b, j]]
            acc = zero
            for d in range(dim):
                acc += q[d] * v[d]
            out[b, j] = acc


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def query_gradient(grad, vectors, index, grad_query):
    """grad_query[b] += sum_j grad[b, j] vectors[index[b, j]], row by row (no table gradient)."""
    batch, dim = grad_query.shape
    for b in range(batch):
        dq = grad_query[b]
        for j in range(index.shape[1]):
            g = grad[b, j]
            if g != 0:
                v = vectors[index[b, j]]
                for d in range(dim):
                    dq[d] += g * v[d]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def group_entries(grad, index, count, like):
    """The entries (b, j) of `index` grouped by the row r = index[b, j] they name (a counting sort):
    group r is positions starts[r]:starts[r + 1] of entry_row (its b) and entry_grad (its
    grad[b, j], in `like`'s dtype), in (b, j) order."""
    batch, width = index.shape
    starts = np.zeros(count + 1, dtype=np.int64)
    for b in range(batch):
        for j in range(width):
            starts[index[b, j] + 1] += 1
    for r in range(count):
        starts[r + 1] += starts[r]
    fill = starts[:count].copy()
    entry_row = np.empty(batch * width, dtype=np.int64)
    entry_grad = np.empty(batch * width, dtype=like.dtype)
    for b in range(batch):
        for j in range(width):
            r = index[b, j]
            entry_row[fill[r]] = b
            entry_grad[fill[r]] = grad[b, j]
            fill[r] += 1
    return starts, entry_row, entry_grad


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def backward(grad, query, vectors, index, grad_query, grad_vectors, want_query, want_vectors):
    """grad_query[b] = sum_j grad[b, j] vectors[index[b, j]];
    grad_vectors[r] = sum over (b, j) with index[b, j] == r of grad[b, j] query[b].

    `grad_query` arrives zeroed; `grad_vectors` is written whole (a row no entry names gets 0), so
    it needs no zero fill. With `want_vectors` the entries are grouped by row (a counting sort) and
    each row's gradient is summed in a register-sized accumulator and written once: `vectors` and
    `grad_vectors` are each streamed once instead of a zero fill plus a scattered read-modify-write
    of [U, D] (the step is memory-bound). Within a row the entries come in (b, j) order, one thread,
    so the result is the same bit for bit on every run."""
    if not want_vectors:
        query_gradient(grad, vectors, index, grad_query)
        return
    dim = query.shape[1]
    starts, entry_row, entry_grad = group_entries(grad, index, vectors.shape[0], grad_vectors)
    for r in range(vectors.shape[0]):
        out = grad_vectors[r]
        out[:] = 0
        v = vectors[r]
        for e in range(starts[r], starts[r + 1]):
            g = entry_grad[e]
            if g == 0:
                continue
            q = query[entry_row[e]]
            for d in range(dim):
                out[d] += g * q[d]
            if want_query:
                dq = grad_query[entry_row[e]]
                for d in range(dim):
                    dq[d] += g * v[d]
