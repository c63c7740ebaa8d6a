"""Full-ranking evaluation: every user against the whole catalogue, seen items excluded.

Protocol (RecBole / LightGCN style; every rule is a setting, `twotower.settings.eval`): for the
validation split, each user's train items are excluded and the validation items are the relevant
ones; for the test split, train and validation items (or train items only, `exclude="train"`) are
excluded and the test items are relevant. Only users with at least one relevant item are evaluated.
Targets the model cannot score (user or item without a training row) are dropped, or kept as
relevant items no ranking hits (`unknown_targets="keep"`). Rankings come from the exact C++ scorer
(`twotower.ExactIndex`), by item id, so ties are broken by the lower item id and never inflate a
metric. Metric definitions: `twotower.metrics`.

Every ranker -- the model, the HNSW index, the most-popular and random baselines -- goes through the
same `evaluate_rankings` loop, so their numbers are comparable.

Example:
    >>> rng = np.random.default_rng(0)
    >>> users, items = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(200, 8)).astype(np.float32)
    >>> relevant = (np.arange(51) * 2, rng.integers(0, 200, 100))
    >>> result = evaluate_vectors(users, items, relevant, ks=(10,), progress=False)
    >>> sorted(result.metrics)[:3], result.num_users
    (['coverage@10', 'hit@10', 'map@10'], 50)
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from twotower.data.csr import CSRPair, csr_pair, group_by_user, indptr_from_counts, row_ids, take_rows
from twotower.kernels.codes import check_codes
from twotower.metrics import RankingMetrics, hit_matrix
from twotower.settings.eval import EvalConfig

# A ranker maps (user codes [b], their exclusion CSR) to top-K item ids [b, K].
Ranker = Callable[[np.ndarray, CSRPair | None], np.ndarray]


@dataclass
class EvalResult:
    """Metrics of one evaluation run.

    Attributes:
        metrics: "<metric>@<k>" -> mean over evaluated users (plus "coverage@<k>").
        num_users: users evaluated (those with at least one relevant item).
        seconds: wall time of ranking + metrics.
        users_per_second: num_users / seconds.
        extra: more numbers (ANN recall, queries/s...).
        targets: the split's rows and what the protocol made of them (`SplitTargets.counts`), when
            the evaluation ran on a dataset split.
    """

    metrics: dict[str, float]
    num_users: int
    seconds: float
    users_per_second: float
    extra: dict[str, float] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key] if key in self.metrics else self.extra[key]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "num_users": self.num_users,
            "seconds": self.seconds,
            "users_per_second": self.users_per_second,
            **self.extra,
            **({"targets": dict(self.targets)} if self.targets else {}),
        }


def evaluate_rankings(
    ranker: Ranker,
    relevant: Any,
    *,
    num_items: int,
    ks: Sequence[int] = (10, 20, 50),
    exclude: Any | None = None,
    users: np.ndarray | None = None,
    batch_size: int = 2048,
    progress: bool = True,
    desc: str = "evaluate",
    unreachable: np.ndarray | None = None,
    unreachable_users: int = 0,
    shard: tuple[int, int] = (0, 1),
    combine: Callable[[RankingMetrics], None] | None = None,
) -> EvalResult:
    """Runs `ranker` over users in batches and accumulates the metrics.

    Args:
        ranker: (user codes [b], exclusion CSR of those users or None) -> top-K ids [b, K >= ranking_width(ks,
            num_items)].
        relevant: CSR over all users (row = user code) of the relevant items.
        num_items: catalogue size.
        ks: cutoffs.
        exclude: optional CSR over all users of the items to leave out of each ranking (seen items).
        users: user codes to evaluate; default: every user with at least one relevant item
            (`unreachable` ones included).
        unreachable: int [num_users] more relevant items per user that no ranking can contain
            (items unknown to the model): counted in |R|, never hit.
        unreachable_users: users unknown to the model who have relevant items: each is counted
            with every metric 0.
        batch_size: users per ranker call.
        progress: show a tqdm bar (per user).
        desc: bar label.
        shard: (index, count): rank every count-th of the users from the index-th on (one process of
            a distributed evaluation; the unreachable users count in shard 0 only).
        combine: called with the accumulator before the means are taken, to merge the shards'
            totals (`RankingMetrics.totals` / `set_totals`; e.g. an all-reduce across ranks).

    Returns:
        EvalResult; `extra["rank_seconds"]` is the time spent inside `ranker` only.
    """
    relevant = csr_pair(relevant)
    exclude = None if exclude is None else csr_pair(exclude)
    num_rows = len(relevant[0]) - 1
    if exclude is not None and len(exclude[0]) - 1 != num_rows:
        raise ValueError(
            f"exclude has {len(exclude[0]) - 1} rows but relevant has {num_rows}: both are indexed by user code"
        )
    if unreachable is not None:
        unreachable = np.asarray(unreachable, dtype=np.int64)
        if unreachable.shape != (num_rows,):
            raise ValueError(f"unreachable must hold one count per user ({num_rows}); got shape {unreachable.shape}")
    if users is None:
        users = np.flatnonzero((np.diff(relevant[0]) + (0 if unreachable is None else unreachable)) > 0)
    users = check_codes(np.asarray(users, dtype=np.int64), "users", low=0, high=num_rows)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count; got {shard}")
    users = users[index::count]
    unreachable_users = unreachable_users if index == 0 else 0
    acc = RankingMetrics(ks, num_items)
    start = time.perf_counter()
    rank_seconds = 0.0
    with tqdm(total=len(users), unit="user", desc=desc, disable=not progress, leave=False) as bar:
        for s in range(0, len(users), batch_size):
            batch = users[s : s + batch_size]
            batch_exclude = None if exclude is None else take_rows(exclude, batch)
            t0 = time.perf_counter()
            ids = np.asarray(ranker(batch, batch_exclude))
            rank_seconds += time.perf_counter() - t0
            if ids.shape[0] != len(batch):
                raise ValueError(f"ranker returned {ids.shape[0]} rows for {len(batch)} users")
            acc.update(ids, *take_rows(relevant, batch), None if unreachable is None else unreachable[batch])
            bar.update(len(batch))
    acc.add_unreachable_users(unreachable_users)
    if combine is not None:
        combine(acc)
    seconds = time.perf_counter() - start
    return EvalResult(
        metrics=acc.result(),
        num_users=acc.num_users,
        seconds=seconds,
        users_per_second=acc.num_users / seconds if seconds > 0 else float("inf"),
        extra={"rank_seconds": rank_seconds},
    )


def ranking_width(ks: Sequence[int], num_items: int) -> int:
    """How many items each ranking lists: the largest cutoff, but never more than the catalogue
    (metrics at a cutoff beyond it count the missing positions as misses), so memory follows
    min(max(ks), num_items) and `-k 1000000000` is as cheap as ranking everything."""
    return max(1, min(max(ks), int(num_items)))


# -- rankers ------------------------------------------------------------------------------------------
def exact_ranker(
    user_vectors: np.ndarray, item_vectors: np.ndarray, k: int, *, num_threads: int | None = None,
    device: Any = None,
) -> Ranker:
    """Ranks by inner product with the C++ exact scorer (items packed once), or, with a CUDA
    `device`, on that device (`twotower.retrieval.exact_torch`, the vectors uploaded once).

    Args:
        user_vectors: float32 [num_users, D] (row = user code), e.g. `model.user_search_vectors()`.
        item_vectors: float32 [num_items, D], e.g. `model.item_search_vectors()`.
        k: list length.
        device: a torch device to rank on; None or the CPU: the C++ scorer.
    """
    if device is not None and str(device) != "cpu":
        return _device_ranker(user_vectors, item_vectors, k, device)
    from twotower import ExactIndex

    index = ExactIndex(np.ascontiguousarray(item_vectors, dtype=np.float32))
    queries = np.ascontiguousarray(user_vectors, dtype=np.float32)

    def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
        return index.search(queries[users], k, exclude=exclude, num_threads=num_threads)[1]

    return rank


def _device_ranker(user_vectors: np.ndarray, item_vectors: np.ndarray, k: int, device: Any) -> Ranker:
    import torch

    from twotower.retrieval.exact_torch import topk_torch

    queries = torch.from_numpy(np.ascontiguousarray(user_vectors, dtype=np.float32)).to(device)
    items = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32)).to(device)

    def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
        return topk_torch(queries[torch.from_numpy(np.asarray(users, dtype=np.int64)).to(device)], items, k,
                          exclude=exclude)[1]

    return rank


def popularity_ranker(item_counts: np.ndarray, k: int) -> Ranker:
    """Most-popular baseline: every user gets the items with the highest counts (ties: lower id),
    minus the excluded ones; runs through the exact scorer as a 1-D inner product."""
    from twotower import ExactIndex

    counts = np.asarray(item_counts)
    if counts.ndim != 1 or not counts.size or counts.min() < 0:
        raise ValueError("item_counts must be a non-empty 1-D array of non-negative counts [num_items]")
    # Score = position in the (count desc, id asc) order, reversed: distinct small integers, exact in
    # float32 whatever the counts (N < 2**24).
    order = np.lexsort((np.arange(len(counts)), -counts.astype(np.float64)))
    scores = np.empty(len(counts), dtype=np.float32)
    scores[order] = np.arange(len(counts), 0, -1, dtype=np.float32)
    index = ExactIndex(scores[:, None])

    def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
        return index.search(np.ones((len(users), 1), dtype=np.float32), k, exclude=exclude)[1]

    return rank


def random_ranker(num_items: int, k: int, *, seed: int = 0) -> Ranker:
    """Random baseline: a uniformly random order of the non-excluded items for each user.

    Reproducible for a given seed and sequence of batches (the generator advances batch by batch).
    """
    rng = np.random.default_rng(seed)
    block = max(1, (1 << 22) // max(num_items, 1))  # users scored at once: bounds memory

    def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for s in range(0, len(users), block):
            e = min(s + block, len(users))
            scores = rng.random((e - s, num_items), dtype=np.float32)
            if exclude is not None:
                indptr, indices = exclude
                rows = row_ids(indptr[s : e + 1])
                scores[rows, indices[indptr[s] : indptr[e]]] = -np.inf
            top = min(k, num_items)
            part = (
                np.argpartition(-scores, top - 1, axis=1)[:, :top]
                if top < num_items
                else np.tile(np.arange(num_items), (e - s, 1))
            )
            order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
            ids = np.take_along_axis(part, order, axis=1)
            ids[np.take_along_axis(scores, ids, axis=1) == -np.inf] = -1
            out[s:e, :top] = ids
        return out

    return rank


def ann_ranker(index: Any, user_vectors: np.ndarray, k: int) -> Ranker:
    """Ranks through an `twotower.retrieval.hnsw.HNSWIndex` (seen items filtered by over-fetching)."""
    queries = np.ascontiguousarray(user_vectors, dtype=np.float32)

    def rank(users: np.ndarray, exclude: CSRPair | None) -> np.ndarray:
        return index.search(queries[users], k, exclude=exclude)[1]

    return rank


# -- entry points -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitTargets:
    """What the protocol asks of the rankings of one split.

    Attributes:
        relevant: CSR [num_users] of each user's targets that the model can rank.
        exclude: CSR [num_users] of the items left out of each user's ranking.
        unreachable: int64 [num_users] targets of each user that no ranking can hit (items unknown to
            training, kept by unknown_targets "keep"); zeros otherwise.
        unreachable_users: users unknown to training who have targets, counted with zeros ("keep").
        counts: JSON-ready: the protocol's rules and the split's rows, "rows" in all,
            "unknown_user_rows" / "unknown_item_rows" (no training row for the user / the item;
            dropped or kept as `unknown_targets` says), "repeat_targets" (targets the user already
            has in a left-out split; left out of the ranking or ranked as `repeat_targets` says).
    """

    relevant: CSRPair
    exclude: CSRPair
    unreachable: np.ndarray
    unreachable_users: int
    counts: dict[str, Any]


def split_targets(dataset: Any, split: str, protocol: EvalConfig | None = None) -> SplitTargets:
    """The targets of "valid" (train items left out) or "test" (train + valid items left out, or
    train items only with `protocol.exclude == "train"`) under `protocol` (default: the defaults)."""
    protocol = protocol or EvalConfig()
    protocol.validate()
    if split == "valid":
        part, seen = dataset.valid, dataset.train_history
    elif split == "test":
        part = dataset.test
        seen = dataset.train_valid_history if protocol.exclude == "train+valid" else dataset.train_history
    else:
        raise ValueError(f"split must be 'valid' or 'test'; got {split!r}")
    relevant = group_by_user(part.users, part.items, dataset.num_users)
    exclude, repeats = _spare_targets(csr_pair(seen), relevant, dataset.num_items, protocol.repeat_targets == "rank")
    unknown = getattr(dataset, "unknown_targets", {}).get(split)
    keep = unknown is not None and protocol.unknown_targets == "keep"
    counts = {
        "exclude": protocol.exclude if split == "test" else "train",
        "unknown_targets": protocol.unknown_targets,
        "repeat_targets": protocol.repeat_targets,
        "rows": len(part.users) + (unknown.rows if unknown is not None else 0),
        "unknown_user_rows": unknown.user_rows if unknown is not None else 0,
        "unknown_item_rows": unknown.item_rows if unknown is not None else 0,
        "repeat_target_count": repeats,
    }
    return SplitTargets(
        relevant=relevant,
        exclude=exclude,
        unreachable=unknown.per_user if keep else np.zeros(dataset.num_users, dtype=np.int64),
        unreachable_users=unknown.users if keep else 0,
        counts=counts,
    )


def _spare_targets(seen: CSRPair, relevant: CSRPair, num_items: int, spare: bool) -> tuple[CSRPair, int]:
    """(`seen` less each user's relevant items when `spare`, else `seen` itself; how many relevant
    (user, item) pairs are in `seen`). Both CSRs hold sorted, unique rows."""
    width = max(int(num_items), 1)
    seen_rows = row_ids(seen[0])
    seen_keys = seen_rows * width + seen[1]
    rel_keys = row_ids(relevant[0]) * width + relevant[1]
    pos = np.minimum(np.searchsorted(rel_keys, seen_keys), max(len(rel_keys) - 1, 0))
    in_relevant = rel_keys[pos] == seen_keys if len(rel_keys) else np.zeros(len(seen_keys), dtype=bool)
    repeats = int(in_relevant.sum())
    if not spare or repeats == 0:
        return seen, repeats
    indptr = indptr_from_counts(np.bincount(seen_rows[~in_relevant], minlength=len(seen[0]) - 1))
    return (indptr, seen[1][~in_relevant]), repeats


def evaluate_targets(ranker: Ranker, targets: SplitTargets, *, num_items: int, ks: Sequence[int], progress: bool,
                     desc: str, batch_size: int = 2048, shard: tuple[int, int] = (0, 1),
                     combine: Callable[[RankingMetrics], None] | None = None) -> EvalResult:
    """`evaluate_rankings` of `ranker` on one split's targets, with their counts attached."""
    result = evaluate_rankings(
        ranker,
        targets.relevant,
        num_items=num_items,
        ks=ks,
        exclude=targets.exclude,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        unreachable=targets.unreachable,
        unreachable_users=targets.unreachable_users,
        shard=shard,
        combine=combine,
    )
    return dataclasses.replace(result, targets=dict(targets.counts))


def evaluate_vectors(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    relevant: Any,
    *,
    exclude: Any | None = None,
    ks: Sequence[int] = (10, 20, 50),
    users: np.ndarray | None = None,
    batch_size: int = 2048,
    num_threads: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Full-ranking metrics of inner-product vectors with the exact scorer.

    Args:
        user_vectors: float32 [num_users, D] (row = user code); item_vectors: float32 [num_items, D].
        relevant: CSR over users of the relevant items.
        exclude: CSR over users of the items to exclude (seen items), or None.
        ks, users, batch_size, progress: see `evaluate_rankings`.
        num_threads: scorer threads (default: all cores).
    """
    ranker = exact_ranker(user_vectors, item_vectors, ranking_width(ks, len(item_vectors)), num_threads=num_threads)
    return evaluate_rankings(
        ranker,
        relevant,
        num_items=len(item_vectors),
        ks=ks,
        exclude=exclude,
        users=users,
        batch_size=batch_size,
        progress=progress,
        desc="exact",
    )


def evaluate_model(
    model: Any,
    dataset: Any,
    *,
    split: str = "valid",
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int = 2048,
    num_threads: int | None = None,
    progress: bool = True,
    protocol: EvalConfig | None = None,
    shard: tuple[int, int] = (0, 1),
    combine: Callable[[RankingMetrics], None] | None = None,
    device: Any = None,
    graph: Any = None,
) -> EvalResult:
    """Encodes every user and item with `model` (eval mode) and evaluates on `split`.

    Args:
        model: a `TwoTowerModel` (anything with `user_search_vectors` / `item_search_vectors`).
        dataset: a `twotower.data.SplitDataset`.
        split: "valid" (train items excluded) or "test" (train + valid items excluded by default).
        protocol: the evaluation protocol (`twotower.settings.eval.EvalConfig`); default: the defaults.
        shard, combine: one shard of a distributed evaluation, see `evaluate_rankings`.
        device: rank on this torch device (CUDA: on the GPU; None or the CPU: the C++ scorer).
        graph: a `GraphFilter` whose weight is > 0 blends its scores (read from the dataset's training
            histories) into the towers' (`graph_ranker`, on the CPU); None or weight 0: the towers alone.
    """
    targets = split_targets(dataset, split, protocol)
    item_vectors = model.item_search_vectors()
    width = ranking_width(ks, len(item_vectors))
    if graph is not None and graph.weight > 0:
        from twotower.retrieval.graph_rank import graph_ranker

        ranker = graph_ranker(model.user_search_vectors(), item_vectors, graph, csr_pair(dataset.train_history), width)
    else:
        ranker = exact_ranker(model.user_search_vectors(), item_vectors, width, num_threads=num_threads, device=device)
    return evaluate_targets(ranker, targets, num_items=len(item_vectors), ks=ks, progress=progress, desc="exact",
                            batch_size=batch_size, shard=shard, combine=combine)


def evaluate_popularity(
    dataset: Any, *, split: str = "valid", ks: Sequence[int] = (10, 20, 50), progress: bool = True,
    protocol: EvalConfig | None = None,
) -> EvalResult:  # fmt: skip
    """Most-popular baseline (train interaction counts) under the same protocol as `evaluate_model`."""
    counts = np.bincount(np.asarray(dataset.train.items, dtype=np.int64), minlength=dataset.num_items)
    ranker = popularity_ranker(counts, ranking_width(ks, len(counts)))
    return evaluate_targets(ranker, split_targets(dataset, split, protocol),
                            num_items=dataset.num_items, ks=ks, progress=progress, desc="popular")


def evaluate_random(
    dataset: Any, *, split: str = "valid", ks: Sequence[int] = (10, 20, 50), seed: int = 0, progress: bool = True,
    protocol: EvalConfig | None = None,
) -> EvalResult:  # fmt: skip
    """Random baseline (seeded) under the same protocol as `evaluate_model`."""
    ranker = random_ranker(dataset.num_items, ranking_width(ks, dataset.num_items), seed=seed)
    return evaluate_targets(ranker, split_targets(dataset, split, protocol),
                            num_items=dataset.num_items, ks=ks, progress=progress, desc="random")


def evaluate_ann(
    index: Any,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    relevant: Any,
    *,
    exclude: Any | None = None,
    ks: Sequence[int] = (10, 20, 50),
    users: np.ndarray | None = None,
    batch_size: int = 2048,
    num_threads: int | None = None,
    progress: bool = True,
    unreachable: np.ndarray | None = None,
    unreachable_users: int = 0,
    graph: Any = None,
    history: Any = None,
) -> EvalResult:
    """Metrics through the HNSW index, next to the exact scorer's (`unreachable`,
    `unreachable_users`: see `evaluate_rankings`). With a `graph` filter whose weight is > 0 (and
    the `history` CSR over users it reads), both rank by its blend: the exact blend
    (`graph_ranker`) against the index's and the filter's candidates re-ranked (`graph_ann_ranker`).

    `extra` holds, for K = `ranking_width(ks, num_items)`: "ann_recall@K" (mean over users of
    |ANN top-K ∩ exact top-K| / |exact top-K|, both with the same exclusions), "exact_qps" and "ann_qps"
    (users ranked per second by each, ranking time only), and the exact metrics as "exact/<metric>@<k>".
    """
    k = ranking_width(ks, len(item_vectors))
    exact_ids: deque[np.ndarray] = deque()  # per batch; both passes visit the same batches in the same order
    if graph is not None and graph.weight > 0:
        from twotower.retrieval.graph_rank import graph_ann_ranker, graph_ranker

        history = csr_pair(history)
        exact = graph_ranker(user_vectors, item_vectors, graph, history, k)
        ann = graph_ann_ranker(index, user_vectors, item_vectors, graph, history, k)
    else:
        exact = exact_ranker(user_vectors, item_vectors, k, num_threads=num_threads)
        ann = ann_ranker(index, user_vectors, k)

    def exact_recording(batch: np.ndarray, excl: CSRPair | None) -> np.ndarray:
        ids = exact(batch, excl)
        exact_ids.append(ids)
        return ids

    overlap = [0, 0]

    def ann_comparing(batch: np.ndarray, excl: CSRPair | None) -> np.ndarray:
        ids = ann(batch, excl)
        reference = exact_ids.popleft()
        valid = reference >= 0
        ref_ptr = indptr_from_counts(valid.sum(axis=1))
        hits, _ = hit_matrix(ids, ref_ptr, reference[valid])
        overlap[0] += int(hits.sum())
        overlap[1] += int(valid.sum())
        return ids

    common = {
        "num_items": len(item_vectors),
        "ks": ks,
        "exclude": exclude,
        "users": users,
        "batch_size": batch_size,
        "progress": progress,
        "unreachable": unreachable,
        "unreachable_users": unreachable_users,
    }
    exact_result = evaluate_rankings(exact_recording, relevant, desc="exact", **common)
    result = evaluate_rankings(ann_comparing, relevant, desc="hnsw", **common)
    result.extra.update(
        {
            f"ann_recall@{k}": overlap[0] / overlap[1] if overlap[1] else float("nan"),
            "exact_qps": exact_result.num_users / exact_result.extra["rank_seconds"]
            if exact_result.extra["rank_seconds"]
            else float("inf"),
            "ann_qps": result.num_users / result.extra["rank_seconds"]
            if result.extra["rank_seconds"]
            else float("inf"),
            **{f"exact/{name}": value for name, value in exact_result.metrics.items()},
        }
    )
    return result
