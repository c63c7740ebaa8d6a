"""Negative samplers for two-tower training: Numba kernels over plain arrays (`cache=True`, `nogil=True`).

Positives to exclude come as a CSR history `exclude=(indptr, indices)`: `indptr` int64 `[U + 1]`,
`indices` int32 (or int64) with each row sorted ascending and unique (what `twotower.data` builds; check
a history once with `validate_csr`). Every sampler is a deterministic function of its `seed`: batch row `r`
reads its own counter-based stream (see `_rng`), so results do not depend on threads or timing, and the
NumPy references in `twotower.kernels.samplers_reference` give the same ids bit for bit.

Samplers:
    uniform_negatives     uniform over items, optionally excluding each user's positives (rejection +
                          exact rank-selection fallback)
    popularity_negatives  proportional to count**alpha through a Vose alias table (O(N) build, O(1) draw),
                          optionally excluding positives
    shared_negatives      M ids drawn once per batch (uniform or alias) with their log sampling probability
    hard_negatives        from per-user candidate lists (e.g. top-K of the current model), minus positives,
                          optionally from ranks [a, b) only (semi-hard)
    StreamingFrequencyEstimator  streaming item-frequency estimate for logQ (Yi et al., RecSys 2019)

Example:
    >>> import numpy as np
    >>> from twotower.kernels.samplers import uniform_negatives
    >>> indptr = np.array([0, 2, 3], dtype=np.int64); indices = np.array([1, 3, 0], dtype=np.int32)
    >>> neg = uniform_negatives(np.array([0, 1, 0]), 5, 4, exclude=(indptr, indices), seed=0)
    >>> neg.shape, bool(np.isin(neg[0], [1, 3]).any())
    ((3, 4), False)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from numba import njit

from ._rng import seed_key
from ._rng_jit import bits, bounded, coin, row_key, unit53
from .frequency import StreamingFrequencyEstimator

__all__ = [
    "AliasTable",
    "StreamingFrequencyEstimator",
    "build_alias_table",
    "hard_negatives",
    "popularity_negatives",
    "popularity_weights",
    "shared_negatives",
    "uniform_negatives",
    "validate_csr",
]

DEFAULT_MAX_TRIES = 16
_MAX_ITEMS = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


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
def _marked(bitmap, item):
    return (bitmap[item >> 6] >> np.uint64(item & 63)) & np.uint64(1) != 0


@njit(cache=True, nogil=True)
def _uniform_row(indices, start, end, num_items, key, max_tries, bitmap, out, r):
    """Fills out[r, :] with uniform ids in [0, num_items) not in indices[start:end]; -1 if none is free.

    Draw s uses counters s * (max_tries + 1) + t for rejection tries t < max_tries and
    s * (max_tries + 1) + max_tries for the exact fallback, so every draw is reproducible on its own.
    Rejection runs while at least half the catalogue is free (expected < 2 tries); when all tries of a
    draw fail, or when less than half is free, the draw is an exact rank selection among the free ids
    (a uniform rank in [0, free) mapped to the id by binary search). Both paths are exactly uniform over
    the free ids, so their mixture is too. Membership during rejection is a binary search in the row,
    or, when the row serves enough draws to pay for it, a bit test in `bitmap` (all-zero scratch of
    ceil(N / 64) words, restored to zero on return); both give the same answer, hence the same ids.
    """
    n = out.shape[1]
    k = end - start
    free = num_items - k
    if free <= 0:
        for s in range(n):
            out[r, s] = -1
        return
    stride = max_tries + 1
    if k == 0:
        for s in range(n):
            out[r, s] = bounded(bits(key, s * stride), num_items)
        return
    if 2 * free < num_items:
        for s in range(n):
            out[r, s] = _select_free(indices, start, end, bounded(bits(key, s * stride + max_tries), free))
        return
    if _use_bitmap(k, n):
        _mark(bitmap, indices, start, end)
        for s in range(n):
            c = s * stride
            item = -1
            for t in range(max_tries):
                cand = bounded(bits(key, c + t), num_items)
                if not _marked(bitmap, cand):
                    item = cand
                    break
            if item < 0:
                item = _select_free(indices, start, end, bounded(bits(key, c + max_tries), free))
            out[r, s] = item
        _unmark(bitmap, indices, start, end)
        return
    for s in range(n):
        c = s * stride
        item = -1
        for t in range(max_tries):
            cand = bounded(bits(key, c + t), num_items)
            if not _contains(indices, start, end, cand):
                item = cand
                break
        if item < 0:
            item = _select_free(indices, start, end, bounded(bits(key, c + max_tries), free))
        out[r, s] = item


@njit(cache=True, nogil=True)
def _new_bitmap(num_items):
    return np.zeros((num_items + 63) >> 6, dtype=np.uint64)


@njit(cache=True, nogil=True)
def _uniform_kernel(users, indptr, indices, num_items, key, max_tries, out):
    bitmap = _new_bitmap(num_items)
    for r in range(users.shape[0]):
        u = users[r]
        _uniform_row(indices, indptr[u], indptr[u + 1], num_items, row_key(key, r), max_tries, bitmap, out, r)


@njit(cache=True, nogil=True, inline="always")
def _alias_draw(prob, alias, x):
    i = bounded(x, prob.shape[0])
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
def _popularity_kernel(users, indptr, indices, prob, alias, p, key, max_tries, out):
    """Alias draws per row, rejecting the row's positives; exact fallback like `_uniform_row`.

    Rejection runs while the positives hold at most half the probability mass; otherwise, or after
    `max_tries` failures, the draw inverts the cumulative distribution of the free ids (built once per
    row, O(N), only for rows that need it). Rows whose free ids all have zero weight get -1.
    """
    n = out.shape[1]
    stride = max_tries + 1
    cum = np.empty(0, dtype=np.float64)
    ids = np.empty(0, dtype=np.int64)
    bitmap = _new_bitmap(p.shape[0])
    for r in range(users.shape[0]):
        rk = row_key(key, r)
        u = users[r]
        start = indptr[u]
        end = indptr[u + 1]
        if start == end:
            for s in range(n):
                out[r, s] = _alias_draw(prob, alias, bits(rk, s * stride))
            continue
        taken = 0.0
        for j in range(start, end):
            taken += p[indices[j]]
        reject = 1.0 - taken >= 0.5
        marked = reject and _use_bitmap(end - start, n)
        if marked:
            _mark(bitmap, indices, start, end)
        m = -1
        total = 0.0
        for s in range(n):
            c = s * stride
            item = -1
            if reject:
                for t in range(max_tries):
                    cand = _alias_draw(prob, alias, bits(rk, c + t))
                    if marked:
                        taken_item = _marked(bitmap, cand)
                    else:
                        taken_item = _contains(indices, start, end, cand)
                    if not taken_item:
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
            _unmark(bitmap, indices, start, end)


@njit(cache=True, nogil=True)
def _hard_kernel(users, candidates, indptr, indices, lo, hi, num_items, key, max_tries, replace, out):
    """Per row: eligible = candidates[r, lo:hi] minus padding (-1) and the user's positives; draws from it
    (with replacement, or a partial Fisher-Yates shuffle without); rows with nothing eligible fall back to
    `_uniform_row` with the same row stream."""
    n = out.shape[1]
    pool = np.empty(max(hi - lo, 1), dtype=np.int64)
    bitmap = _new_bitmap(num_items)
    for r in range(users.shape[0]):
        rk = row_key(key, r)
        u = users[r]
        start = indptr[u]
        end = indptr[u + 1]
        e = 0
        for c in range(lo, hi):
            item = candidates[r, c]
            if item < 0 or _contains(indices, start, end, item):
                continue
            pool[e] = item
            e += 1
        if e == 0:
            _uniform_row(indices, start, end, num_items, rk, max_tries, bitmap, out, r)
            continue
        for s in range(n):
            if replace or s >= e:
                out[r, s] = pool[bounded(bits(rk, s), e)]
            else:
                j = s + bounded(bits(rk, s), e - s)
                tmp = pool[s]
                pool[s] = pool[j]
                pool[j] = tmp
                out[r, s] = pool[s]


@njit(cache=True, nogil=True)
def _shared_uniform_kernel(num_items, key, out):
    rk = row_key(key, 0)
    for s in range(out.shape[0]):
        out[s] = bounded(bits(rk, s), num_items)


@njit(cache=True, nogil=True)
def _shared_alias_kernel(prob, alias, key, out):
    rk = row_key(key, 0)
    for s in range(out.shape[0]):
        out[s] = _alias_draw(prob, alias, bits(rk, s))


@njit(cache=True, nogil=True)
def _vose_kernel(p, prob, alias):
    """Vose's alias method: O(N), stacks popped last-in first-out (the reference does the same)."""
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


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _check_count(value: Any, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_num_items(num_items: Any) -> int:
    num_items = _check_count(num_items, "num_items", minimum=1)
    if num_items > _MAX_ITEMS:
        raise ValueError(f"num_items must be < 2**31, got {num_items}")
    return num_items


def _check_users(users: Any, name: str = "users") -> np.ndarray:
    arr = np.asarray(users)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_exclude(exclude: Any, users: np.ndarray, num_items: int, validate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Checks `exclude=(indptr, indices)` against `users`; checks the touched rows when `validate`."""
    if not isinstance(exclude, tuple) or len(exclude) != 2:
        raise TypeError("exclude must be a tuple (indptr, indices)")
    indptr, indices = exclude
    if not isinstance(indptr, np.ndarray) or indptr.dtype != np.int64 or indptr.ndim != 1 or indptr.size < 1:
        raise TypeError("exclude indptr must be a 1-D int64 ndarray [U + 1]")
    if not isinstance(indices, np.ndarray) or indices.dtype not in (np.int32, np.int64) or indices.ndim != 1:
        raise TypeError("exclude indices must be a 1-D int32 or int64 ndarray [nnz]")
    indptr = np.ascontiguousarray(indptr)
    indices = np.ascontiguousarray(indices)
    num_rows = indptr.size - 1
    if users.size:
        lo, hi = int(users.min()), int(users.max())
        if lo < 0 or hi >= num_rows:
            raise ValueError(f"users must lie in [0, {num_rows}) (rows of exclude), got range [{lo}, {hi}]")
    if validate and users.size:
        code, row = _check_rows(np.unique(users), indptr, indices, num_items)
        _raise_csr_problem(code, row, num_items)
    return indptr, indices


def _raise_csr_problem(code: int, row: int, num_items: int) -> None:
    if code == 1:
        raise ValueError(f"exclude indptr is not a valid CSR offset array at row {row}")
    if code == 2:
        raise ValueError(f"exclude row {row} holds an item id outside [0, {num_items})")
    if code == 3:
        raise ValueError(f"exclude row {row} is not sorted ascending without duplicates")


def _empty_history(batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """users, indptr, indices of an all-empty history: sampling without exclusion."""
    return np.zeros(batch, dtype=np.int64), np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int32)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def validate_csr(indptr: np.ndarray, indices: np.ndarray, num_items: int) -> None:
    """Checks a history once, in O(nnz): dtypes, offsets, ids in [0, num_items), rows sorted and unique.

    Raises:
        TypeError: wrong dtype or type.
        ValueError: names the first bad row.
    """
    num_items = _check_num_items(num_items)
    indptr, indices = _check_exclude((indptr, indices), np.zeros(0, np.int64), num_items, False)
    if indptr[0] != 0 or indptr[-1] != indices.size:
        raise ValueError(f"exclude indptr must start at 0 and end at nnz={indices.size}, got {indptr[0]}..{indptr[-1]}")
    code, row = _check_rows(np.arange(indptr.size - 1, dtype=np.int64), indptr, indices, num_items)
    _raise_csr_problem(code, row, num_items)


def uniform_negatives(
    users: np.ndarray,
    num_items: int,
    num_negatives: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int,
    max_tries: int = DEFAULT_MAX_TRIES,
    validate: bool = True,
) -> np.ndarray:
    """Uniform negatives in [0, num_items), excluding each user's positives when `exclude` is given.

    Args:
        users: [B] row of `exclude` for each batch row (users may repeat; rows draw independently).
        num_items: catalogue size N.
        num_negatives: n draws per row, with replacement.
        exclude: CSR history (indptr int64 [U + 1], indices int32 [nnz], rows sorted and unique).
        seed: results are a pure function of (seed, batch row, arguments).
        max_tries: rejection tries per draw before the exact fallback (the result's distribution does
            not depend on it; only which of two exact methods produced a draw).
        validate: check the rows of `users` (O(their length)); pass False after `validate_csr`.

    Returns:
        [B, n] int64 ids. A user whose history holds every item has no negative: its row is all -1
        (the batch iterator refuses such users up front; a direct caller masks or drops them).
    """
    users = _check_users(users)
    num_items = _check_num_items(num_items)
    num_negatives = _check_count(num_negatives, "num_negatives")
    max_tries = _check_count(max_tries, "max_tries")
    if exclude is None:
        users_k, indptr, indices = _empty_history(users.size)
    else:
        indptr, indices = _check_exclude(exclude, users, num_items, validate)
        users_k = users
    out = np.empty((users.size, num_negatives), dtype=np.int64)
    _uniform_kernel(users_k, indptr, indices, num_items, np.uint64(seed_key(seed)), max_tries, out)
    return out


def uniform_log_q(
    users: np.ndarray, num_items: int, *, exclude: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """[B] float32 log-probability of one `uniform_negatives` draw for each row: -log(N - |positives|).

    -inf never occurs for a valid draw; rows with no free item get +inf (they have no draw to correct).
    """
    users = _check_users(users)
    num_items = _check_num_items(num_items)
    if exclude is None:
        return np.full(users.size, -np.log(num_items), dtype=np.float32)
    indptr, _ = _check_exclude(exclude, users, num_items, False)
    free = num_items - (indptr[users + 1] - indptr[users])
    with np.errstate(divide="ignore"):
        return (-np.log(free.astype(np.float64))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AliasTable:
    """Vose alias table of a distribution over N items.

    Attributes:
        prob: [N] float64 acceptance threshold of each column.
        alias: [N] int64 id drawn when column i's coin fails.
        p: [N] float64 target probabilities (weights / sum), exact; `log_p` is their log.
    """

    prob: np.ndarray
    alias: np.ndarray
    p: np.ndarray

    @property
    def num_items(self) -> int:
        return int(self.p.size)

    def log_prob(self, items: np.ndarray) -> np.ndarray:
        """[...] float32 log p of ids `items` (per-draw probability, natural log)."""
        with np.errstate(divide="ignore"):
            return np.log(self.p[np.asarray(items)]).astype(np.float32)


def popularity_weights(counts: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """[N] float64 weights count**alpha (word2vec's 0.75 by default; alpha=0 is uniform, 1 is popularity).

    Raises:
        ValueError: negative or non-finite counts, or alpha < 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array [N], got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise ValueError("counts must be finite and >= 0")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    return counts**alpha


def build_alias_table(weights: np.ndarray) -> AliasTable:
    """Builds a Vose alias table in O(N) for sampling ids with probability weights / sum(weights).

    Args:
        weights: [N] non-negative finite weights (e.g. `popularity_weights(counts, 0.75)`), N < 2**31.

    Raises:
        ValueError: empty, negative, non-finite or all-zero weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D array [N], got shape {w.shape}")
    if w.size > _MAX_ITEMS:
        raise ValueError(f"weights must have fewer than 2**31 entries, got {w.size}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    total = w.sum()
    if not total > 0:
        raise ValueError("weights must not all be zero")
    p = w / total
    prob = np.empty(w.size, dtype=np.float64)
    alias = np.empty(w.size, dtype=np.int64)
    _vose_kernel(p, prob, alias)
    return AliasTable(prob=prob, alias=alias, p=p)


def _check_table(table: Any) -> AliasTable:
    if not isinstance(table, AliasTable):
        raise TypeError(f"table must be an AliasTable (from build_alias_table), got {type(table).__name__}")
    return table


def popularity_negatives(
    users: np.ndarray,
    table: AliasTable,
    num_negatives: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int,
    max_tries: int = DEFAULT_MAX_TRIES,
    validate: bool = True,
) -> np.ndarray:
    """Negatives drawn with probability `table.p` (e.g. count**0.75), excluding positives when given.

    With `exclude`, row r's draws follow p restricted to the user's free ids and renormalised
    (rejection while the positives hold at most half the mass, exact inverse-CDF fallback otherwise).

    Args:
        users: [B] rows of `exclude` (only their count matters without `exclude`).
        table: from `build_alias_table`.
        num_negatives: n draws per row, with replacement.
        exclude, seed, max_tries, validate: as in `uniform_negatives`.

    Returns:
        [B, n] int64 ids; -1 for rows whose free ids all have zero weight.
    """
    users = _check_users(users)
    table = _check_table(table)
    num_negatives = _check_count(num_negatives, "num_negatives")
    max_tries = _check_count(max_tries, "max_tries")
    if exclude is None:
        users_k, indptr, indices = _empty_history(users.size)
    else:
        indptr, indices = _check_exclude(exclude, users, table.num_items, validate)
        users_k = users
    out = np.empty((users.size, num_negatives), dtype=np.int64)
    _popularity_kernel(
        users_k, indptr, indices, table.prob, table.alias, table.p, np.uint64(seed_key(seed)), max_tries, out
    )
    return out


def popularity_log_q(
    users: np.ndarray,
    negatives: np.ndarray,
    table: AliasTable,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """[B, n] float32 log-probability of each `popularity_negatives` draw: log p_i, minus
    log(1 - mass of the user's positives) when positives are excluded."""
    users = _check_users(users)
    table = _check_table(table)
    negatives = np.asarray(negatives)
    if negatives.ndim != 2 or negatives.shape[0] != users.size:
        raise ValueError(f"negatives must be [B={users.size}, n], got shape {negatives.shape}")
    with np.errstate(divide="ignore"):
        log_q = np.log(table.p[np.where(negatives < 0, 0, negatives)])
        if exclude is not None:
            indptr, indices = _check_exclude(exclude, users, table.num_items, False)
            log_q = log_q - np.log1p(-np.minimum(_row_mass(users, indptr, indices, table.p), 1.0))[:, None]
    return log_q.astype(np.float32)


def shared_negatives(
    num_samples: int,
    *,
    num_items: int | None = None,
    table: AliasTable | None = None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """M ids drawn once for a whole batch, uniformly (`num_items`) or from `table`, with replacement.

    Returns:
        ids [M] int64 and log_q [M] float32: the natural log of the per-draw probability of each id
        (log(1/N) or log p_i). For sampled softmax, subtract log_q from the logits (logQ correction);
        add log(M) for the expected-count form when mixing with other negative sources.
    """
    num_samples = _check_count(num_samples, "num_samples")
    if (num_items is None) == (table is None):
        raise ValueError("give exactly one of num_items (uniform) or table (alias)")
    out = np.empty(num_samples, dtype=np.int64)
    key = np.uint64(seed_key(seed))
    if table is None:
        num_items = _check_num_items(num_items)
        _shared_uniform_kernel(num_items, key, out)
        return out, np.full(num_samples, -np.log(num_items), dtype=np.float32)
    table = _check_table(table)
    _shared_alias_kernel(table.prob, table.alias, key, out)
    return out, table.log_prob(out)


def hard_negatives(
    users: np.ndarray,
    candidates: np.ndarray,
    num_negatives: int,
    *,
    num_items: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    rank_range: tuple[int, int | None] = (0, None),
    replace: bool = True,
    seed: int,
    max_tries: int = DEFAULT_MAX_TRIES,
    validate: bool = True,
) -> np.ndarray:
    """Negatives drawn uniformly from per-row candidate lists, minus the user's positives.

    Args:
        users: [B] rows of `exclude`.
        candidates: [B, C] item ids ranked best first (e.g. `topk` of the current model); -1 is padding.
        num_negatives: n per row.
        num_items: catalogue size N (ids are checked against it; the fallback draws from it).
        exclude: CSR positives to skip.
        rank_range: (a, b): only ranks a <= rank < b are eligible (semi-hard negatives skip the top a,
            which are often unlabelled positives); b=None means C.
        replace: draw with replacement; without, the first min(n, eligible) draws are distinct ranks and
            any further draws repeat them uniformly.
        seed, max_tries, validate: as in `uniform_negatives`.

    Returns:
        [B, n] int64 ids. A row with no eligible candidate falls back to `uniform_negatives` for that
        row (same seed and row: the same ids that function returns), so a batch never has holes unless
        the user has every item (-1).
    """
    users = _check_users(users)
    num_items = _check_num_items(num_items)
    num_negatives = _check_count(num_negatives, "num_negatives")
    max_tries = _check_count(max_tries, "max_tries")
    cand = np.asarray(candidates)
    if cand.ndim != 2 or cand.shape[0] != users.size:
        raise ValueError(f"candidates must be [B={users.size}, C], got shape {cand.shape}")
    if cand.size and not np.issubdtype(cand.dtype, np.integer):
        raise TypeError(f"candidates must hold integer ids, got dtype {cand.dtype}")
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    if cand.size and (cand.min() < -1 or cand.max() >= num_items):
        raise ValueError(f"candidates must be item ids in [0, {num_items}) or -1 (padding)")
    if not isinstance(rank_range, tuple) or len(rank_range) != 2:
        raise TypeError("rank_range must be a tuple (a, b)")
    lo = _check_count(rank_range[0], "rank_range[0]")
    hi = cand.shape[1] if rank_range[1] is None else _check_count(rank_range[1], "rank_range[1]")
    if rank_range[1] is not None and hi < lo:
        raise ValueError(f"rank_range must have a <= b, got {rank_range}")
    hi = min(hi, cand.shape[1])
    lo = min(lo, hi)
    if exclude is None:
        users_k, indptr, indices = _empty_history(users.size)
    else:
        indptr, indices = _check_exclude(exclude, users, num_items, validate)
        users_k = users
    out = np.empty((users.size, num_negatives), dtype=np.int64)
    _hard_kernel(
        users_k, cand, indptr, indices, lo, hi, num_items, np.uint64(seed_key(seed)), max_tries, bool(replace), out
    )
    return out
