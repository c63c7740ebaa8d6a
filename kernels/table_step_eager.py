"""Eager PyTorch `table_step`: the path for tensors the Numba kernels do not take (CUDA, half
precision) and the benchmark baseline. The gradient comes from autograd through `F.embedding`,
`F.normalize` and a gathered product, the update from `sparse_adam_eager`. Tests check it, like the
kernels, against the float64 oracle in `tests/kernels/oracles.py`. Also home of the `TableScores`
and `AdamTable` records both paths share."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .sparse_adam_eager import sparse_adam_eager


class TableScores(NamedTuple):
    """What `table_scores` computed, kept for the backward passes.

    Attributes:
        scores: [B, C] scores (outside autograd).
        query: [B, D] f(query_table[query_ids]).
        items: [U, D] f(item_table[item_ids]).
        query_scale, item_scale: [B] / [U] float64 1 / max(||row||, eps) (1 without normalisation).
        query_ids, item_ids, index: the checked int64 ids and index.
        normalize, eps: as given.
        query_table, item_table: the tables read.
    """

    scores: Tensor
    query: Tensor
    items: Tensor
    query_scale: np.ndarray
    item_scale: np.ndarray
    query_ids: Tensor
    item_ids: Tensor
    index: Tensor
    normalize: bool
    eps: float
    query_table: Tensor
    item_table: Tensor


class AdamTable(NamedTuple):
    """A table with its Adam(W) state and this step's settings (as `sparse_adam` takes them).

    Attributes:
        weight: [R, D] table, updated in place.
        exp_avg, exp_avg_sq: [R, D] moments, updated in place.
        step: the step being taken, counting from 1 (bias correction).
        lr, beta1, beta2, eps: as `torch.optim.Adam`.
        weight_decay: decoupled (AdamW) when `decoupled`, else L2 added to the gradient.
        slots: optional int64 [R] scratch, all -1, reused across calls (returned all -1).
    """

    weight: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = True
    slots: np.ndarray | None = None


def _vectors(table: Tensor, ids: Tensor, normalize: bool, eps: float) -> Tensor:
    rows = F.embedding(ids.long(), table)
    return F.normalize(rows, dim=1, eps=eps) if normalize else rows


def table_scores_eager(query_table: Tensor, item_table: Tensor, query_ids: Tensor, item_ids: Tensor,
                           index: Tensor, *, normalize: bool, eps: float = 1e-12) -> TableScores:
    """Same contract as `table_scores`."""
    with torch.no_grad():
        query = _vectors(query_table, query_ids, normalize, eps)
        items = _vectors(item_table, item_ids, normalize, eps)
        scores = (query.unsqueeze(1) * items[index.long()]).sum(-1)

        def scale(table: Tensor, ids: Tensor) -> np.ndarray:
            norms = table[ids.long()].double().norm(dim=1).clamp(min=eps)
            return (1.0 / norms).cpu().numpy() if normalize else np.ones(ids.shape[0])

        return TableScores(scores, query, items, scale(query_table, query_ids), scale(item_table, item_ids),
                           query_ids.long(), item_ids.long(), index.long(), bool(normalize), float(eps),
                           query_table, item_table)


def _gradients(saved: TableScores, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Dense [R, D] and [S, D] gradients of both tables (zero rows where nothing was read),
    recomputed through autograd from the tables as they are (call before updating them)."""
    query_table = saved.query_table.detach().clone().requires_grad_()
    item_table = saved.item_table.detach().clone().requires_grad_()
    with torch.enable_grad():
        query = _vectors(query_table, saved.query_ids, saved.normalize, saved.eps)
        items = _vectors(item_table, saved.item_ids, saved.normalize, saved.eps)
        scores = (query.unsqueeze(1) * items[saved.index]).sum(-1)
        return torch.autograd.grad(scores, (query_table, item_table), grad.to(scores.dtype))


def table_grad_sq_norm_eager(saved: TableScores, grad: Tensor, *, query_slots: np.ndarray | None = None,
                                 item_slots: np.ndarray | None = None) -> float:
    """Same contract as `table_grad_sq_norm` (the slots scratch is not needed here)."""
    return float(sum(g.double().square().sum() for g in _gradients(saved, grad)))


def table_adam_step_eager(saved: TableScores, grad: Tensor, query: AdamTable, item: AdamTable, *,
                              grad_scale: float = 1.0) -> None:
    """Same contract as `table_adam_step`."""
    grads = _gradients(saved, grad)
    for table, ids, g in ((query, saved.query_ids, grads[0]), (item, saved.item_ids, grads[1])):
        rows = torch.unique(ids)
        sparse_adam_eager(table.weight.data, table.exp_avg, table.exp_avg_sq, rows, g[rows],
                              step=table.step, lr=table.lr, beta1=table.beta1, beta2=table.beta2, eps=table.eps,
                              weight_decay=table.weight_decay, decoupled=table.decoupled, grad_scale=grad_scale)
