"""Numba kernels behind `twotower.kernels.samplers` (`cache=True`, `nogil=True`); the public API, the
argument checks and the documentation of each sampler live there.

Membership of an item in a user's positives is answered, in order of preference, by the user's
precomputed row bitmap (`words[woff + item // 64]`, from an `ExclusionIndex`), by a scratch bitmap
marked for the row when the row serves enough draws to pay for marking it, or by a branch-free binary
search in the sorted CSR row. All three give the same answer, so the ids drawn never depend on which ran.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._rng_jit import bits, coin, row_key, uniform_below, unit53


@njit(cache=True, nogil=True, inline="always")
def _contains(indices, start, end, item):
    """Whether `item` is in the sorted slice indices[start:end] (branch-free binary search: the
    halving compiles to a conditional move, so mispredictions do not dominate on random queries)."""
    n = end - start
    if n == 0:
        return False
    base = start
    while n > 1:
        half = n >> 1
        base = base + half if indices[base + half] <= item else base
        n -= half
    return indices[base] == item


@njit(cache=True, nogil=True, inline="always")
def _select_free(indices, start, end, rank):
    """The `rank`-th (0-based) item id NOT in the sorted row indices[start:end].

    Below row value v_i (i-th in the row) lie v_i - i free ids, a non-decreasing sequence; the answer is
    rank + i for the first i with v_i - i > rank.
    """
    lo = 0
    hi = end - start
    while lo < hi:
        mid = (lo + hi) >> 1
        if indices[start + mid] - mid > rank:
            hi = mid
        else:
            lo = mid + 1
    return rank + lo


@njit(cache=True, nogil=True, inline="always")
def _use_bitmap(k, n):
    """Whether n membership tests in a row of k ids are cheaper through a bitmap: marking and clearing
    cost about 2k independent stores, n binary searches about n * log2(k) dependent loads."""
    steps = 1
    while (1 << steps) <= k:
        steps += 1
    return k <= 4 * n * steps


@njit(cache=True, nogil=True, inline="always")
def _mark(bitmap, indices, start, end):
    """Sets the row's bits; a sorted row fills each word in a register before storing it."""
    prev = -1
    acc = np.uint64(0)
    for j in range(start, end):
        v = indices[j]
        w = v >> 6
        if w != prev:
            if prev >= 0:
                bitmap[prev] = acc
            acc = np.uint64(0)
            prev = w
        acc |= np.uint64(1) << np.uint64(v & 63)
    if prev >= 0:
        bitmap[prev] = acc


@njit(cache=True, nogil=True, inline="always")
def _unmark(bitmap, indices, start, end):
    """Zeroes the words `_mark` wrote (the bitmap is all zero between rows): the word span when it is
    shorter than the row, else word by word."""
    lo = indices[start] >> 6
    hi = indices[end - 1] >> 6
    if hi - lo < end - start:
        for w in range(lo, hi + 1):
            bitmap[w] = 0
    else:
        for j in range(start, end):
            bitmap[indices[j] >> 6] = 0


@njit(cache=True, nogil=True, inline="always")
def _marked(bitmap, base, item):
    return (bitmap[base + (item >> 6)] >> np.uint64(item & 63)) & np.uint64(1) != 0


@njit(cache=True, nogil=True)
def _uniform_row(indptr, indices, u, num_items, key, max_tries, words, woff, scratch, out, r):
    """Fills out[r, :] with uniform ids in [0, num_items) not in indices[start:end]; -1 if none is free.

    Draw s uses counters s * (max_tries + 1) + t for rejection tries t < max_tries and
    s * (max_tries + 1) + max_tries for the exact fallback, so every draw is reproducible on its own.
    Rejection runs while at least half the catalogue is free (expected < 2 tries); when all tries of a
    draw fail, or when less than half is free, the draw is an exact rank selection among the free ids
    (a uniform rank in [0, free) mapped to the id by binary search). Both paths are exactly uniform over
    the free ids, so their mixture is too. Membership: the row's precomputed bitmap words[woff:] when
    woff >= 0; else `scratch` (all-zero, ceil(N / 64) words, left zero on return) marked for the row if
    it serves enough draws; else binary search.
    """
    n = out.shape[1]
    start = indptr[u]
    end = indptr[u + 1]
    k = end - start
    free = num_items - k
    if free <= 0:
        for s in range(n):
            out[r, s] = -1
        return
    stride = max_tries + 1
    if k == 0:
        for s in range(n):
            out[r, s] = uniform_below(bits(key, s * stride), num_items)
        return
    if 2 * free < num_items:
        for s in range(n):
            out[r, s] = _select_free(indices, start, end, uniform_below(bits(key, s * stride + max_tries), free))
        return
    # Separate loops per membership test: one shared loop with a test switch runs at half the speed.
    if woff >= 0:
        _uniform_row_bitmap(indptr, indices, u, num_items, key, max_tries, words, woff, out, r)
    elif _use_bitmap(k, n):
        _mark(scratch, indices, start, end)
        _uniform_row_bitmap(indptr, indices, u, num_items, key, max_tries, scratch, 0, out, r)
        _unmark(scratch, indices, start, end)
    else:
        _uniform_row_search(indices, start, end, num_items, key, max_tries, out, r)


@njit(cache=True, nogil=True, inline="always")
def _uniform_row_search(indices, start, end, num_items, key, max_tries, out, r):
    """The rejection loop of `_uniform_row` with membership by binary search in the row."""
    stride = max_tries + 1
    free = num_items - (end - start)
    for s in range(out.shape[1]):
        c = s * stride
        item = -1
        for t in range(max_tries):
            cand = uniform_below(bits(key, c + t), num_items)
            if not _contains(indices, start, end, cand):
                item = cand
                break
        if item < 0:
            item = _select_free(indices, start, end, uniform_below(bits(key, c + max_tries), free))
        out[r, s] = item


@njit(cache=True, nogil=True)
def _uniform_retry(indptr, indices, u, num_items, key, max_tries, bitmap, base, s):
    """Draw s of row u after its first try was rejected: tries 1.. max_tries - 1 against bitmap[base:],
    then the exact fallback (the only place the row's extent is read). Out of line on purpose: inlined,
    its body slows the loop of `_uniform_rows_indexed_single` that rarely needs it."""
    c = s * (max_tries + 1)
    for t in range(1, max_tries):
        cand = uniform_below(bits(key, c + t), num_items)
        if not _marked(bitmap, base, cand):
            return cand
    start = indptr[u]
    end = indptr[u + 1]
    return _select_free(indices, start, end, uniform_below(bits(key, c + max_tries), num_items - (end - start)))


@njit(cache=True, nogil=True, inline="always")
def _uniform_row_bitmap(indptr, indices, u, num_items, key, max_tries, bitmap, base, out, r):
    """The rejection loop of `_uniform_row` for row u with membership from bitmap[base:].

    Two passes with the same counters as one: every draw's first try is generated for the whole row in
    a loop the compiler vectorises (the hash needs no state), then only the rejected ones retry. The
    row's extent is read only for the exact fallback (the bitmap answers everything else)."""
    n = out.shape[1]
    stride = max_tries + 1
    if max_tries > 0:
        for s in range(n):
            out[r, s] = uniform_below(bits(key, s * stride), num_items)
    for s in range(n):
        if max_tries > 0 and not _marked(bitmap, base, out[r, s]):
            continue
        c = s * stride
        item = -1
        for t in range(1, max_tries):
            cand = uniform_below(bits(key, c + t), num_items)
            if not _marked(bitmap, base, cand):
                item = cand
                break
        if item < 0:
            start = indptr[u]
            end = indptr[u + 1]
            item = _select_free(indices, start, end, uniform_below(bits(key, c + max_tries), num_items - (end - start)))
        out[r, s] = item


@njit(cache=True, nogil=True)
def _new_bitmap(num_items):
    return np.zeros((num_items + 63) >> 6, dtype=np.uint64)


@njit(cache=True, nogil=True, inline="always")
def _row_offset(row_words, u):
    """Offset of user u's precomputed bitmap, or -1 (no index, or no bitmap for this row)."""
    if row_words.shape[0] == 0:
        return -1
    return row_words[u]


@njit(cache=True, nogil=True)
def _uniform_kernel(users, indptr, indices, row_words, words, num_items, key, max_tries, out):
    """Uniform rows; an index (non-empty row_words) and a plain CSR get separate loops, each with its
    common case inline (a row with positives and at least half the catalogue free) and the rest through
    the general, out-of-line `_uniform_row`: a shared loop costs the one-draw case about half its speed."""
    if row_words.shape[0] > 0:
        _uniform_rows_indexed(users, indptr, indices, row_words, words, num_items, key, max_tries, out)
    else:
        _uniform_rows_csr(users, indptr, indices, num_items, key, max_tries, out)


@njit(cache=True, nogil=True)
def _uniform_rows_indexed(users, indptr, indices, row_words, words, num_items, key, max_tries, out):
    """Rows with a bitmap (positives, and at least half the catalogue free) draw by `_uniform_row_bitmap`,
    the others by the general `_uniform_row`. One draw per row takes two passes over the batch instead,
    with the same counters: all first tries (pure arithmetic, vectorised across rows), then the bitmap
    tests and retries; 1.7x faster there, slower with more draws per row (the rows leave the cache)."""
    if out.shape[1] == 1 and max_tries > 0:
        _uniform_rows_indexed_single(users, indptr, indices, row_words, words, num_items, key, max_tries, out)
        return
    scratch = _new_bitmap(num_items)
    for r in range(users.shape[0]):
        u = users[r]
        woff = row_words[u]
        if woff >= 0:
            _uniform_row_bitmap(indptr, indices, u, num_items, row_key(key, r), max_tries, words, woff, out, r)
        else:
            _uniform_row(indptr, indices, u, num_items, row_key(key, r), max_tries, words, woff, scratch, out, r)


@njit(cache=True, nogil=True)
def _uniform_rows_indexed_single(users, indptr, indices, row_words, words, num_items, key, max_tries, out):
    for r in range(users.shape[0]):
        out[r, 0] = uniform_below(bits(row_key(key, r), 0), num_items)
    # Rows without a bitmap are listed and redone after, so that no call sits in the hot loop.
    others = np.empty(users.shape[0], dtype=np.int64)
    num_others = 0
    for r in range(users.shape[0]):
        u = users[r]
        woff = row_words[u]
        if woff < 0:
            others[num_others] = r
            num_others += 1
        elif _marked(words, woff, out[r, 0]):
            out[r, 0] = _uniform_retry(indptr, indices, u, num_items, row_key(key, r), max_tries, words, woff, 0)
    scratch = _new_bitmap(num_items)
    for i in range(num_others):
        r = others[i]
        _uniform_row(indptr, indices, users[r], num_items, row_key(key, r), max_tries, words, -1, scratch, out, r)


@njit(cache=True, nogil=True)
def _uniform_rows_csr(users, indptr, indices, num_items, key, max_tries, out):
    n = out.shape[1]
    scratch = _new_bitmap(num_items)
    for r in range(users.shape[0]):
        u = users[r]
        start = indptr[u]
        end = indptr[u + 1]
        k = end - start
        if k == 0:  # nothing to exclude (also every row of a call without `exclude`)
            rk = row_key(key, r)
            for s in range(n):
                out[r, s] = uniform_below(bits(rk, s * (max_tries + 1)), num_items)
        elif 2 * (num_items - k) >= num_items and not _use_bitmap(k, n):
            _uniform_row_search(indices, start, end, num_items, row_key(key, r), max_tries, out, r)
        else:
            _uniform_row(indptr, indices, u, num_items, row_key(key, r), max_tries, scratch, -1, scratch, out, r)


@njit(cache=True, nogil=True)
def _build_row_bitmaps(indptr, indices, num_items, min_length):
    """Bitmaps of ceil(N / 64) words for the rows with at least `min_length` ids and at least half the
    catalogue free (fuller rows never reject: they take the exact rank selection): (offsets [U], words)."""
    num_rows = indptr.shape[0] - 1
    width = (num_items + 63) >> 6
    offsets = np.full(num_rows, -1, dtype=np.int64)
    total = 0
    for u in range(num_rows):
        k = indptr[u + 1] - indptr[u]
        if k > 0 and k >= min_length and 2 * (num_items - k) >= num_items:
            offsets[u] = total
            total += width
    words = np.zeros(total, dtype=np.uint64)
    for u in range(num_rows):
        base = offsets[u]
        if base >= 0:
            for j in range(indptr[u], indptr[u + 1]):
                v = indices[j]
                words[base + (v >> 6)] |= np.uint64(1) << np.uint64(v & 63)
    return offsets, words


@njit(cache=True, nogil=True, inline="always")
def _alias_draw(prob, alias, x):
    i = uniform_below(x, prob.shape[0])
    if coin(x) < prob[i]:
        return i
    return alias[i]


@njit(cache=True, nogil=True)
def _complement_cumsum(indices, start, end, p, cum, ids):
    """Writes the ids not in the sorted row and the running sum of their p; returns (count, total)."""
    m = 0
    total = 0.0
    j = start
    for i in range(p.shape[0]):
        if j < end and indices[j] == i:
            j += 1
            continue
        total += p[i]
        cum[m] = total
        ids[m] = i
        m += 1
    return m, total


@njit(cache=True, nogil=True)
def _popularity_kernel(users, indptr, indices, row_words, words, prob, alias, p, mass, key, max_tries, out):
    """Alias draws per row, rejecting the row's positives; exact fallback like `_uniform_row`.

    Rejection runs while the positives hold at most 3/4 of the probability mass (then 16 tries all fail
    for 1% of draws at worst); otherwise, or after `max_tries` failures, the draw inverts the cumulative
    distribution of the free ids (built once per row, O(N), only for rows that need it). Rows whose free
    ids all have zero weight get -1. `mass` [U] holds each row's positive mass (precomputed by
    `_row_mass` over all rows), or is empty: then it is summed here, row by row.
    """
    n = out.shape[1]
    stride = max_tries + 1
    cum = np.empty(0, dtype=np.float64)
    ids = np.empty(0, dtype=np.int64)
    scratch = _new_bitmap(p.shape[0])
    for r in range(users.shape[0]):
        rk = row_key(key, r)
        u = users[r]
        start = indptr[u]
        end = indptr[u + 1]
        if start == end:
            for s in range(n):
                out[r, s] = _alias_draw(prob, alias, bits(rk, s * stride))
            continue
        if mass.shape[0] > 0:
            taken = mass[u]
        else:
            taken = 0.0
            for j in range(start, end):
                taken += p[indices[j]]
        reject = 1.0 - taken >= 0.25
        bitmap = words
        base = _row_offset(row_words, u)
        marked = reject and base < 0 and _use_bitmap(end - start, n)
        if marked:
            _mark(scratch, indices, start, end)
            bitmap = scratch
            base = 0
        m = -1
        total = 0.0
        for s in range(n):
            c = s * stride
            item = -1
            if reject and base >= 0:  # separate loops per membership test, as in `_uniform_row`
                for t in range(max_tries):
                    cand = _alias_draw(prob, alias, bits(rk, c + t))
                    if not _marked(bitmap, base, cand):
                        item = cand
                        break
            elif reject:
                for t in range(max_tries):
                    cand = _alias_draw(prob, alias, bits(rk, c + t))
                    if not _contains(indices, start, end, cand):
                        item = cand
                        break
            if item < 0:
                if m < 0:
                    if cum.shape[0] == 0:
                        cum = np.empty(p.shape[0], dtype=np.float64)
                        ids = np.empty(p.shape[0], dtype=np.int64)
                    m, total = _complement_cumsum(indices, start, end, p, cum, ids)
                if m > 0 and total > 0.0:
                    target = unit53(bits(rk, c + max_tries)) * total
                    k = np.searchsorted(cum[:m], target, side="right")
                    if k >= m:
                        k = m - 1
                    item = ids[k]
            out[r, s] = item
        if marked:
            _unmark(scratch, indices, start, end)


@njit(cache=True, nogil=True)
def _hard_kernel(users, candidates, indptr, indices, row_words, words, lo, hi, num_items, key, max_tries, replace, out):
    """Per row: eligible = candidates[r, lo:hi] minus padding (-1) and the user's positives; draws from it
    (with replacement, or a partial Fisher-Yates shuffle without); rows with nothing eligible fall back to
    `_uniform_row` with the same row stream."""
    n = out.shape[1]
    pool = np.empty(max(hi - lo, 1), dtype=np.int64)
    scratch = _new_bitmap(num_items)
    for r in range(users.shape[0]):
        rk = row_key(key, r)
        u = users[r]
        start = indptr[u]
        end = indptr[u + 1]
        woff = _row_offset(row_words, u)
        e = 0
        if woff >= 0:
            for c in range(lo, hi):
                item = candidates[r, c]
                if item >= 0 and not _marked(words, woff, item):
                    pool[e] = item
                    e += 1
        else:
            for c in range(lo, hi):
                item = candidates[r, c]
                if item >= 0 and not _contains(indices, start, end, item):
                    pool[e] = item
                    e += 1
        if e == 0:
            _uniform_row(indptr, indices, u, num_items, rk, max_tries, words, woff, scratch, out, r)
            continue
        for s in range(n):
            if replace or s >= e:
                out[r, s] = pool[uniform_below(bits(rk, s), e)]
            else:
                j = s + uniform_below(bits(rk, s), e - s)
                tmp = pool[s]
                pool[s] = pool[j]
                pool[j] = tmp
                out[r, s] = pool[s]


@njit(cache=True, nogil=True)
def _shared_uniform_kernel(num_items, key, out):
    rk = row_key(key, 0)
    for s in range(out.shape[0]):
        out[s] = uniform_below(bits(rk, s), num_items)


@njit(cache=True, nogil=True)
def _shared_alias_kernel(prob, alias, key, out):
    rk = row_key(key, 0)
    for s in range(out.shape[0]):
        out[s] = _alias_draw(prob, alias, bits(rk, s))


@njit(cache=True, nogil=True)
def _vose_kernel(p, prob, alias):
    """Vose's alias method: O(N), stacks popped last-in first-out (samplers_eager does the same)."""
    n = p.shape[0]
    scaled = p * n
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        nl -= 1
        g = large[nl]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            small[ns] = g
            ns += 1
        else:
            large[nl] = g
            nl += 1
    # What is left is 1 up to rounding: keep it whole.
    while nl > 0:
        nl -= 1
        prob[large[nl]] = 1.0
        alias[large[nl]] = large[nl]
    while ns > 0:
        ns -= 1
        prob[small[ns]] = 1.0
        alias[small[ns]] = small[ns]


@njit(cache=True, nogil=True)
def _check_rows(rows, indptr, indices, num_items):
    """First problem in the given CSR rows: (code, row) with code 0 ok, 1 bad indptr, 2 id out of
    range, 3 row not strictly increasing."""
    nnz = indices.shape[0]
    for r in rows:
        start = indptr[r]
        end = indptr[r + 1]
        if start < 0 or end < start or end > nnz:
            return 1, r
        prev = -1
        for j in range(start, end):
            v = indices[j]
            if v < 0 or v >= num_items:
                return 2, r
            if v <= prev:
                return 3, r
            prev = v
    return 0, -1


@njit(cache=True, nogil=True)
def _row_mass(users, indptr, indices, p):
    out = np.empty(users.shape[0], dtype=np.float64)
    for r in range(users.shape[0]):
        u = users[r]
        taken = 0.0
        for j in range(indptr[u], indptr[u + 1]):
            taken += p[indices[j]]
        out[r] = taken
    return out
