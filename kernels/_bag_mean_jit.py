"""Numba kernels behind `twotower.kernels.bag_mean` (float32 and float64; `cache=True`,
`nogil=True`). Checks, dispatch and documentation live in `bag_mean.py`."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._prefetch_jit import prefetch_row


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def forward(table, values, offsets, keep, use_keep, out, inverse_counts):
    """out[b] = sum of the kept rows of bag b / their number; inverse_counts[b] = 1 / max(number, 1)."""
    batch, dim = out.shape
    for b in range(batch):
        acc = out[b]
        acc[:] = 0
        count = 0
        end = offsets[b + 1]
        for e in range(offsets[b], end):
            if e + 4 < end:  # bag rows are scattered over the table: ask a few ahead
                prefetch_row(table, values[e + 4])
            if use_keep and not keep[e]:
                continue
            row = table[values[e]]
            for d in range(dim):
                acc[d] += row[d]
            count += 1
        scale = 1.0 / max(count, 1)
        inverse_counts[b] = scale
        for d in range(dim):
            acc[d] *= scale


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def distinct_rows(values, offsets, keep, use_keep, slots):
    """The distinct table rows of the kept entries in order of first appearance, and each kept
    entry's position among them (-1 for a dropped one). `slots` [V] is all -1 on entry and on exit."""
    entry_slot = np.full(values.shape[0], -1, dtype=np.int64)
    rows = np.empty(values.shape[0], dtype=np.int64)
    count = 0
    for e in range(values.shape[0]):
        if use_keep and not keep[e]:
            continue
        r = values[e]
        if slots[r] < 0:
            slots[r] = count
            rows[count] = r
            count += 1
        entry_slot[e] = slots[r]
    for i in range(count):
        slots[rows[i]] = -1
    return rows[:count], entry_slot


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def backward_rows(grad, offsets, entry_slot, inverse_counts, grad_rows):
    """grad_rows[s] = sum over kept entries e naming distinct row s of grad[bag(e)] / size(bag(e)).
    `grad_rows` arrives zeroed; one thread, entries in order, so the sums are the same on every run."""
    batch, dim = grad.shape
    for b in range(batch):
        g = grad[b]
        scale = inverse_counts[b]
        for e in range(offsets[b], offsets[b + 1]):
            s = entry_slot[e]
            if s < 0:
                continue
            out = grad_rows[s]
            for d in range(dim):
                out[d] += scale * g[d]
