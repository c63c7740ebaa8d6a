"""One training step, two ways: through autograd (any model, any loss; `AutogradStep`, here), or
fused for models whose towers are both id tables (matrix factorisation) trained with a per-row loss
(`twotower.training.fused_step.TableStep`).

    step = make_train_step(config, model, loss_fn, optimizer, device)
    loss = step.loss(batch)     # forward; the trainer checks that float(loss) is finite first
    step.update(loss)           # backward, gradient clipping, optimizer step

Both give the same update (the same dropout draws, the same Adam math, to float rounding): the
fused step only skips the towers' autograd graph, which on a CPU step of an MF model is about as
much work as the memory-bound kernels themselves. This module also turns a batch into the loss's
inputs (`batch_loss`, `ids_and_log_q`), which both steps share.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from twotower.losses import IN_BATCH_KINDS, EmbeddingRows, IndexedRows, LossInputs
from twotower.model.two_tower import TwoTowerModel
from twotower.retrieval.scoring import inner_product_form
from twotower.settings import TrainConfig
from twotower.training.batches import Batch
from twotower.training.optim import clip_grad_norm

if TYPE_CHECKING:
    from twotower.training.fused_step import TableStep
    from twotower.training.known_positives import KnownPositives

__all__ = ["AutogradStep", "TrainingDiverged", "batch_inputs", "batch_loss", "ids_and_log_q", "make_train_step"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _tensor(array: np.ndarray | torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A batch field on `device`: host arrays are wrapped (no copy on the CPU); the fields of a
    batch built on the device (`DeviceBatch`) are already there."""
    if array is None:
        return None
    if isinstance(array, torch.Tensor):
        return array.to(device, non_blocking=True)
    tensor = torch.from_numpy(array)
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)


def batch_loss(model: TwoTowerModel, loss_fn: torch.nn.Module, batch: Batch, device: torch.device,
               known: KnownPositives | None = None) -> torch.Tensor:
    """Encodes one batch with both towers and returns its loss (`batch_inputs`, then the loss),
    with the batch's known positives named by `known` (`batches.mask_known_positives`)."""
    inputs = batch_inputs(model, loss_fn, batch, device)
    return loss_fn(inputs if known is None else known.attach(inputs))


def batch_inputs(model: TwoTowerModel, loss_fn: torch.nn.Module, batch: Batch, device: torch.device, *,
                 global_rows: int | None = None, world: int = 1) -> LossInputs:
    """Encodes one batch with both towers into the loss's inputs (`global_rows`, `world`: the
    candidate counts of distributed training, see `ids_and_log_q`).

    logQ: every candidate set is corrected by the log of its expected count, log(draws * q) (see
    `_expected_count`): the M shared negatives by log(M q); per-row negatives by log(n q), or by
    log(B n q) in the in-batch kinds, which pool the B x n of them for every row; in-batch positives
    by log(B p) (in the per-row kinds a row's positive is one draw: log p). Hard negatives are mined,
    not drawn from a known distribution: they are not corrected (log-q 0) when the others are.
    Every item of the batch (positives, per-row and shared negatives) is encoded once (the batch
    lists its distinct items), so a catalogue item drawn many times costs one tower pass, and all its
    occurrences share one vector. Item-side vectors go through the model's inner-product form, so
    every loss (dot products) ranks by the model's scoring."""
    loss_config = getattr(loss_fn, "config", None)
    in_batch = getattr(loss_config, "kind", None) in IN_BATCH_KINDS
    # The item-to-query direction of a symmetric loss softmaxes over queries, where the per-query
    # constant the search form drops (neg_l2's -||q||^2) no longer cancels: keep it there.
    exact = model.config.scoring == "neg_l2" and bool(getattr(loss_config, "symmetric", False))
    users = _tensor(batch.users, device)
    negatives, shared = batch.negatives, batch.shared_negatives
    history_target = _tensor(batch.items, device) if model.config.user_history else None
    query = inner_product_form(model.encode_users(users, exclude_history=history_target), None,
                               model.config.scoring, exact=exact)[0]

    pairs = (_tensor(batch.items, device), users) if model.config.item_history else None
    distinct = _distinct_item_vectors(model, _tensor(batch.distinct_items, device), in_batch or shared is not None,
                                      exact, pairs)
    item_rows = _tensor(batch.item_rows, device)
    # Positives and per-row negatives stay rows of `distinct`: the per-row losses score them in place
    # (gather_scores / embedding_scores); the in-batch losses need the positives gathered.
    positive = distinct[item_rows] if in_batch else IndexedRows(distinct, item_rows.unsqueeze(1))
    negative_rows = None if negatives is None else IndexedRows(distinct, _tensor(batch.negative_rows, device))
    shared_vectors = None if shared is None else distinct[_tensor(batch.shared_rows, device)]
    return LossInputs(query=query, positive=positive, negatives=negative_rows, shared_negatives=shared_vectors,
                      **ids_and_log_q(batch, in_batch, device, global_rows=global_rows, world=world))


def ids_and_log_q(batch: Batch, in_batch: bool, device: torch.device, *, global_rows: int | None = None,
                  world: int = 1) -> dict[str, torch.Tensor | None]:
    """The `LossInputs` fields beyond the vectors: every candidate's id and log expected count
    (`in_batch`: the loss pools every row's candidates, so the positives' count is B draws).
    Distributed training counts the global candidate set: `global_rows` rows over all ranks (B) and
    `world` ranks' shares of shared negatives (M x world)."""
    items, shared = batch.items, batch.shared_negatives
    rows = len(items) if global_rows is None else global_rows
    return {
        "user_ids": _tensor(batch.users, device),
        "item_ids": _tensor(items, device),
        "negative_ids": _tensor(batch.negatives, device),
        "shared_ids": _tensor(shared, device),
        "item_log_q": _tensor(_expected_count(batch.item_log_q, rows if in_batch else 1), device),
        "negative_log_q": _tensor(_negative_log_q(batch, in_batch, rows), device),
        "shared_log_q": _tensor(_expected_count(batch.shared_log_q, 0 if shared is None else len(shared) * world),
                                device),
    }


def _negative_log_q(batch: Batch, in_batch: bool, rows: int) -> np.ndarray | torch.Tensor | None:
    """Per-row negatives' log expected counts; zeros for mined ones when other sets are corrected."""
    if batch.negatives is None:
        return None
    if batch.negative_log_q is None:
        if batch.item_log_q is None and batch.shared_log_q is None:
            return None
        if isinstance(batch.negatives, torch.Tensor):
            return torch.zeros(batch.negatives.shape, dtype=torch.float32, device=batch.negatives.device)
        return np.zeros(batch.negatives.shape, dtype=np.float32)
    n = batch.negatives.shape[1]
    return _expected_count(batch.negative_log_q, rows * n if in_batch else n)


def _distinct_item_vectors(model: TwoTowerModel, codes: torch.Tensor, dense: bool, exact: bool = False,
                           pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | EmbeddingRows:
    """The vectors of a batch's distinct items: left in the item table (`EmbeddingRows`, scored by
    `embedding_scores` without writing them out) when the item tower is an id lookup, the loss
    scores only rows (per-row kinds) and nothing else needs them as a tensor (`dense` False);
    otherwise encoded by the item tower, with the batch's (item, user) `pairs` left out of the items'
    user pooling (`item_history`)."""
    rows = None if dense else model.item_table_rows(codes)
    if rows is None:
        vectors = model.encode_items(codes, exclude_pairs=pairs)
        return inner_product_form(None, vectors, model.config.scoring, exact=exact)[1]
    table, ids, normalize = rows
    return EmbeddingRows(table, ids, normalize, sparse=model.item_tower.id_embedding.sparse)


def _expected_count(log_q: np.ndarray | torch.Tensor | None, draws: int) -> np.ndarray | torch.Tensor | None:
    """log(draws * q): the batch iterator gives per-draw log-probabilities; the sampled-softmax
    correction needs each candidate's expected count in its set, so that the in-batch set (B draws of
    the data distribution) and the shared set (M draws) are weighed correctly against each other."""
    if log_q is None or draws <= 1:
        return log_q
    if isinstance(log_q, torch.Tensor):
        return log_q + math.log(draws)
    return (log_q + np.float32(math.log(draws))).astype(np.float32)


class AutogradStep:
    """The general step: both towers encode the batch (`batch_loss`, which names its known positives
    with `known`), autograd differentiates the loss through them, then clipping and the optimizer."""

    def __init__(self, model: TwoTowerModel, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, clip_norm: float, known: KnownPositives | None = None) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.device, self.clip_norm, self.known = device, clip_norm, known

    def loss(self, batch: Batch) -> torch.Tensor:
        """The batch's loss (a 0-d tensor, differentiable)."""
        return batch_loss(self.model, self.loss_fn, batch, self.device, self.known)

    def update(self, loss: torch.Tensor) -> None:
        """Backward, clipping, one optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm > 0:
            clip_grad_norm([p for g in self.optimizer.param_groups for p in g["params"]], self.clip_norm)
        self.optimizer.step()


def make_train_step(config: TrainConfig, model: TwoTowerModel, loss_fn: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    known: KnownPositives | None = None) -> AutogradStep | TableStep:
    """The fused `TableStep` where it applies (see `TableStep.unsupported`), else `AutogradStep`
    (`known`: the history that names each batch's known positives, `batches.mask_known_positives`)."""
    from twotower.training.fused_step import TableStep  # imported here: fused_step builds on this module

    if TableStep.unsupported(config, model, loss_fn, optimizer, device) is None:
        return TableStep(model, loss_fn, optimizer, config.optim.clip_norm)
    return AutogradStep(model, loss_fn, optimizer, device, config.optim.clip_norm, known)
