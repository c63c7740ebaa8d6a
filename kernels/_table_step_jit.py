"""Numba kernels behind `twotower.kernels.table_step` (float32 and float64; `cache=True`,
`nogil=True`). Checks, dispatch and documentation live in `table_step.py`.

Sums run in the storage dtype (`zero` is a 0 of that dtype) so that the loops over D vectorise;
the sum of squares of the gradient (for clipping) runs in float64."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._adam_jit import adam_row, ascending_rows
from ._embedding_scores_jit import gather_normalized, through_normalization
from ._gather_scores_jit import forward as scores_pass
from ._gather_scores_jit import group_entries, query_gradient


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def forward(query_table, item_table, query_ids, item_ids, index, normalize, eps,
            query, query_scale, items, item_scale, scores, zero):
    """query[b] = f(query_table[query_ids[b]]), items[u] = f(item_table[item_ids[u]]) (with their
    scales 1 / max(||x||, eps)), scores[b, j] = query[b] . items[index[b, j]]."""
    gather_normalized(query_table, query_ids, normalize, eps, query, query_scale, zero)
    gather_normalized(item_table, item_ids, normalize, eps, items, item_scale, zero)
    scores_pass(query, items, index, scores, zero)


@njit(cache=True, nogil=True, error_model="numpy")
def _link(ids, slots, following, order):
    """Chains the positions of each distinct table row: slots[r] = the first position p with
    ids[p] == r, following[p] = the next such position (-1 ends the chain). Returns the number of
    distinct rows, or -1 when `slots` was not all -1 for these rows (it then holds this call's
    marks too: the caller resets it).

    Rows are then visited in ascending order (neighbouring rows share pages and the prefetcher
    streams them): order[:count] is put in that order by `ascending_rows` (which also finds marks
    that are not this call's); `backward` scans a densely touched table's slots itself instead
    (8 count >= R, the same test as `ascending_rows`')."""
    count = 0
    for p in range(ids.shape[0] - 1, -1, -1):  # backwards, so that each chain runs forwards
        r = ids[p]
        first = slots[r]
        if first == -1:
            order[count] = r
            count += 1
            following[p] = -1
        elif first <= p or ids[first] != r:
            return -1  # not a mark of this call
        else:
            following[p] = first
        slots[r] = p
    return count if ascending_rows(order, count, slots) else -1


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def backward(grad, query, query_scale, items, item_scale, index, query_ids, item_ids, normalize, eps,
             query_table, query_avg, query_avg_sq, query_coefficients, query_slots,
             item_table, item_avg, item_avg_sq, item_coefficients, item_slots, apply, zero):
    """The gradient of both tables given grad = dL/dscores [B, C], one table row at a time, in
    ascending row order: G_r = sum over the positions naming row r of their gradient (repeats
    summed, as a coalesced sparse gradient), taken through the normalisation. With `apply`, each
    row then takes its Adam(W) step (`adam_row`, with that table's coefficients) as soon as its G_r
    is complete: no gradient array is written. Without `apply`, nothing is updated and the sum of
    squares of every G_r (both tables) is returned: what gradient clipping needs first. Returns
    -1.0 when a slots array was not all -1 (nothing updated then), else that sum (0 with `apply`).
    The slots come back all -1.

    Items: the entries (b, j) are grouped by the position u = index[b, j] they name (a counting
    sort), G_u = sum grad[b, j] query[b]. Queries: dQ[b] = sum_j grad[b, j] items[index[b, j]],
    taken through the normalisation row by row (it is linear: summing repeats after is the same)."""
    dim = query.shape[1]
    limit = 1.0 / eps
    item_order = np.empty(item_ids.shape[0], dtype=np.int64)
    item_next = np.empty(item_ids.shape[0], dtype=np.int64)
    query_order = np.empty(query_ids.shape[0], dtype=np.int64)
    query_next = np.empty(query_ids.shape[0], dtype=np.int64)
    item_count = _link(item_ids, item_slots, item_next, item_order)
    query_count = _link(query_ids, query_slots, query_next, query_order) if item_count >= 0 else -1
    if item_count < 0 or query_count < 0:
        return -1.0
    starts, entry_row, entry_grad = group_entries(grad, index, items.shape[0], items)
    query_grad = np.zeros_like(query)
    query_gradient(grad, items, index, query_grad)
    for b in range(query_grad.shape[0]):
        through_normalization(query_grad[b], query[b], query_scale[b], normalize, limit, zero)
    acc = np.empty(dim, dtype=query.dtype)
    total = 0.0
    # Rows in ascending order (see `_link`): a dense table scanned through its slots, a sparse one
    # through the sorted order. The loop body is written out for each: a loop that picked its row
    # through a flag, or called the body as a function, ran 30-50% slower (Numba/LLVM no longer
    # vectorised it as well), on a step that is mostly this loop.
    if 8 * item_count >= item_slots.shape[0]:
        for r in range(item_slots.shape[0]):
            u = item_slots[r]
            if u == -1:
                continue
            item_slots[r] = -1
            acc[:] = 0
            first = u
            while u != -1:
                for e in range(starts[u], starts[u + 1]):
                    g = entry_grad[e]
                    q = query[entry_row[e]]
                    for d in range(dim):
                        acc[d] += g * q[d]
                first = u
                u = item_next[u]
            # y = f(table row r) from the row itself (about to be stepped, so soon in cache), not
            # from `items`: a 3 MB array less to read. The same float32 product the forward took.
            scale = item_scale[first]
            if normalize and scale < limit:
                sd = acc.dtype.type(scale)
                dot = zero
                for d in range(dim):
                    dot += acc[d] * (item_table[r, d] * sd)
                for d in range(dim):
                    acc[d] = (acc[d] - (item_table[r, d] * sd) * dot) * sd
            else:
                sd = acc.dtype.type(scale)
                for d in range(dim):
                    acc[d] *= sd
            if apply:
                adam_row(item_table, item_avg, item_avg_sq, r, acc, item_coefficients)
            else:
                for d in range(dim):
                    total += np.float64(acc[d]) * np.float64(acc[d])
    else:
        for c in range(item_count):
            r = item_order[c]
            u = item_slots[r]
            if u == -1:
                continue
            item_slots[r] = -1
            acc[:] = 0
            first = u
            while u != -1:
                for e in range(starts[u], starts[u + 1]):
                    g = entry_grad[e]
                    q = query[entry_row[e]]
                    for d in range(dim):
                        acc[d] += g * q[d]
                first = u
                u = item_next[u]
            # y = f(table row r) from the row itself (about to be stepped, so soon in cache), not
            # from `items`: a 3 MB array less to read. The same float32 product the forward took.
            scale = item_scale[first]
            if normalize and scale < limit:
                sd = acc.dtype.type(scale)
                dot = zero
                for d in range(dim):
                    dot += acc[d] * (item_table[r, d] * sd)
                for d in range(dim):
                    acc[d] = (acc[d] - (item_table[r, d] * sd) * dot) * sd
            else:
                sd = acc.dtype.type(scale)
                for d in range(dim):
                    acc[d] *= sd
            if apply:
                adam_row(item_table, item_avg, item_avg_sq, r, acc, item_coefficients)
            else:
                for d in range(dim):
                    total += np.float64(acc[d]) * np.float64(acc[d])
    if 8 * query_count >= query_slots.shape[0]:
        for r in range(query_slots.shape[0]):
            b = query_slots[r]
            if b == -1:
                continue
            query_slots[r] = -1
            row = query_grad[b]
            if query_next[b] != -1:  # repeated in the batch: the positions' gradients summed
                acc[:] = 0
                while b != -1:
                    for d in range(dim):
                        acc[d] += query_grad[b, d]
                    b = query_next[b]
                row = acc
            if apply:
                adam_row(query_table, query_avg, query_avg_sq, r, row, query_coefficients)
            else:
                for d in range(dim):
                    total += np.float64(row[d]) * np.float64(row[d])
    else:
        for c in range(query_count):
            r = query_order[c]
            b = query_slots[r]
            if b == -1:
                continue
            query_slots[r] = -1
            row = query_grad[b]
            if query_next[b] != -1:  # repeated in the batch: the positions' gradients summed
                acc[:] = 0
                while b != -1:
                    for d in range(dim):
                        acc[d] += query_grad[b, d]
                    b = query_next[b]
                row = acc
            if apply:
                adam_row(query_table, query_avg, query_avg_sq, r, row, query_coefficients)
            else:
                for d in range(dim):
                    total += np.float64(row[d]) * np.float64(row[d])
    return total
