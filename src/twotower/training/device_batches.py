"""A device-resident epoch (`DeviceBatches`, `batches.on_device`): the training pairs, each user's
positives and the sampler tables are copied to the training device once, and every batch is built
there by torch ops of fixed shapes (`twotower.kernels.device_samplers`): the shuffle, the rows of a
batch, per-row negatives with exact exclusion of the user's positives, shared negatives, the
log-probabilities of the logQ correction and the batch's distinct items. A CUDA step then needs no
host-to-device copy and no host synchronisation to get its batch, which the CPU-built batches of
`twotower.training.batches.BatchIterator` (Numba samplers in a worker thread) cost every step.

The batches follow the same laws as `BatchIterator`'s (the same uniform and popularity
distributions, exclusions and log-q definitions, the same sharding of a global batch across ranks)
from a different random stream: a seed gives the same batches on every run and device type, not
the batches of the CPU iterator. Each batch draws from generators seeded by (seed, epoch, stream,
batch index[, rank]), so no draw depends on the order in which batches are built.

The streaming frequency estimate (`batches.log_q = "streaming"`) is updated on the device too
(`twotower.kernels.frequency_device`, the host estimator's numbers), in consumption order. Hard
negatives are mined on the host once per epoch (`set_candidates`); each user's eligible candidates
(ranks in `hard_rank_range`, no padding, no positive) are then compacted and uploaded once, and
every batch draws ranks among them on the device, falling back to uniform draws for a user with none.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from twotower.kernels import device_samplers as ds
from twotower.kernels import samplers
from twotower.kernels._rng import derive_seed
from twotower.kernels.frequency_device import DeviceFrequencyEstimator
from twotower.settings.batches import BatchConfig
from twotower.training.batches import EpochIterator, check_candidates, check_pairs, check_shard, no_negative_error
from twotower.training.prefetch import EpochBatches

__all__ = ["DeviceBatch", "DeviceBatches"]

_SHUFFLE, _NEGATIVES, _SHARED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class DeviceBatch:
    """One batch as tensors on the training device; the fields of `twotower.training.batches.Batch`.

    `distinct_items` has a fixed length (the batch's item slots: B + B n + M), its distinct ids
    first, then copies of the smallest as padding that no row refers to (`device_samplers.distinct_rows`).
    """

    users: Tensor
    items: Tensor
    negatives: Tensor | None
    negative_log_q: Tensor | None
    shared_negatives: Tensor | None
    shared_log_q: Tensor | None
    item_log_q: Tensor | None
    distinct_items: Tensor
    item_rows: Tensor
    negative_rows: Tensor | None
    shared_rows: Tensor | None
    epoch: int = 0
    index: int = 0


class DeviceBatches(EpochIterator):
    """Yields `DeviceBatch`es over training pairs on `device`, epoch after epoch: the interface of
    `BatchIterator` (`epoch`, `len`, `global_rows`, `state_dict`), built on the device.

    Args:
        users, items: [P] int codes of the training pairs.
        num_items: catalogue size N.
        config: `BatchConfig`.
        history: each user's positives to exclude from per-row negatives (`CSR` or (indptr, indices)).
        device: where the tables live and the batches are built.
        shard: (rank, world) as in `BatchIterator`.

    Raises:
        ValueError: as `BatchIterator` does.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, *, num_items: int, config: BatchConfig,
                 history: Any, device: torch.device | str, shard: tuple[int, int] = (0, 1)) -> None:
        self.shard = check_shard(shard, config)
        self.config = config
        users, items, self.num_items = check_pairs(users, items, num_items)
        self.device = torch.device(device)
        if hasattr(history, "indptr"):
            history = (history.indptr, history.indices)
        index = samplers.build_exclusion_index(history[0], history[1], self.num_items)  # validates it
        if users.max() >= index.num_rows:
            raise ValueError(f"users holds code {users.max()} but history has {index.num_rows} rows")
        self._pairs = users.size
        self._users = torch.from_numpy(users.astype(np.int64)).to(self.device)
        self._items = torch.from_numpy(items.astype(np.int64)).to(self.device)
        self._segments = ds.Segments.from_csr(index.indptr, index.indices, self.device)
        self._index = index
        # set_candidates' (eligible [U, W], counts [U]): pending until the next epoch starts, then in use.
        self._pending_candidates: tuple[Tensor, Tensor] | None = None
        self._candidates: tuple[Tensor, Tensor] | None = None
        counts = np.bincount(items, minlength=self.num_items).astype(np.float64)
        self._item_log_p = torch.from_numpy(np.log(np.maximum(counts, 1e-300) / counts.sum())).float().to(self.device)
        popular = config.negative_kind == "popularity" or (
            config.num_shared_negatives and config.shared_negative_kind == "popularity")
        self._table = (ds.WeightTable.build(samplers.popularity_weights(counts, config.popularity_alpha),
                                            self._segments) if popular else None)
        self._check_negatives_possible(users)
        self._estimator = (DeviceFrequencyEstimator(config.streaming_buckets, num_hashes=config.streaming_hashes,
                                                    learning_rate=config.streaming_learning_rate,
                                                    seed=derive_seed(config.seed, 3), device=self.device)
                           if config.log_q == "streaming" else None)
        self._next_epoch = 0

    @property
    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """The training history (indptr, indices) the batches were built with, validated: each
        user's positives, sorted."""
        return self._index.indptr, self._index.indices

    def _check_negatives_possible(self, users: np.ndarray) -> None:
        cfg = self.config
        if cfg.negative_kind == "none" or not cfg.exclude_positives:
            return
        present = torch.from_numpy(np.unique(users)).to(self.device)
        if cfg.negative_kind == "popularity":  # counted, not weighed: a float difference can miss a zero
            weighted = (self._table.weights > 0).long()
            prefix = torch.cat([weighted.new_zeros(1), torch.cumsum(weighted[self._segments.items], 0)])
            indptr = self._segments.indptr
            held = prefix[indptr[present + 1]] - prefix[indptr[present]]
            full, what = held >= weighted.sum(), "every item of nonzero popularity weight"
        else:
            full, what = self._segments.degrees(present) >= self.num_items, "every item"
        if bool(full.any()):
            raise no_negative_error(int(full.sum()), int(present[full][0]), what)

    def epoch(self, epoch: int) -> EpochBatches[DeviceBatch]:
        """The batches of epoch `epoch` (a context manager), built as they are asked for."""
        epoch = self._start_epoch(epoch)
        self._candidates = self._pending_candidates
        order = self._order(epoch)
        return EpochBatches(lambda index: self._batch(order, epoch, index), len(self), 0, self._finish)

    def _finish(self, batch: DeviceBatch) -> DeviceBatch:
        """The streaming estimate, updated with each batch in consumption order (as `BatchIterator`'s)."""
        if self._estimator is None:
            return batch
        self._estimator.update(batch.items)
        per_draw = self._estimator.probability(batch.items) / self.config.batch_size
        return dataclasses.replace(batch, item_log_q=torch.log(per_draw).float())

    def set_candidates(self, candidates: np.ndarray) -> None:
        """Candidate lists for hard negatives, [U, C] item ids ranked best first (-1 pads), as
        `BatchIterator.set_candidates`; each user's eligible ones are compacted here, on the host,
        and uploaded once. Takes effect at the next epoch started."""
        users = self._index.num_rows
        cand = check_candidates(candidates, users, self.num_items)
        a, b = self.config.hard_rank_range
        window = cand[:, a:b].astype(np.int64)
        eligible = window >= 0
        if self.config.exclude_positives and window.size:
            keys = np.repeat(np.arange(users, dtype=np.int64), np.diff(self._index.indptr)) * self.num_items \
                + self._index.indices
            asked = np.arange(users, dtype=np.int64)[:, None] * self.num_items + np.maximum(window, 0)
            found = np.searchsorted(keys, asked).clip(max=max(keys.size - 1, 0))
            eligible &= ~((keys.size > 0) & (keys[found] == asked))
        order = np.argsort(~eligible, axis=1, kind="stable")  # eligible first, in rank order
        compact = np.take_along_axis(window, order, axis=1)
        self._pending_candidates = (torch.from_numpy(np.ascontiguousarray(compact)).to(self.device),
                                    torch.from_numpy(eligible.sum(axis=1)).to(self.device))

    # -- building -------------------------------------------------------------------------------
    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.config.seed, *parts))

    def _order(self, epoch: int) -> Tensor:
        if not self.config.shuffle:
            return torch.arange(self._pairs, device=self.device)
        return torch.randperm(self._pairs, generator=self._generator(epoch, _SHUFFLE), device=self.device)

    def _stream(self, epoch: int, stream: int, index: int) -> torch.Generator:
        rank, world = self.shard
        return self._generator(epoch, stream, index) if world == 1 else self._generator(epoch, stream, index, rank)

    def _batch(self, order: Tensor, epoch: int, index: int) -> DeviceBatch:
        cfg, (rank, world) = self.config, self.shard
        b = cfg.batch_size * world
        rows = order[index * b:(index + 1) * b]
        if world > 1:
            rows = torch.tensor_split(rows, world)[rank]
        users, items = self._users[rows], self._items[rows]
        log_q_on = cfg.log_q != "none"
        negatives = negative_log_q = shared = shared_log_q = None
        if cfg.negative_kind != "none":
            negatives, negative_log_q = self._negatives(users, self._stream(epoch, _NEGATIVES, index))
            negative_log_q = negative_log_q if log_q_on else None
        if cfg.num_shared_negatives:
            generator = self._stream(epoch, _SHARED, index)
            if cfg.shared_negative_kind == "uniform":
                shared, shared_log_q = ds.uniform(cfg.num_shared_negatives, self.num_items, generator, self.device)
            else:
                shared, shared_log_q = ds.weighted(self._table, cfg.num_shared_negatives, generator)
            shared_log_q = shared_log_q if log_q_on else None
        item_log_q = self._item_log_p[items] if cfg.log_q == "static" else None
        parts = [items] + [p.reshape(-1) for p in (negatives, shared) if p is not None]
        distinct, slots = ds.distinct_rows(torch.cat(parts) if len(parts) > 1 else items)
        pieces = torch.split(slots, [p.numel() for p in parts])
        return DeviceBatch(
            users=users, items=items, negatives=negatives, negative_log_q=negative_log_q, shared_negatives=shared,
            shared_log_q=shared_log_q, item_log_q=item_log_q, distinct_items=distinct, item_rows=pieces[0],
            negative_rows=None if negatives is None else pieces[1].reshape(negatives.shape),
            shared_rows=None if shared is None else pieces[-1], epoch=epoch, index=index,
        )

    def _negatives(self, users: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Per-row negatives [B, n] and their per-draw log-probabilities [B, n] (None for hard ones:
        mined, not drawn from a known law)."""
        cfg, n = self.config, self.config.num_negatives
        if cfg.negative_kind == "hard":
            return self._hard(users, generator), None
        if cfg.negative_kind == "uniform":
            if cfg.exclude_positives:
                ids, row_log_q = ds.uniform_excluding(self._segments, users, n, self.num_items, generator)
                return ids, row_log_q[:, None].expand(-1, n).contiguous()
            ids = torch.randint(0, self.num_items, (users.numel(), n), generator=generator, device=self.device)
            return ids, torch.full(ids.shape, -math.log(self.num_items), dtype=torch.float32, device=self.device)
        if cfg.exclude_positives:
            return ds.weighted_excluding(self._table, self._segments, users, n, generator)
        ids, log_q = ds.weighted(self._table, users.numel() * n, generator)
        return ids.reshape(-1, n), log_q.reshape(-1, n)

    def _hard(self, users: Tensor, generator: torch.Generator) -> Tensor:
        """[B, n] draws, with replacement, among each user's eligible candidates; uniform ones (with the
        exclusion setting) for a user with none, or before the first `set_candidates`."""
        n = self.config.num_negatives
        if self.config.exclude_positives:
            fallback, _ = ds.uniform_excluding(self._segments, users, n, self.num_items, generator)
        else:
            fallback = torch.randint(0, self.num_items, (users.numel(), n), generator=generator, device=self.device)
        if self._candidates is None or self._candidates[0].shape[1] == 0:
            return fallback
        eligible, counts = self._candidates[0][users], self._candidates[1][users]
        rank = (torch.rand((users.numel(), n), generator=generator, device=self.device, dtype=torch.float64)
                * counts[:, None]).long().clamp(max=eligible.shape[1] - 1)
        return torch.where(counts[:, None] > 0, eligible.gather(1, rank), fallback)
