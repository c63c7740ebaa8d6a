"""Epoch iterator over training pairs: shuffled batches with negatives (`BatchIterator`), prepared
ahead of the training step by `twotower.training.prefetch`.

Each batch is a pure function of (config.seed, epoch, batch index): the shuffle of an epoch and every
sampler call draw from seeds derived from those three numbers, so the same seed gives the same batches
whatever the thread timing. `_BatchMaker` builds batch `index` of an epoch (the sampler dispatch);
the prefetch worker calls it in a background thread, where the Numba samplers release the GIL, so
the training step overlaps with the sampling of the next batches.

Under distributed training (`shard=(rank, world)`) every batch is a slice of a global batch: the
global batch `index` holds the rows one process would draw with batch size `batch_size * world`
(the same shuffle), and rank r takes the r-th of `world` near-equal parts of it; per-row and shared
negatives are drawn per rank from streams that also carry the rank (`num_shared_negatives` is each
rank's share), so the ranks' batches concatenated are one global batch. A last global batch with
fewer rows than ranks is dropped (a rank with no row has nothing to train).

The one piece of state carried across batches is the streaming frequency estimate (`log_q="streaming"`):
it is updated in the consumer's thread, in consumption order, so it too is deterministic and counts
exactly the batches the trainer used, not the ones prefetched and thrown away at an early stop.

Example:
    >>> import numpy as np
    >>> from twotower.training.batches import BatchConfig, BatchIterator
    >>> users = np.array([0, 0, 1, 2, 2, 2]); items = np.array([0, 3, 1, 2, 4, 0])
    >>> it = BatchIterator(users, items, num_items=5,
    ...                    config=BatchConfig(batch_size=4, num_negatives=2, negative_kind="uniform"))
    >>> with it.epoch(0) as batches:
    ...     shapes = [(b.users.shape, b.negatives.shape) for b in batches]
    >>> shapes
    [((4,), (4, 2)), ((2,), (2, 2))]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from twotower.data.csr import CSR
from twotower.kernels import samplers
from twotower.kernels._rng import derive_seed
from twotower.kernels.codes import check_codes
from twotower.kernels.distinct import distinct
from twotower.settings.batches import BatchConfig
from twotower.training.prefetch import EpochBatches

__all__ = ["Batch", "BatchConfig", "BatchIterator"]

# Sub-stream tags: each sampler of a batch gets its own seed, so adding one never shifts another.
_SHUFFLE, _NEGATIVES, _SHARED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Batch:
    """One training batch; every array is C-contiguous (wrap with `torch.from_numpy`, no copy).

    Attributes:
        users: [B] int64 user codes.
        items: [B] int64 positive item codes.
        negatives: [B, n] int64 per-row negatives, or None.
        negative_log_q: [B, n] float32 log-probability of each per-row negative draw (uniform and
            popularity kinds, when log_q is on), or None.
        shared_negatives: [M] int64 ids shared by all rows, or None.
        shared_log_q: [M] float32 log per-draw probability of each shared id, or None.
        item_log_q: [B] float32 log per-draw probability of each positive under the training stream
            (static: count / total; streaming: estimated occurrences per step / batch_size), for the
            logQ correction of in-batch negatives, or None.
        epoch, index: where the batch comes from.

    Derived on construction (in the iterator's worker thread), so the model encodes each item of
    the batch once:
        distinct_items: [U] int64 the distinct item codes among items, negatives and
            shared_negatives, in order of first occurrence.
        item_rows: [B] int64 position of each positive in `distinct_items`.
        negative_rows: [B, n] int64 position of each per-row negative, or None.
        shared_rows: [M] int64 position of each shared negative, or None.
    """

    users: np.ndarray
    items: np.ndarray
    negatives: np.ndarray | None = None
    negative_log_q: np.ndarray | None = None
    shared_negatives: np.ndarray | None = None
    shared_log_q: np.ndarray | None = None
    item_log_q: np.ndarray | None = None
    epoch: int = 0
    index: int = 0
    distinct_items: np.ndarray = dataclasses.field(init=False, repr=False)
    item_rows: np.ndarray = dataclasses.field(init=False, repr=False)
    negative_rows: np.ndarray | None = dataclasses.field(init=False, repr=False)
    shared_rows: np.ndarray | None = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = [self.items] + [p.reshape(-1) for p in (self.negatives, self.shared_negatives) if p is not None]
        values, inverse = distinct(np.concatenate(parts) if len(parts) > 1 else parts[0])
        rows = np.split(inverse, np.cumsum([p.size for p in parts[:-1]]))
        derived = {
            "distinct_items": values,
            "item_rows": rows[0],
            "negative_rows": None if self.negatives is None else rows[1].reshape(self.negatives.shape),
            "shared_rows": None if self.shared_negatives is None else rows[-1],
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


def check_shard(shard: tuple[int, int], config: BatchConfig) -> tuple[int, int]:
    """(rank, world) of a batch iterator, checked (the streaming estimate is one process's)."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    if world > 1 and config.log_q == "streaming":
        raise ValueError("batches.log_q = 'streaming' is not supported in distributed training (each rank "
                         "would estimate from its own slice): use 'static'")
    return int(rank), int(world)


def check_pairs(users: Any, items: Any, num_items: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """The training pairs' codes and the catalogue size, checked."""
    users = np.asarray(users)
    items = np.asarray(items)
    if users.ndim != 1 or items.shape != users.shape:
        raise ValueError(f"users and items must be 1-D of the same length, got shapes {users.shape} and {items.shape}")
    if users.size == 0:
        raise ValueError("no training pairs: users and items are empty")
    if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 1:
        raise ValueError(f"num_items must be a positive int, got {num_items!r}")
    num_items = int(num_items)
    return (check_codes(users, "users", low=0),
            check_codes(items, f"items (num_items={num_items})", low=0, high=num_items), num_items)


def check_candidates(candidates: Any, num_users: int, num_items: int) -> np.ndarray:
    """Hard-negative candidate lists [U, C] (item ids ranked best first, -1 pads), checked."""
    cand = np.asarray(candidates)
    if cand.ndim != 2 or cand.shape[0] != num_users:
        raise ValueError(f"candidates must be [U={num_users}, C], got shape {cand.shape}")
    if cand.size and not np.issubdtype(cand.dtype, np.integer):
        raise TypeError(f"candidates must hold integer ids, got dtype {cand.dtype}")
    if cand.size and (cand.min() < -1 or cand.max() >= num_items):
        raise ValueError(f"candidates must be item ids in [0, {num_items}) or -1")
    return cand


def no_negative_error(count: int, example: int, what: str) -> ValueError:
    """The error for users whose history leaves no negative to draw."""
    return ValueError(f"{count} user(s) (e.g. user code {example}) have {what} in their history, so no negative "
                      "excluding positives exists for them; drop them or set exclude_positives=False")


class EpochIterator:
    """What the host and the device batch iterators share: the epoch count, the batches per epoch
    (global batches under a shard), the rows of a global batch, and the state to resume from (the
    next epoch and the streaming estimate). Subclasses set `config`, `shard`, `_pairs`,
    `_estimator` and `_next_epoch`, and build an epoch's batches in `epoch`."""

    config: BatchConfig
    shard: tuple[int, int]
    _pairs: int
    _estimator: Any
    _next_epoch: int

    def __len__(self) -> int:
        """Batches per epoch (global batches under a shard: every rank steps as often)."""
        world = self.shard[1]
        n, b = self._pairs, self.config.batch_size * world
        rest = n % b
        return n // b + int(rest >= world and not self.config.drop_last)

    def global_rows(self, index: int) -> int:
        """Rows of global batch `index` over all ranks (the batch itself without a shard)."""
        b = self.config.batch_size * self.shard[1]
        return int(min(b, self._pairs - index * b))

    def _start_epoch(self, epoch: Any) -> int:
        """`epoch`, checked, with the next epoch of `iter` set after it."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._next_epoch = int(epoch) + 1
        return int(epoch)

    def __iter__(self) -> Iterator:
        """The batches of the next epoch (0, then 1, ...)."""
        return self.epoch(self._next_epoch)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to resume from: the next epoch and the streaming estimator (no pickle)."""
        state = {"next_epoch": np.array([self._next_epoch], dtype=np.int64)}
        if self._estimator is not None:
            state.update({f"estimator.{k}": v for k, v in self._estimator.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._next_epoch = int(state["next_epoch"][0])
        if self._estimator is not None:
            self._estimator.load_state_dict(
                {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("estimator.")}
            )


class BatchIterator(EpochIterator):
    """Yields `Batch`es over training pairs, epoch after epoch.

    Args:
        users: [P] int user code of each training pair.
        items: [P] int item code of each training pair.
        num_items: catalogue size N (item codes are in [0, N)).
        config: `BatchConfig`.
        history: each user's positives to exclude from per-row negatives, as `twotower.data`'s `CSR`
            (e.g. `SplitDataset.train_history`) or a tuple (indptr int64 [U + 1], indices int32 [nnz]);
            built from the pairs when None.
        shard: (rank, world): this process's part of every global batch (distributed training; see
            the module docstring); (0, 1) is the whole batch.

    Raises:
        ValueError: mismatched or out-of-range pairs, a bad history, or a user with no possible
            negative (every item in the history, or every item of positive weight for popularity).
    """

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        *,
        num_items: int,
        config: BatchConfig,
        history: Any = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not isinstance(config, BatchConfig):
            raise TypeError(f"config must be a BatchConfig, got {type(config).__name__}")
        self.shard = check_shard(shard, config)
        self.config = config
        self._users, self._items, self.num_items = check_pairs(users, items, num_items)
        self._pairs = self._users.size
        if history is None:
            history = CSR.from_pairs(self._users, self._items, int(self._users.max()) + 1)
        if hasattr(history, "indptr") and hasattr(history, "indices"):  # twotower.data's CSR
            history = (history.indptr, history.indices)
        if not isinstance(history, tuple) or len(history) != 2:
            raise TypeError("history must be a CSR or a tuple (indptr, indices)")
        # Validates the history once; its row bitmaps make every later exclusion test one bit.
        self._index = samplers.build_exclusion_index(history[0], history[1], self.num_items)
        if self._users.max() >= self._index.num_rows:
            raise ValueError(f"users holds code {self._users.max()} but history has {self._index.num_rows} rows")
        self._history = (self._index.indptr, self._index.indices)
        counts = np.bincount(self._items, minlength=self.num_items).astype(np.float64)
        self._item_log_p = np.log(np.maximum(counts, 1e-300) / counts.sum())
        needs_table = config.negative_kind == "popularity" or (
            config.num_shared_negatives and config.shared_negative_kind == "popularity"
        )
        self._table = (samplers.build_alias_table(samplers.popularity_weights(counts, config.popularity_alpha))
                       if needs_table else None)
        self._check_negatives_possible()
        # Each user's positive mass under the popularity table, summed once instead of in every batch.
        self._positive_mass = (
            samplers.popularity_positive_mass(self._index, self._table)
            if config.negative_kind == "popularity" and config.exclude_positives
            else None
        )
        self._candidates: np.ndarray | None = None
        self._estimator = (
            samplers.StreamingFrequencyEstimator(
                config.streaming_buckets,
                num_hashes=config.streaming_hashes,
                learning_rate=config.streaming_learning_rate,
                seed=derive_seed(config.seed, 3),
            )
            if config.log_q == "streaming"
            else None
        )
        self._next_epoch = 0

    def _check_negatives_possible(self) -> None:
        cfg = self.config
        if cfg.negative_kind == "none" or not cfg.exclude_positives:
            return
        indptr, indices = self._history
        if cfg.negative_kind == "popularity":
            positive = (self._table.p > 0).astype(np.int64)
            per_user = np.add.reduceat(np.append(positive[indices], 0), indptr[:-1]) * (np.diff(indptr) > 0)
            full = np.nonzero(per_user >= positive.sum())[0]
            what = "every item of nonzero popularity weight"
        else:
            full = np.nonzero(np.diff(indptr) >= self.num_items)[0]
            what = "every item"
        full = full[np.isin(full, self._users)]
        if full.size:
            raise no_negative_error(full.size, full[0], what)

    @property
    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """The training history (indptr, indices) the batches were built with, validated: each
        user's positives, sorted."""
        return self._index.indptr, self._index.indices

    def set_candidates(self, candidates: np.ndarray) -> None:
        """Candidate lists for hard negatives, [U, C] item ids ranked best first (e.g. the top-K of the
        current model for every user; -1 pads). Takes effect at the next epoch started."""
        cand = check_candidates(candidates, self._history[0].size - 1, self.num_items)
        # int32 lists stay int32 (half the memory for U x C); each batch's rows are widened when drawn.
        self._candidates = np.ascontiguousarray(
            cand, dtype=cand.dtype if cand.dtype in (np.int32, np.int64) else np.int64
        )

    def epoch(self, epoch: int) -> EpochBatches[Batch]:
        """The batches of epoch `epoch` (a context manager; close it to stop early)."""
        make = _BatchMaker(self, self._start_epoch(epoch))
        return EpochBatches(make, len(self), self.config.prefetch, self._finish)

    def _finish(self, batch: Batch) -> Batch:
        """Consumer-side step: the streaming estimate, in consumption order."""
        if self._estimator is None:
            return batch
        self._estimator.update(batch.items)
        with np.errstate(divide="ignore"):
            per_draw = self._estimator.probability(batch.items) / self.config.batch_size
            log_q = np.log(per_draw).astype(np.float32)
        return dataclasses.replace(batch, item_log_q=log_q)


class _BatchMaker:
    """Builds batch `index` of one epoch; a snapshot of what it needs, safe to call from the worker."""

    def __init__(self, owner: BatchIterator, epoch: int) -> None:
        cfg = owner.config
        self.cfg = cfg
        self.epoch = epoch
        self.users = owner._users
        self.items = owner._items
        self.num_items = owner.num_items
        self.exclude = owner._index if cfg.exclude_positives else None
        self.table = owner._table
        self.positive_mass = owner._positive_mass
        self.item_log_p = owner._item_log_p
        self.candidates = owner._candidates
        self.rank, self.world = owner.shard
        self.order: np.ndarray | None = None

    def _rows(self, index: int) -> np.ndarray:
        if self.order is None:  # built lazily, in the worker thread
            n = self.users.size
            rng = np.random.default_rng(derive_seed(self.cfg.seed, self.epoch, _SHUFFLE))
            self.order = rng.permutation(n) if self.cfg.shuffle else np.arange(n)
        b = self.cfg.batch_size * self.world
        rows = self.order[index * b : (index + 1) * b]
        return rows if self.world == 1 else np.array_split(rows, self.world)[self.rank]

    def _seed(self, stream: int, index: int) -> int:
        """The seed of one sampler of one batch; the rank joins it under distributed training."""
        parts = (self.epoch, stream, index) if self.world == 1 else (self.epoch, stream, index, self.rank)
        return derive_seed(self.cfg.seed, *parts)

    def __call__(self, index: int) -> Batch:
        cfg = self.cfg
        rows = self._rows(index)
        users = self.users[rows]
        items = self.items[rows]
        log_q_on = cfg.log_q != "none"
        negatives = negative_log_q = shared = shared_log_q = item_log_q = None
        if cfg.negative_kind != "none":
            seed = self._seed(_NEGATIVES, index)
            if cfg.negative_kind == "uniform":
                negatives = samplers.uniform_negatives(
                    users, self.num_items, cfg.num_negatives, exclude=self.exclude, seed=seed, validate=False
                )
                if log_q_on:
                    row = samplers.uniform_log_q(users, self.num_items, exclude=self.exclude)
                    negative_log_q = np.ascontiguousarray(np.broadcast_to(row[:, None], negatives.shape))
            elif cfg.negative_kind == "popularity":
                negatives = samplers.popularity_negatives(
                    users,
                    self.table,
                    cfg.num_negatives,
                    exclude=self.exclude,
                    seed=seed,
                    validate=False,
                    positive_mass=self.positive_mass,
                )
                if log_q_on:
                    negative_log_q = samplers.popularity_log_q(
                        users, negatives, self.table, exclude=self.exclude, positive_mass=self.positive_mass
                    )
            else:
                cand = self.candidates[users] if self.candidates is not None else np.zeros((users.size, 0), np.int64)
                negatives = samplers.hard_negatives(
                    users,
                    cand,
                    cfg.num_negatives,
                    num_items=self.num_items,
                    exclude=self.exclude,
                    rank_range=cfg.hard_rank_range,
                    seed=seed,
                    validate=False,
                )
        if cfg.num_shared_negatives:
            seed = self._seed(_SHARED, index)
            if cfg.shared_negative_kind == "uniform":
                shared, shared_log_q = samplers.shared_negatives(
                    cfg.num_shared_negatives, num_items=self.num_items, seed=seed
                )
            else:
                shared, shared_log_q = samplers.shared_negatives(cfg.num_shared_negatives, table=self.table, seed=seed)
            if not log_q_on:
                shared_log_q = None
        if cfg.log_q == "static":
            item_log_q = self.item_log_p[items].astype(np.float32)
        return Batch(
            users=users,
            items=items,
            negatives=negatives,
            negative_log_q=negative_log_q,
            shared_negatives=shared,
            shared_log_q=shared_log_q,
            item_log_q=item_log_q,
            epoch=self.epoch,
            index=index,
        )
