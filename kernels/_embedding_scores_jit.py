"""Numba kernels behind `twotower.kernels.embedding_scores` (float32 and float64; `cache=True`,
`nogil=True`). Checks, dispatch and documentation live in `embedding_scores.py`.

Sums run in the storage dtype (`zero` is a 0 of that dtype) so that the loops over D vectorise."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._gather_scores_jit import forward as scores
from ._gather_scores_jit import group_entries, query_gradient
from ._prefetch_jit import PREFETCH_DISTANCE, prefetch_row


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def gather_normalized(weight, ids, normalize, eps, rows, scale, zero):
    """rows[u] = weight[ids[u]] * scale[u] with scale[u] = 1 / max(||weight[ids[u]]||, eps) when
    normalising (else 1). Rows are requested PREFETCH_DISTANCE iterations ahead (`_prefetch_jit`):
    the gather is latency-bound."""
    dim = weight.shape[1]
    count = ids.shape[0]
    for u in range(count):
        if u + PREFETCH_DISTANCE < count:  # the rows are scattered over the table: ask ahead
            prefetch_row(weight, ids[u + PREFETCH_DISTANCE])
        row = weight[ids[u]]
        s = 1.0
        if normalize:
            acc = zero
            for d in range(dim):
                acc += row[d] * row[d]
            s = 1.0 / max(np.sqrt(np.float64(acc)), eps)
        scale[u] = s
        sd = rows.dtype.type(s)
        out_row = rows[u]
        for d in range(dim):
            out_row[d] = row[d] * sd


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def forward(query, weight, ids, index, normalize, eps, out, rows, scale, zero):
    """rows[u] = f(weight[ids[u]]) (`gather_normalized`); out[b, j] = query[b] . rows[index[b, j]]
    (`gather_scores`' pass).

    The table rows are copied once into the compact `rows` [U, D], in the order of `ids`: the
    scoring pass and backward then read a 3 MB array (the positives, first in a batch's `ids`, in
    sequence) instead of chasing two indirections into the whole table."""
    gather_normalized(weight, ids, normalize, eps, rows, scale, zero)
    scores(query, rows, index, out, zero)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def backward(grad, query, rows, index, scale, normalize, eps, want_query, want_weight, grad_query, values, zero):
    """grad_query[b] += sum_j grad[b, j] rows[index[b, j]];
    values[u] = the gradient of table row ids[u] through position u:
    (G_u - y_u (G_u . y_u)) * scale[u] when normalising a row whose norm exceeds eps, else
    G_u * scale[u], with y_u = rows[u] and G_u = sum over (b, j) naming u of grad[b, j] query[b].

    `grad_query` arrives zeroed; `values` [U, D] is written whole. Entries are grouped by u (the
    counting sort of `gather_scores`' backward), so each G_u is summed once in a D-sized accumulator
    and finished in place: no [U, D] intermediate is written. Within a group entries come in (b, j)
    order, one thread: the result is the same bit for bit on every run."""
    if not want_weight:
        query_gradient(grad, rows, index, grad_query)
        return
    dim = query.shape[1]
    starts, entry_row, entry_grad = group_entries(grad, index, rows.shape[0], values)
    limit = 1.0 / eps
    for u in range(rows.shape[0]):
        out = values[u]
        y = rows[u]
        out[:] = 0
        for e in range(starts[u], starts[u + 1]):
            g = entry_grad[e]
            if g == 0:
                continue
            q = query[entry_row[e]]
            for d in range(dim):
                out[d] += g * q[d]
            if want_query:
                dq = grad_query[entry_row[e]]
                for d in range(dim):
                    dq[d] += g * y[d]
        through_normalization(out, y, scale[u], normalize, limit, zero)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
def through_normalization(grad, y, scale, normalize, limit, zero):
    """In place: the gradient `grad` [D] of y = f(x) taken back to x, with y [D] and scale =
    1 / max(||x||, eps): (grad - y (grad . y)) * scale when normalising a row whose norm exceeds eps
    (scale < limit = 1 / eps), else grad * scale (the derivative of the clamped form, as PyTorch's)."""
    s = grad.dtype.type(scale)
    if normalize and scale < limit:  # ||x|| > eps: remove the component along y
        dot = zero
        for d in range(grad.shape[0]):
            dot += grad[d] * y[d]
        for d in range(grad.shape[0]):
            grad[d] = (grad[d] - y[d] * dot) * s
    else:
        for d in range(grad.shape[0]):
            grad[d] *= s
