"""Training on many processes and machines with torch.distributed, negatives shared across ranks.

Design (issue 18), in the order a step runs:

- Processes. `twotower train` started by `torchrun` finds RANK, WORLD_SIZE, LOCAL_RANK and the
  rendezvous (MASTER_ADDR / MASTER_PORT) in its environment (`Cluster.from_env`); the process group
  is Gloo on the CPU and NCCL on CUDA (each rank on `cuda:LOCAL_RANK`), with `train.distributed_timeout`
  on every collective, so a rank that stops answering ends the job instead of hanging it.
- Batches. `batches.batch_size` and `batches.num_shared_negatives` are per rank. Global batch t is
  what one process would draw with batch size `batch_size x world` and the same seed; rank r takes the
  r-th of `world` near-equal parts of it (`BatchIterator(shard=(rank, world))`), and draws its rows'
  per-row negatives and its share of the shared negatives from streams that carry the rank, so the
  ranks' batches concatenated are one global batch.
- Candidates. Each rank encodes its own rows, then all-gathers with autograd (functional
  collectives' `all_gather_single_autograd`, one contiguous buffer: its backward reduce-scatters,
  summing every rank's gradient of a slice into the rank that owns it) the vectors every rank's
  loss needs: in the in-batch kinds its positives, its per-row negatives (which those kinds pool)
  and its shared negatives; in the per-row kinds its shared negatives only (a row's own negatives
  concern that row alone). Along with them travel the candidates' item ids (accidental hits are
  masked across ranks), the users of the positives (a row of the same user on another rank leaves
  the softmax, as it does in one process) and their log-q, corrected for the global candidate set:
  log(B p) with B the global batch, log(B n q) for pooled per-row negatives, log(M world q) for
  shared ones.
- Loss. Each rank computes the loss of its own queries against all candidates (the local-loss
  scheme), scaled by world x b_r / B (b_r its rows, B the global batch; 1 when the ranks' parts
  are equal): the global batch's mean loss is then the mean of the ranks' losses, and the gradient
  that `sync_gradients` averages over the ranks is the single-process gradient of the global batch
  (the autograd gather has already summed the other ranks' gradients of this rank's candidates).
- Parameters. `sync_gradients` all-reduces the dense gradients in one flat buffer and all-gathers
  the rows of the row-sparse ones (the embedding tables of `optim.sparse_embeddings`) with their
  gradients, so every rank applies the same optimizer step and the weights stay identical. Rather
  than DDP: its reducer hooks a module's forward, which the step does not have (the towers are called
  piecewise, the item table read in place by `embedding_scores`), and NCCL has no sparse all-reduce;
  the row all-gather moves only the touched rows (about 2 x B x (1 + n) rows at most), where a dense
  all-reduce of the tables moves the whole catalogue every step. What DDP would add is overlapping the
  all-reduce with the backward pass (buckets): for these models the dense parameters are small.
- The fused table step (`train.fused_step`) steps the id tables outside autograd and does not run
  here: the autograd step trains instead, and the run says so.
- Around the step (`twotower.training.loop`): the validation of each epoch is sharded by users
  (`train.distributed_eval = "sharded"`: every rank encodes the catalogue and ranks every world-th
  user, and `Cluster.reduce_metrics` all-reduces the metric sums) or run by rank 0 alone ("rank0");
  rank 0 selects the epoch, writes checkpoints, `best/`, the model and the logs, after a barrier,
  and broadcasts the early-stopping state; the final test evaluation is rank 0's. Each rank's torch
  RNG (dropout) is its own stream and every checkpoint holds all of them, so `--resume` with the
  same world size continues bit-identically; another world size is refused (its batches would differ).

Not supported (refused with a message naming the setting): `loss.symmetric` (the item-to-query
direction would need every rank's queries), `batches.log_q = "streaming"` (each rank would estimate
from its slice), `model.item_history` (its pooling leaves out the global batch's pairs).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional

from twotower.losses import IN_BATCH_KINDS, IndexedRows, LossInputs
from twotower.metrics import RankingMetrics
from twotower.model.two_tower import TwoTowerModel
from twotower.training.batches import Batch
from twotower.training.known_positives import KnownPositives
from twotower.training.optim import clip_grad_norm
from twotower.training.step import batch_inputs

__all__ = ["ONE_PROCESS", "Cluster", "DistributedStep", "gather_candidates", "shard_sizes", "sync_gradients",
           "unsupported"]


@dataclass(frozen=True)
class Cluster:
    """This process's place among the ranks of a run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env() -> Cluster:
        """The ranks torchrun (or any launcher setting RANK and WORLD_SIZE) started this process among."""
        env = os.environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
            local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        except ValueError as err:
            raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun): {err}") from None
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK {rank} and WORLD_SIZE {world} do not describe a rank of a group")
        return Cluster(rank, world, local_rank, local_world)

    def start(self, device_type: str, timeout_s: float) -> bool:
        """Joins the process group (Gloo on the CPU, NCCL on CUDA) unless it is up or not needed;
        whether it joined (and so should `stop`)."""
        if not self.active or dist.is_initialized():
            return False
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return True

    def stop(self) -> None:
        """Leaves the process group `start` joined."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a Python object: pickled in memory, never written)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reduce_metrics(self, acc: RankingMetrics) -> None:
        """Every rank's evaluation shard combined, in place, on every rank: metric sums and user
        counts added, the items each cutoff listed OR-ed (an all-reduce on the group's device)."""
        if not self.active:
            return
        sums, users, seen = acc.totals()
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        totals = torch.from_numpy(np.append(sums, float(users))).to(device)
        listed = torch.from_numpy(seen.astype(np.uint8)).to(device)
        dist.all_reduce(totals)
        dist.all_reduce(listed, op=dist.ReduceOp.MAX)
        totals, listed = totals.cpu().numpy(), listed.cpu().numpy()
        acc.set_totals(totals[:-1], int(round(totals[-1])), listed.astype(bool))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


ONE_PROCESS = Cluster()  # the run of a single process


def unsupported(config: Any) -> str | None:
    """Why these settings (a `TrainConfig`) cannot train across processes, the setting named; or None."""
    reasons = (
        (config.loss.symmetric, "loss.symmetric is not supported in distributed training (its item-to-query "
                                "direction needs every rank's queries): set loss.symmetric = false"),
        (config.batches.log_q == "streaming", "batches.log_q = 'streaming' is not supported in distributed training "
                                              "(each rank would estimate from its own slice): use 'static'"),
        (config.model.item_history, "model.item_history is not supported in distributed training (its pooling "
                                    "leaves out the global batch's pairs): set it to false"),
    )
    return next((why for failed, why in reasons if failed), None)


def shard_sizes(global_rows: int, world: int) -> list[int]:
    """Rows of each rank in a global batch of `global_rows` (`numpy.array_split`'s parts)."""
    base, extra = divmod(global_rows, world)
    return [base + (r < extra) for r in range(world)]


def _gather_rows(x: torch.Tensor, sizes: Sequence[int], autograd: bool) -> list[torch.Tensor]:
    """Every rank's rows of `x` ([sizes[rank], ...]), padded to the largest part for the collective
    and cut back; through autograd (gradients flow back to each rank's rows) when `autograd`."""
    most = max(sizes)
    padded = x if x.shape[0] == most else torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    if autograd:  # one contiguous [world x most, ...] buffer; its backward reduce-scatters (sums) the gradients
        gathered = functional.all_gather_single_autograd(padded.contiguous(), 0, dist.group.WORLD)
        parts = list(gathered.view(len(sizes), most, *x.shape[1:]).unbind(0))
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    return [part[:size] for part, size in zip(parts, sizes, strict=True)]


@dataclass
class _Candidates:
    """One rank's candidates as sent to the others: vectors, item ids, users (-1: not a row's
    positive), log-q (None when the run has no correction)."""

    vectors: torch.Tensor
    ids: torch.Tensor
    users: torch.Tensor
    log_q: torch.Tensor | None


def _own_candidates(x: LossInputs, in_batch: bool) -> tuple[_Candidates, int]:
    """What this rank sends: in the in-batch kinds its positives, flattened per-row negatives and
    shared negatives; in the per-row kinds its shared negatives. Also how many leading rows are the
    rank's in-batch candidates (the positives and per-row negatives its own loss already has)."""
    parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]] = []
    if in_batch:
        positive = x.positive.gathered()[:, 0] if isinstance(x.positive, IndexedRows) else x.positive
        parts.append((positive, x.item_ids, x.user_ids, x.item_log_q))
        if x.negatives is not None:
            negatives = x.negatives.gathered() if isinstance(x.negatives, IndexedRows) else x.negatives
            log_q = None if x.negative_log_q is None else x.negative_log_q.reshape(-1)
            parts.append((negatives.reshape(-1, negatives.shape[-1]), x.negative_ids.reshape(-1), None, log_q))
    own = sum(p[0].shape[0] for p in parts)
    if x.shared_negatives is not None:
        parts.append((x.shared_negatives, x.shared_ids, None, x.shared_log_q))
    log_qs = [p[3] for p in parts]
    if any(q is None for q in log_qs) and not all(q is None for q in log_qs):
        raise ValueError("distributed training: some candidate sets carry log-q and others not")
    ids = torch.cat([p[1].long() for p in parts])
    users = torch.cat([p[2].long() if p[2] is not None else torch.full_like(p[1].reshape(-1), -1).long()
                       for p in parts])
    return _Candidates(torch.cat([p[0] for p in parts]), ids, users,
                       None if log_qs[0] is None else torch.cat([q.float() for q in log_qs])), own


def gather_candidates(x: LossInputs, in_batch: bool, rows: Sequence[int], cluster: Cluster) -> LossInputs:
    """`x` (this rank's loss inputs) with every other rank's candidates added to its shared set.

    `rows` are the ranks' row counts in this global batch (`shard_sizes`). The rank's own in-batch
    candidates stay where they are (its positives on the diagonal of its in-batch block); the other
    ranks' positives and pooled per-row negatives, and every rank's shared negatives, become the
    shared set, with their ids, their users (in-batch kinds: same-user masking) and their log-q."""
    n_neg = 0 if x.negatives is None or not in_batch else x.negative_ids.shape[1]
    shared = 0 if x.shared_negatives is None else x.shared_negatives.shape[0]
    sizes = [r * (1 + n_neg) * in_batch + shared for r in rows]
    if max(sizes) == 0:  # per-row kinds without shared negatives: every row has all it needs
        return x
    mine, own = _own_candidates(x, in_batch)
    vectors = _gather_rows(mine.vectors, sizes, autograd=True)
    ids = _gather_rows(torch.stack([mine.ids, mine.users], dim=1), sizes, autograd=False)
    log_q = None if mine.log_q is None else _gather_rows(mine.log_q, sizes, autograd=False)
    keep = [slice(0, s) if r != cluster.rank else slice(own, s) for r, s in enumerate(sizes)]
    device = x.query.device
    pick = [(v[k], i[k], None if log_q is None else log_q[r][k]) for r, (v, i, k) in enumerate(zip(vectors, ids, keep,
                                                                                                  strict=True))]
    all_ids = torch.cat([p[1] for p in pick]).to(device)
    return replace(
        x,
        shared_negatives=torch.cat([p[0] for p in pick]).to(x.query.dtype),
        shared_ids=all_ids[:, 0],
        shared_user_ids=all_ids[:, 1] if in_batch else None,
        shared_log_q=None if log_q is None else torch.cat([p[2] for p in pick]).to(device),
    )


@torch.no_grad()
def sync_gradients(params: Sequence[torch.Tensor], cluster: Cluster) -> None:
    """Replaces every parameter's gradient by its mean over the ranks: dense gradients through one
    all-reduce of a flat buffer, row-sparse ones (embedding tables) by all-gathering each rank's
    touched rows and their gradients (duplicates summed). A parameter without a gradient on some
    ranks counts as zero there; one without a gradient anywhere keeps none (the optimizer skips it)."""
    if not cluster.active:
        return
    kinds = torch.tensor([0 if p.grad is None else 2 if p.grad.is_sparse else 1 for p in params], dtype=torch.int64,
                         device=params[0].device)  # NCCL reduces device tensors only
    dist.all_reduce(kinds, op=dist.ReduceOp.MAX)
    dense = [p for p, k in zip(params, kinds.tolist(), strict=True) if k == 1]
    sparse = [p for p, k in zip(params, kinds.tolist(), strict=True) if k == 2]
    if dense:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(cluster.world)
        offset = 0
        for p in dense:
            p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    for p in sparse:
        p.grad = _mean_sparse(p, cluster)


def _mean_sparse(param: torch.Tensor, cluster: Cluster) -> torch.Tensor:
    """The ranks' mean of `param`'s row-sparse gradient: each rank's coalesced rows, all-gathered."""
    grad = param.grad
    if grad is None:
        grad = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.long, device=param.device),
                                       param.new_zeros((0, *param.shape[1:])), param.shape, check_invariants=False)
    elif not grad.is_sparse:
        grad = grad.to_sparse(sparse_dim=1)
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    counts = torch.tensor([rows.numel()], dtype=torch.int64, device=param.device)
    sizes = [int(c) for c in _gather_rows(counts, [1] * cluster.world, autograd=False)]
    all_rows = torch.cat(_gather_rows(rows, sizes, autograd=False))
    all_values = torch.cat(_gather_rows(values, sizes, autograd=False)) / cluster.world
    return torch.sparse_coo_tensor(all_rows.unsqueeze(0), all_values, param.shape,
                                   check_invariants=False).coalesce()  # rows of coalesced tensors: valid


class DistributedStep:
    """The autograd step across ranks: encodes this rank's slice of the global batch, gathers the
    candidates (`gather_candidates`), takes the local loss scaled as the module docstring says, and
    after backward averages the gradients (`sync_gradients`) before clipping and the optimizer.

    `global_rows(index)` gives the rows of global batch `index` (`BatchIterator.global_rows`);
    `known` names each batch's known positives (`batches.mask_known_positives`)."""

    def __init__(self, model: TwoTowerModel, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, clip_norm: float, cluster: Cluster, global_rows: Any,
                 known: KnownPositives | None = None) -> None:
        self.model, self.loss_fn, self.optimizer, self.known = model, loss_fn, optimizer, known
        self.device, self.clip_norm, self.cluster = device, clip_norm, cluster
        self.global_rows = global_rows
        self.in_batch = getattr(getattr(loss_fn, "config", None), "kind", None) in IN_BATCH_KINDS
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def loss(self, batch: Batch) -> torch.Tensor:
        """This rank's share of the global batch's loss (see the module docstring)."""
        total = self.global_rows(batch.index)
        rows = shard_sizes(total, self.cluster.world)
        inputs = batch_inputs(self.model, self.loss_fn, batch, self.device, global_rows=total,
                              world=self.cluster.world)
        inputs = gather_candidates(inputs, self.in_batch, rows, self.cluster)
        if self.known is not None:  # after the gather: the other ranks' candidates are checked too
            inputs = self.known.attach(inputs)
        loss = self.loss_fn(inputs)
        mine = rows[self.cluster.rank]
        scale = self.cluster.world if self.loss_fn.config.reduction == "sum" else self.cluster.world * mine / total
        return loss * scale

    def value(self, loss: torch.Tensor) -> float:
        """The global batch's loss: the mean of the ranks' losses (a collective and a host sync:
        every rank sees the same value, so a NaN anywhere stops every rank at the same step)."""
        value = loss.detach().reshape(1).to(torch.float64)
        dist.all_reduce(value)
        return float(value) / self.cluster.world

    def update(self, loss: torch.Tensor) -> None:
        """Backward (the gather's backward is a collective), gradient averaging, clipping, step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(self.params, self.cluster)
        if self.clip_norm > 0:
            clip_grad_norm(self.params, self.clip_norm)
        self.optimizer.step()


def rng_states(cluster: Cluster) -> dict[str, np.ndarray]:
    """Every rank's torch RNG states (dropout draws: the CPU's, and its GPU's on CUDA), for rank 0's
    checkpoint."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    mine = (torch.get_rng_state().numpy(), torch.cuda.get_rng_state().numpy() if cuda else None)
    arrays = {}
    for rank, (cpu_state, cuda_state) in enumerate(cluster.gather(mine)):
        arrays[f"rng.rank{rank}"] = np.asarray(cpu_state)
        if cuda_state is not None:
            arrays[f"rng.cuda.rank{rank}"] = np.asarray(cuda_state)
    return arrays


def restore_rng(arrays: dict[str, np.ndarray], cluster: Cluster) -> None:
    """This rank's RNG states from a checkpoint's `rng_states` (absent: a one-process checkpoint)."""
    state = arrays.get(f"rng.rank{cluster.rank}")
    if state is not None:
        torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state)))
    cuda_state = arrays.get(f"rng.cuda.rank{cluster.rank}")
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(np.ascontiguousarray(cuda_state)))
