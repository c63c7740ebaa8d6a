"""Top-K ranking metrics from a [U, K] matrix of recommended item ids and a CSR of relevant items.

Definitions (RecBole's, for users with several relevant items). For one user with relevant set R
(|R| >= 1), top-K list i_1..i_K and hit indicator h_r = [i_r in R]:

- Recall@K    = sum_{r<=K} h_r / |R|
- Precision@K = sum_{r<=K} h_r / K
- HitRate@K   = 1 if any h_r else 0
- MRR@K       = 1 / (rank of the first hit), 0 without a hit
- NDCG@K      = DCG / IDCG, DCG = sum_{r<=K} h_r / log2(r + 1), IDCG = sum_{r<=min(|R|,K)} 1 / log2(r + 1)
- MAP@K       = sum_{r<=K} h_r * Precision@r / min(|R|, K)
- Coverage@K  = |union of the evaluated users' top-K items| / number of catalogue items (one value,
  not a mean)

Every metric except coverage is averaged over the users that have at least one relevant item; users
with none are left out (they carry no signal), as in RecBole. Padding ids (-1) never hit.
Relevant items that no ranking can contain (an item unknown to the model, `unreachable=`) count in
|R| and are never hit; a user unknown to the model counts as a user whose every metric is 0
(`add_unreachable_users`).
Hits are found for all users at once by binary search on `user * width + item` keys, never by a
per-user Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twotower.data.csr import row_ids, sorted_unique

METRICS = ("recall", "ndcg", "mrr", "hit", "precision", "map")


def hit_matrix(topk_ids: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which recommended ids are relevant, and how many relevant items each user has.

    Args:
        topk_ids: int [U, K] recommended item ids per user (-1 = empty slot).
        indptr: int [U + 1] CSR offsets of the relevant items (row u = user of topk_ids row u).
        indices: int [nnz] relevant item ids (any order; duplicates count once).

    Returns:
        (hits bool [U, K], num_relevant int64 [U]).
    """
    topk_ids = np.asarray(topk_ids)
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if topk_ids.ndim != 2:
        raise ValueError(f"topk_ids must be 2-D [U, K]; got shape {topk_ids.shape}")
    if topk_ids.dtype.kind not in "iu":
        raise TypeError(f"topk_ids must be integer item ids; got dtype {topk_ids.dtype}")
    num_users = topk_ids.shape[0]
    if indptr.shape != (num_users + 1,) or indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        raise ValueError(
            f"relevant indptr must be non-decreasing with U + 1 = {num_users + 1} entries "
            f"from 0 to len(indices) = {len(indices)}"
        )
    if len(indices) and indices.min() < 0:
        raise ValueError("relevant item ids must be >= 0")
    width = int(max(indices.max(initial=-1), topk_ids.max(initial=-1))) + 1
    if width and num_users > np.iinfo(np.int64).max // width:
        # user * width + item would overflow (ids near 2^63): number the relevant ids densely first;
        # a recommended id that is not among them cannot be a hit.
        vocab = np.unique(indices)
        indices = np.searchsorted(vocab, indices)
        pos = np.minimum(np.searchsorted(vocab, topk_ids), max(len(vocab) - 1, 0))
        topk_ids = np.where((topk_ids >= 0) & (vocab[pos] == topk_ids) if len(vocab) else False, pos, -1)
        width = max(len(vocab), 1)
    rows = row_ids(indptr)
    keys = sorted_unique(rows * width + indices)  # duplicate (user, item) pairs collapse
    num_relevant = (
        np.bincount(keys // width, minlength=num_users).astype(np.int64) if width else np.zeros(num_users, np.int64)
    )
    valid = topk_ids >= 0
    query = np.arange(num_users, dtype=np.int64)[:, None] * width + np.where(valid, topk_ids, 0)
    pos = np.searchsorted(keys, query)
    found = keys[np.minimum(pos, len(keys) - 1)] == query if len(keys) else np.zeros(query.shape, bool)
    return found & valid, num_relevant


def user_metrics(hits: np.ndarray, num_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user metrics at cutoff k (definitions in the module docstring).

    Args:
        hits: bool [U, K]: whether each ranked position is relevant. K may be below k only where the
            ranking ended early because it lists every rankable item: positions past K are misses,
            so memory follows min(k, K), never k.
        num_relevant: int [U], all >= 1.
        k: cutoff (>= 1).

    Returns:
        name -> float64 [U] for each name in METRICS.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if np.any(num_relevant < 1):
        raise ValueError("user_metrics needs users with at least one relevant item")
    width = min(k, hits.shape[1])
    h = hits[:, :width].astype(np.float64)
    ranks = np.arange(1, width + 1, dtype=np.float64)
    n_hit = h.sum(axis=1)
    capped = np.minimum(num_relevant, k)
    # ideal[m] = IDCG with m relevant items in the top: as long as the largest capped count, not as k
    longest = int(capped.max()) if capped.size else 0
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, longest + 2, dtype=np.float64)))])
    first = np.argmax(hits[:, :width], axis=1) if width else np.zeros(len(h), dtype=np.int64)
    cum_precision = np.cumsum(h, axis=1) / ranks
    return {
        "recall": n_hit / num_relevant,
        "ndcg": (h @ (1.0 / np.log2(ranks + 1.0))) / ideal[capped],
        "mrr": np.where(n_hit > 0, 1.0 / (first + 1.0), 0.0),
        "hit": (n_hit > 0).astype(np.float64),
        "precision": n_hit / k,
        "map": (h * cum_precision).sum(axis=1) / capped,
    }


class RankingMetrics:
    """Accumulates metrics over batches of users; `result()` gives the means and the coverage.

    Example:
        >>> acc = RankingMetrics(ks=[2], num_items=4)
        >>> acc.update(np.array([[0, 1]]), np.array([0, 1]), np.array([1]))
        >>> acc.result()["recall@2"], acc.result()["coverage@2"]
        (1.0, 0.5)
    """

    def __init__(self, ks: Sequence[int], num_items: int) -> None:
        ks = sorted({int(k) for k in ks})
        if not ks or ks[0] < 1:
            raise ValueError(f"ks must be a non-empty list of cutoffs >= 1; got {list(ks)}")
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1; got {num_items}")
        self.ks = ks
        self.num_items = int(num_items)
        self.num_users = 0
        self._sums = {f"{name}@{k}": 0.0 for k in ks for name in METRICS}
        self._seen = {k: np.zeros(num_items, dtype=bool) for k in ks}

    def update(
        self, topk_ids: np.ndarray, indptr: np.ndarray, indices: np.ndarray, unreachable: np.ndarray | None = None
    ) -> None:
        """Adds a batch: top-K ids [b, K >= min(max(ks), num_items)] and the CSR of those users' relevant items.

        Args:
            unreachable: int [b] more relevant items of each user that the ranking cannot contain:
                they count in |R| (recall's denominator, the ideal DCG) and are never hit.

        Users of the batch with no relevant item are skipped.
        """
        if topk_ids.shape[1] < min(self.ks[-1], self.num_items):
            raise ValueError(f"top-K width {topk_ids.shape[1]} is smaller than the largest cutoff {self.ks[-1]} "
                             f"(or the catalogue, {self.num_items} items, where that is smaller)")
        if topk_ids.size and topk_ids.max() >= self.num_items:
            raise ValueError(f"top-K ids must be < num_items = {self.num_items}; found {topk_ids.max()}")
        hits, num_relevant = hit_matrix(topk_ids, indptr, indices)
        if unreachable is not None:
            unreachable = np.asarray(unreachable, dtype=np.int64)
            if unreachable.shape != num_relevant.shape or (unreachable.size and unreachable.min() < 0):
                raise ValueError(f"unreachable must be {num_relevant.shape[0]} counts >= 0, one per user; "
                                 f"got shape {unreachable.shape}")
            num_relevant = num_relevant + unreachable
        keep = num_relevant > 0
        hits, num_relevant, topk_ids = hits[keep], num_relevant[keep], topk_ids[keep]
        self.num_users += int(keep.sum())
        for k in self.ks:
            for name, values in user_metrics(hits, num_relevant, k).items():
                self._sums[f"{name}@{k}"] += float(values.sum())
            top = topk_ids[:, :k]
            self._seen[k][top[top >= 0]] = True

    def add_unreachable_users(self, count: int) -> None:
        """Counts `count` users with relevant items whom no ranking can serve (unknown to the model):
        each adds 0 to every metric's sum and 1 to the number of users."""
        if count < 0:
            raise ValueError(f"count must be >= 0; got {count}")
        self.num_users += int(count)

    def totals(self) -> tuple[np.ndarray, int, np.ndarray]:
        """What the means and coverage come from, to be combined with other accumulators' (the
        shards of a distributed evaluation): the per-metric sums (float64, in `result()`'s order),
        the number of users, and bool [len(ks), num_items] of the items each cutoff has listed."""
        sums = np.array(list(self._sums.values()), dtype=np.float64)
        return sums, self.num_users, np.stack([self._seen[k] for k in self.ks])

    def set_totals(self, sums: np.ndarray, num_users: int, seen: np.ndarray) -> None:
        """Replaces the accumulated state with combined `totals()` (sums added, users added, listed
        items OR-ed over the shards)."""
        sums, seen = np.asarray(sums, dtype=np.float64), np.asarray(seen, dtype=bool)
        if sums.shape != (len(self._sums),) or seen.shape != (len(self.ks), self.num_items) or num_users < 0:
            raise ValueError(f"totals of another accumulator: sums {sums.shape}, seen {seen.shape}, users {num_users}")
        self._sums = dict(zip(self._sums, sums.tolist(), strict=True))
        self.num_users = int(num_users)
        self._seen = {k: seen[i].copy() for i, k in enumerate(self.ks)}

    def result(self) -> dict[str, float]:
        """Means over the users seen so far ("<metric>@<k>") plus "coverage@<k>"."""
        out = {key: (total / self.num_users if self.num_users else float("nan")) for key, total in self._sums.items()}
        for k in self.ks:
            out[f"coverage@{k}"] = float(self._seen[k].sum()) / self.num_items
        return out


def ranking_metrics(
    topk_ids: np.ndarray, indptr: np.ndarray, indices: np.ndarray, ks: Sequence[int], num_items: int
) -> dict[str, float]:
    """All metrics at every cutoff in one call (see the module docstring for the definitions).

    Args:
        topk_ids: int [U, K] recommended ids, K >= min(max(ks), num_items).
        indptr, indices: CSR [U] of each user's relevant items.
        ks: cutoffs, e.g. (10, 20, 50).
        num_items: catalogue size (for coverage).

    Returns:
        {"recall@10": ..., "ndcg@10": ..., ..., "coverage@10": ...}.
    """
    acc = RankingMetrics(ks, num_items)
    acc.update(np.asarray(topk_ids), indptr, indices)
    return acc.result()
