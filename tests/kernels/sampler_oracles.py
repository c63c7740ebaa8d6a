"""Test oracles of the samplers: one draw at a time in plain Python (ints, sets, sorted lists), reading
the random words the samplers' contract names (`kernels/_rng.py`: word c of batch row r's stream).
They share no code with `samplers.py` or `samplers_eager.py`, and both answer to them, id for id.

Word layout of draw s of a row: try t reads counter s * (max_tries + 1) + t; the exact fallback reads
counter s * (max_tries + 1) + max_tries; shared negatives read counter s of row 0; hard negatives
read counter s.
"""

from __future__ import annotations

import itertools

import numpy as np

from twotower.kernels._rng import EXACT_FROM, GOLDEN, ROW_STEP, derive_seed, fmix_int, seed_key

_LOW32 = 0xFFFFFFFF


def row_key(seed: int, row: int) -> int:
    return fmix_int(seed_key(seed) + (row + 1) * ROW_STEP)


def word(key: int, counter: int) -> int:
    return fmix_int(key + (counter + 1) * GOLDEN)


def bounded(x: int, n: int) -> int:
    return ((x >> 32) * n) >> 32


def uniform_below(x: int, n: int) -> int:
    """Multiply-shift; from EXACT_FROM values on, Lemire's rejection (rehash while the low bits fall short)."""
    if n < EXACT_FROM:
        return bounded(x, n)
    threshold = (2**32 - n) % n
    while (((x >> 32) * n) & _LOW32) < threshold:
        x = fmix_int(x + GOLDEN)
    return bounded(x, n)


def alias_draw(table, x: int) -> int:
    column = uniform_below(x, len(table.p))
    return column if (x & _LOW32) / 2**32 < table.prob[column] else int(table.alias[column])


def alias_distribution(table) -> np.ndarray:
    """The distribution a Vose table encodes: column i keeps prob[i] / N, passes the rest to alias[i]."""
    n = len(table.prob)
    q = [0.0] * n
    for i in range(n):
        q[i] += table.prob[i] / n
        q[int(table.alias[i])] += (1.0 - table.prob[i]) / n
    return np.array(q)


def _positives(exclude, user: int) -> list[int]:
    """Row `user` of the exclusion CSR, in stored order (empty without exclusions)."""
    if exclude is None:
        return []
    indptr, indices = exclude
    return [int(i) for i in indices[int(indptr[user]) : int(indptr[user + 1])]]


def _uniform_row(key: int, user_row: list[int], num_items: int, n: int, max_tries: int) -> list[int]:
    positives, stride = set(user_row), max_tries + 1
    free = [i for i in range(num_items) if i not in positives]
    out = []
    for s in range(n):
        drawn = -1
        if free and 2 * len(free) >= num_items:  # rejection pays: at least half the catalogue is free
            for t in range(max_tries):
                c = uniform_below(word(key, s * stride + t), num_items)
                if c not in positives:
                    drawn = c
                    break
        if drawn < 0 and free:  # exact: the rank-th free id
            drawn = free[uniform_below(word(key, s * stride + max_tries), len(free))]
        out.append(drawn)
    return out


def uniform_negatives(users, num_items: int, num_negatives: int, *, exclude=None, seed: int,
                      max_tries: int) -> np.ndarray:
    """[B, n] ids uniform over the items outside each row's user's positives (-1 when none is left)."""
    users = np.asarray(users).tolist()
    rows = [_uniform_row(row_key(seed, r), _positives(exclude, u), num_items, num_negatives, max_tries)
            for r, u in enumerate(users)]
    return np.array(rows, dtype=np.int64).reshape(len(users), num_negatives)


def _popularity_row(key: int, table, user_row: list[int], n: int, max_tries: int) -> list[int]:
    positives, stride = set(user_row), max_tries + 1
    if not user_row:  # nothing to exclude: one alias draw per slot
        return [alias_draw(table, word(key, s * stride)) for s in range(n)]
    mass = sum(float(table.p[i]) for i in user_row)
    free = [i for i in range(len(table.p)) if i not in positives]
    cumulative = list(itertools.accumulate(float(table.p[i]) for i in free))
    out = []
    for s in range(n):
        drawn = -1
        if 1.0 - mass >= 0.25:  # rejection pays: at least a quarter of the mass is free
            for t in range(max_tries):
                c = alias_draw(table, word(key, s * stride + t))
                if c not in positives:
                    drawn = c
                    break
        if drawn < 0 and free and cumulative[-1] > 0.0:  # exact: inverse CDF over the free items
            target = (word(key, s * stride + max_tries) >> 11) / 2**53 * cumulative[-1]
            first_above = sum(1 for c in cumulative if c <= target)
            drawn = free[min(first_above, len(free) - 1)]
        out.append(drawn)
    return out


def popularity_negatives(users, table, num_negatives: int, *, exclude=None, seed: int, max_tries: int) -> np.ndarray:
    """[B, n] ids drawn from the table's distribution renormalised over each row's non-positives."""
    users = np.asarray(users).tolist()
    rows = [_popularity_row(row_key(seed, r), table, _positives(exclude, u), num_negatives, max_tries)
            for r, u in enumerate(users)]
    return np.array(rows, dtype=np.int64).reshape(len(users), num_negatives)


def shared_negatives(num_samples: int, *, num_items: int | None = None, table=None,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log_q): one list for the whole batch, uniform or from the table, with each id's log-probability."""
    key = row_key(seed, 0)
    if table is None:
        ids = [uniform_below(word(key, s), num_items) for s in range(num_samples)]
        return np.array(ids, dtype=np.int64), np.full(num_samples, -np.log(num_items), dtype=np.float32)
    ids = [alias_draw(table, word(key, s)) for s in range(num_samples)]
    return np.array(ids, dtype=np.int64), np.log([float(table.p[i]) for i in ids]).astype(np.float32)


def hard_negatives(users, candidates, num_negatives: int, *, num_items: int, exclude=None, rank_range=(0, None),
                   replace: bool = True, seed: int, max_tries: int) -> np.ndarray:
    """[B, n] ids from each row's candidate window (ranks [lo, hi)), without -1 and positives; with
    replacement, or a partial Fisher-Yates shuffle of the pool; a row with an empty pool draws uniformly."""
    cand = np.asarray(candidates).tolist()
    users = np.asarray(users).tolist()
    width = len(cand[0]) if cand else 0
    hi = width if rank_range[1] is None else min(rank_range[1], width)
    lo = min(rank_range[0], hi)
    out = []
    for r, u in enumerate(users):
        key, positives = row_key(seed, r), _positives(exclude, u)
        pool = [c for c in cand[r][lo:hi] if c >= 0 and c not in set(positives)]
        if not pool:
            out.append(_uniform_row(key, positives, num_items, num_negatives, max_tries))
            continue
        picks = []
        for s in range(num_negatives):
            x, e = word(key, s), len(pool)
            if replace or s >= e:
                picks.append(pool[uniform_below(x, e)])
            else:
                j = s + uniform_below(x, e - s)
                pool[s], pool[j] = pool[j], pool[s]
                picks.append(pool[s])
        out.append(picks)
    return np.array(out, dtype=np.int64).reshape(len(users), num_negatives)


class StreamingFrequencyEstimator:
    """The streaming frequency estimator (Google's two-array gap estimate, `num_hashes` hashes, the
    minimum rate over them), item by item in Python loops; same interface and state as the kernel's."""

    def __init__(self, num_buckets: int = 1 << 20, *, num_hashes: int = 2, learning_rate: float = 0.05,
                 seed: int = 0) -> None:
        self.learning_rate = float(learning_rate)
        self.hash_keys = [derive_seed(seed, h) for h in range(num_hashes)]
        self.last_step = np.full((num_hashes, num_buckets), -1, dtype=np.int64)
        self.gap = np.zeros((num_hashes, num_buckets))
        self.hits = np.zeros((num_hashes, num_buckets))
        self.count = np.zeros((num_hashes, num_buckets), dtype=np.int64)
        self.step = 0

    def _bucket(self, h: int, item: int) -> int:
        return bounded(word(self.hash_keys[h], item), self.gap.shape[1])

    def update(self, items) -> None:
        t = self.step
        for h in range(len(self.hash_keys)):
            hits_now: dict[int, int] = {}  # bucket -> hits in this batch, in order of first hit
            for item in np.asarray(items).tolist():
                b = self._bucket(h, item)
                if b in hits_now:
                    hits_now[b] += 1
                    continue
                hits_now[b] = 1
                if self.last_step[h, b] < 0:
                    self.gap[h, b], self.count[h, b] = t + 1.0, 1
                else:
                    self.count[h, b] += 1
                    a = max(self.learning_rate, 1.0 / self.count[h, b])
                    self.gap[h, b] = (1.0 - a) * self.gap[h, b] + a * (t - self.last_step[h, b])
                self.last_step[h, b] = t
            for b, c in hits_now.items():
                a = max(self.learning_rate, 1.0 / self.count[h, b])
                self.hits[h, b] = (1.0 - a) * self.hits[h, b] + a * c
        self.step += 1

    def probability(self, items) -> np.ndarray:
        out = []
        for item in np.asarray(items).tolist():
            buckets = [self._bucket(h, item) for h in range(len(self.hash_keys))]
            if all(self.last_step[h, b] >= 0 for h, b in enumerate(buckets)):
                out.append(min(self.hits[h, b] / self.gap[h, b] for h, b in enumerate(buckets)))
            else:
                out.append(0.0)
        return np.array(out)
