"""Eager NumPy `samplers`, with the same signatures and the same results as the Numba kernels.

Each function reads the same counter-based random words as its kernel (see `_rng`), so for the same
arguments it returns the same ids, bit for bit: the vectorised NumPy baseline of the benchmark. Tests
check both against the plain-loop oracles in `tests/kernels/sampler_oracles.py`. Rejection is
vectorised over all (row, draw) pairs, with membership tested by one `np.searchsorted` in the history
flattened to sorted keys `row * N + item`. Only rarely taken paths (inverse-CDF fallback, hard
negatives, Vose's build) loop in Python.
Argument checking is the kernels' job; these assume valid input.
"""

from __future__ import annotations

import numpy as np

from ._rng import bits_np, coin_np, row_keys_np, seed_key, uniform_below_np, unit53_np
from .samplers import DEFAULT_MAX_TRIES, AliasTable, ExclusionIndex

__all__ = [
    "build_alias_table",
    "hard_negatives",
    "popularity_negatives",
    "shared_negatives",
    "uniform_negatives",
]


def _history(exclude, batch: int, users: np.ndarray):
    if exclude is None:
        return np.zeros(batch, np.int64), np.zeros(2, np.int64), np.zeros(0, np.int64)
    indptr, indices = (exclude.indptr, exclude.indices) if isinstance(exclude, ExclusionIndex) else exclude
    return np.asarray(users, np.int64), np.asarray(indptr, np.int64), np.asarray(indices, np.int64)


def _flat_keys(indptr: np.ndarray, indices: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(row of each entry, globally sorted keys row * N + item)."""
    row_of = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
    return row_of, row_of * num_items + indices


def _member(flat: np.ndarray, query: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(flat, query)
    if not flat.size:
        return np.zeros(query.shape, bool)
    return (pos < flat.size) & (flat[np.minimum(pos, max(flat.size - 1, 0))] == query)


def _reject(out, pending, keys, users, flat, num_items, stride, max_tries, draw):
    """Rejection rounds over all pending (row, slot) pairs at once; accepted draws are written to `out`."""
    for t in range(max_tries):
        rr, ss = np.nonzero(pending)
        if rr.size == 0:
            break
        cand = draw(bits_np(keys[rr], ss * stride + t))
        ok = ~_member(flat, users[rr] * num_items + cand)
        out[rr[ok], ss[ok]] = cand[ok]
        pending[rr[ok], ss[ok]] = False


def uniform_negatives(
    users, num_items, num_negatives, *, exclude=None, seed, max_tries=DEFAULT_MAX_TRIES, validate=True
):
    """Reference of `samplers.uniform_negatives` (same ids)."""
    batch = np.asarray(users).size
    users, indptr, indices = _history(exclude, batch, users)
    n, stride = num_negatives, max_tries + 1
    keys = row_keys_np(seed_key(seed), np.arange(batch))
    free = num_items - (indptr[users + 1] - indptr[users])
    row_of, flat = _flat_keys(indptr, indices, num_items)
    out = np.full((batch, n), -1, dtype=np.int64)
    pending = np.repeat(((2 * free >= num_items) & (free > 0))[:, None], n, axis=1)
    _reject(out, pending, keys, users, flat, num_items, stride, max_tries, lambda x: uniform_below_np(x, num_items))
    # Exact fallback: the rank-th free id is rank + i for the first row position i with v_i - i > rank;
    # g = row * (N + 1) + v_i - i is globally sorted, so one searchsorted finds i for every draw.
    rr, ss = np.nonzero((out < 0) & (free > 0)[:, None])
    rank = uniform_below_np(bits_np(keys[rr], ss * stride + max_tries), free[rr])
    g = row_of * (num_items + 1) + indices - (np.arange(indices.size) - indptr[row_of])
    u = users[rr]
    out[rr, ss] = rank + np.searchsorted(g, u * (num_items + 1) + rank, side="right") - indptr[u]
    return out


def build_alias_table(weights) -> AliasTable:
    """Reference of `samplers.build_alias_table`: Vose's method, same stack order, in Python."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.max()  # as the kernel: no overflow of the sum for weights near 1e308
    p = w / w.sum()
    n = p.size
    scaled = p * n
    prob = np.empty(n)
    alias = np.empty(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if not scaled[i] < 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    for i in large + small:
        prob[i], alias[i] = 1.0, i
    return AliasTable(prob=prob, alias=alias, p=p)


def _alias_np(table: AliasTable, x: np.ndarray) -> np.ndarray:
    i = uniform_below_np(x, table.p.size)
    return np.where(coin_np(x) < table.prob[i], i, table.alias[i])


def popularity_negatives(
    users, table, num_negatives, *, exclude=None, seed, max_tries=DEFAULT_MAX_TRIES, validate=True, positive_mass=None
):
    """Reference of `samplers.popularity_negatives` (same ids; it sums the masses itself, so
    `positive_mass` is accepted for the signature and not read)."""
    batch = np.asarray(users).size
    users, indptr, indices = _history(exclude, batch, users)
    n, stride, num_items = num_negatives, max_tries + 1, table.p.size
    keys = row_keys_np(seed_key(seed), np.arange(batch))
    # Mass of each row's positives, summed left to right like the kernel (same rounding).
    mass = np.array([
        np.cumsum(table.p[indices[indptr[u] : indptr[u + 1]]])[-1] if indptr[u + 1] > indptr[u] else 0.0 for u in users
    ])
    _, flat = _flat_keys(indptr, indices, num_items)
    out = np.full((batch, n), -1, dtype=np.int64)
    empty = indptr[users + 1] == indptr[users]  # no positives: plain alias draws, whatever max_tries
    out[empty] = _alias_np(table, bits_np(keys[empty][:, None], np.arange(n)[None, :] * stride))
    pending = np.repeat(((1.0 - mass >= 0.25) & ~empty)[:, None], n, axis=1)
    _reject(out, pending, keys, users, flat, num_items, stride, max_tries, lambda x: _alias_np(table, x))
    for r in np.unique(np.nonzero(out < 0)[0]):
        free = np.setdiff1d(np.arange(num_items), indices[indptr[users[r]] : indptr[users[r] + 1]])
        cum = np.cumsum(table.p[free])
        if free.size == 0 or not cum[-1] > 0.0:
            continue
        for s in np.nonzero(out[r] < 0)[0]:
            target = unit53_np(bits_np(keys[r : r + 1], np.array([s * stride + max_tries])))[0] * cum[-1]
            out[r, s] = free[min(np.searchsorted(cum, target, side="right"), free.size - 1)]
    return out


def shared_negatives(num_samples, *, num_items=None, table=None, seed):
    """Reference of `samplers.shared_negatives` (same ids and log_q)."""
    x = bits_np(row_keys_np(seed_key(seed), np.zeros(1))[0:1], np.arange(num_samples))
    if table is None:
        return uniform_below_np(x, num_items), np.full(num_samples, -np.log(num_items), dtype=np.float32)
    ids = _alias_np(table, x)
    return ids, np.log(table.p[ids]).astype(np.float32)


def hard_negatives(
    users,
    candidates,
    num_negatives,
    *,
    num_items,
    exclude=None,
    rank_range=(0, None),
    replace=True,
    seed,
    max_tries=DEFAULT_MAX_TRIES,
    validate=True,
):
    """Reference of `samplers.hard_negatives` (same ids)."""
    cand = np.asarray(candidates, dtype=np.int64)
    batch = cand.shape[0]
    users_k, indptr, indices = _history(exclude, batch, users)
    hi = cand.shape[1] if rank_range[1] is None else min(rank_range[1], cand.shape[1])
    lo = min(rank_range[0], hi)
    keys = row_keys_np(seed_key(seed), np.arange(batch))
    fallback = uniform_negatives(users, num_items, num_negatives, exclude=exclude, seed=seed, max_tries=max_tries)
    out = np.empty((batch, num_negatives), dtype=np.int64)
    for r in range(batch):
        window = cand[r, lo:hi]
        positives = indices[indptr[users_k[r]] : indptr[users_k[r] + 1]]
        pool = window[(window >= 0) & ~np.isin(window, positives)].copy()
        e = pool.size
        if e == 0:
            out[r] = fallback[r]
            continue
        x = bits_np(keys[r : r + 1], np.arange(num_negatives))
        for s in range(num_negatives):
            if replace or s >= e:
                out[r, s] = pool[uniform_below_np(x[s : s + 1], e)[0]]
            else:
                j = s + uniform_below_np(x[s : s + 1], e - s)[0]
                pool[s], pool[j] = pool[j], pool[s]
                out[r, s] = pool[s]
    return out
