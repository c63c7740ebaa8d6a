"""Numba kernels behind `twotower.kernels.gather_scores` (float32 and float64; `cache=True`,
`nogil=True`). Checks, dispatch and documentation live in `gather_scores.py`.

Sums run in the storage dtype (`zero` is a 0 of that dtype), so the loops over D vectorise; float32
results differ from a float64 computation by about 1e-7 relative per term."""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def forward(query, vectors, index, out, zero):
    """out[b, j] = query[b] . vectors[index[b, j]]."""
    batch, dim = query.shape
    width = index.shape[1]
    for b in range(batch):
        q = query[b]
        for j in range(width):
            v = vectors[index[b, j]]
            acc = zero
            for d in range(dim):
                acc += q[d] * v[d]
            out[b, j] = acc


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def backward(grad, query, vectors, index, grad_query, grad_vectors, want_query, want_vectors):
    """grad_query[b] = sum_j grad[b, j] vectors[index[b, j]];
    grad_vectors[r] = sum over (b, j) with index[b, j] == r of grad[b, j] query[b].

    Both outputs arrive zeroed. Rows are visited in order (b, then j), one thread, so the result is
    the same bit for bit on every run."""
    batch, dim = query.shape
    width = index.shape[1]
    for b in range(batch):
        q = query[b]
        dq = grad_query[b]
        for j in range(width):
            g = grad[b, j]
            if g == 0:
                continue
            row = index[b, j]
            if want_query:
                v = vectors[row]
                for d in range(dim):
                    dq[d] += g * v[d]
            if want_vectors:
                dv = grad_vectors[row]
                for d in range(dim):
                    dv[d] += g * q[d]
