"""A training step of two embedding tables scored against each other, without autograd: lookup,
L2 normalisation (optional), scores, their gradient and the row-sparse Adam(W) update, fused.

    saved = table_scores(user_table, item_table, user_ids, item_ids, index, normalize=True)
    loss = my_loss(saved.scores.requires_grad_())      # any loss of the [B, C] scores
    loss.backward()
    table_adam_step(saved, saved.scores.grad, AdamTable(user_table, m_u, v_u, step=t, lr=lr),
                    AdamTable(item_table, m_i, v_i, step=t, lr=lr))

scores[b, j] = f(user_table[user_ids[b]]) . f(item_table[item_ids[index[b, j]]]), f = x / max(||x||, eps)
or the identity: a matrix-factorisation model (id-only towers, dot or cosine) with per-row
candidates. Through autograd such a step is a lookup, a normalisation, `embedding_scores` and two
sparse gradients that `sparse_adam` then re-reads, about forty small ops whose dispatch costs as
much as the memory-bound work. Here forward is one pass, and backward one pass per table that
sums each touched row's gradient (repeated rows coalesced) in a D-sized accumulator and applies
that row's Adam step at once, rows in ascending order: no gradient array is written or read back.
Gradient clipping needs the norm before any update: `table_grad_sq_norm` computes it by a pass
that updates nothing, and `table_adam_step(grad_scale=...)` folds the clip factor into Adam's
coefficients. A row gets exactly `sparse_adam`'s update (the same `_adam_jit.adam_row`).

Dispatch: float32/float64 contiguous CPU tables go to the Numba kernels (one thread,
deterministic); anything else to `table_step_eager`. Imports torch and Numba, nothing from twotower.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _table_step_jit as jit
from ._bounds_jit import checked_indices
from .sparse_adam import _check_hyper, _check_scale, adam_coefficients
from .table_step_eager import (
    AdamTable,
    TableScores,
    table_adam_step_eager,
    table_grad_sq_norm_eager,
    table_scores_eager,
)

__all__ = ["AdamTable", "TableScores", "table_adam_step", "table_grad_sq_norm", "table_scores"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _check(
    query_table: Tensor, item_table: Tensor, query_ids: Tensor, item_ids: Tensor, index: Tensor, eps: float
) -> None:
    for name, t in (("query_table", query_table), ("item_table", item_table), ("query_ids", query_ids),
                    ("item_ids", item_ids), ("index", index)):
        if not isinstance(t, Tensor):
            raise TypeError(f"table_scores: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not query_table.is_floating_point() or item_table.dtype != query_table.dtype:
        raise TypeError(
            f"table_scores: the tables must share one floating dtype, got {query_table.dtype} and {item_table.dtype}"
        )
    for name, t in (("query_ids", query_ids), ("item_ids", item_ids), ("index", index)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"table_scores: {name} must be an integer tensor, got {t.dtype}")
    if (query_table.dim() != 2 or item_table.dim() != 2 or query_ids.dim() != 1 or item_ids.dim() != 1
            or index.dim() != 2):
        raise ValueError(
            "table_scores: query_table [R, D], item_table [S, D], query_ids [B], item_ids [U] and index [B, C] "
            f"expected; got {tuple(query_table.shape)}, {tuple(item_table.shape)}, {tuple(query_ids.shape)}, "
            f"{tuple(item_ids.shape)}, "
            f"{tuple(index.shape)}"
        )
    if query_table.data_ptr() == item_table.data_ptr():
        raise ValueError("table_scores: query_table and item_table are one table; the step updates each table's "
                         "rows once, so a shared table's two gradients would not be summed first")
    if query_table.shape[1] != item_table.shape[1]:
        raise ValueError(
            f"table_scores: query_table has D = {query_table.shape[1]}, item_table D = {item_table.shape[1]}"
        )
    if index.shape[0] != query_ids.shape[0]:
        raise ValueError(f"table_scores: index has {index.shape[0]} rows, query_ids {query_ids.shape[0]}")
    devices = {t.device for t in (query_table, item_table, query_ids, item_ids, index)}
    if len(devices) > 1:
        raise TypeError(f"table_scores: every tensor must be on one device, got {sorted(map(str, devices))}")
    if not eps > 0:
        raise ValueError(f"table_scores: eps must be > 0, got {eps}")


def _kernel_tables(*tables: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in _KERNEL_DTYPES and t.is_contiguous() for t in tables)


def table_scores(query_table: Tensor, item_table: Tensor, query_ids: Tensor, item_ids: Tensor, index: Tensor, *,
                 normalize: bool, eps: float = 1e-12) -> TableScores:
    """Forward: scores[b, j] = f(query_table[query_ids[b]]) . f(item_table[item_ids[index[b, j]]]).

    Args:
        query_table: [R, D] table of the queries (users).
        item_table: [S, D] table of the candidates, query_table's dtype.
        query_ids: [B] rows of query_table (repeats allowed: their gradients add up).
        item_ids: [U] rows of item_table (e.g. a batch's distinct items; repeats allowed).
        index: [B, C] positions in item_ids: row b is scored against item_ids[index[b, j]].
        normalize: f = L2 normalisation with eps (cosine scores), else the identity (dot products).
        eps: lower bound of the norm, as in `F.normalize`.

    Returns:
        `TableScores`: `scores` [B, C] (a plain tensor, outside autograd: make it require grad to
        differentiate a loss of it), the normalised rows and what the backward passes need.

    Raises:
        TypeError / ValueError: wrong types, dtypes, devices or shapes (the argument is named).
        IndexError: an id or index entry out of range (its position and value are named).
    """
    _check(query_table, item_table, query_ids, item_ids, index, eps)
    if not _kernel_tables(query_table, item_table):
        return table_scores_eager(query_table, item_table, query_ids, item_ids, index, normalize=normalize, eps=eps)
    query_np = checked_indices(query_ids.numpy(), query_table.shape[0], "table_scores: query_ids")
    item_np = checked_indices(item_ids.numpy(), item_table.shape[0], "table_scores: item_ids")
    index_np = checked_indices(index.numpy(), item_ids.shape[0], "table_scores: index")
    dim, dtype = query_table.shape[1], query_table.dtype
    query = torch.empty(query_np.shape[0], dim, dtype=dtype)
    items = torch.empty(item_np.shape[0], dim, dtype=dtype)
    scores = torch.empty(index_np.shape, dtype=dtype)
    query_scale, item_scale = np.empty(query_np.shape[0]), np.empty(item_np.shape[0])
    qt, it = query_table.detach().numpy(), item_table.detach().numpy()
    jit.forward(qt, it, query_np, item_np, index_np, bool(normalize), float(eps), query.numpy(), query_scale,
                items.numpy(), item_scale, scores.numpy(), qt.dtype.type(0))
    return TableScores(scores, query, items, query_scale, item_scale, torch.from_numpy(query_np),
                       torch.from_numpy(item_np), torch.from_numpy(index_np), bool(normalize), float(eps),
                       query_table, item_table)


def _slots(slots: np.ndarray | None, rows: int, name: str) -> np.ndarray:
    if slots is None:
        return np.full(rows, -1, dtype=np.int64)
    if not (isinstance(slots, np.ndarray) and slots.dtype == np.int64 and slots.shape == (rows,)
            and slots.flags.c_contiguous and slots.flags.writeable):
        raise ValueError(f"table_step: {name} slots must be a writable int64 array of shape ({rows},)")
    return slots


def _grad(saved: TableScores, grad: Tensor) -> np.ndarray:
    if not isinstance(grad, Tensor) or tuple(grad.shape) != tuple(saved.scores.shape):
        shape = tuple(grad.shape) if isinstance(grad, Tensor) else type(grad).__name__
        raise ValueError(
            f"table_step: grad must be a tensor of the scores' shape {tuple(saved.scores.shape)}, got {shape}"
        )
    return np.ascontiguousarray(grad.detach().to(saved.scores.dtype).numpy())


def _run(saved: TableScores, grad: Tensor, query: AdamTable | None, item: AdamTable | None, grad_scale: float,
         query_slots: np.ndarray | None, item_slots: np.ndarray | None) -> float:
    g = _grad(saved, grad)
    apply = query is not None
    qt, it = saved.query_table.detach().numpy(), saved.item_table.detach().numpy()
    dtype = qt.dtype
    if apply:
        moments = []
        for name, table, weight in (("query", query, saved.query_table), ("item", item, saved.item_table)):
            if table.weight is not weight:
                raise ValueError(
                    f"table_step: the {name} AdamTable's weight is not the table the scores were computed from"
                )
            for moment in ("exp_avg", "exp_avg_sq"):
                t = getattr(table, moment)
                if t.shape != weight.shape or t.dtype != weight.dtype or not _kernel_tables(t):
                    raise ValueError(f"table_step: the {name} table's {moment} must be a contiguous {weight.dtype} "
                                     f"tensor of shape {tuple(weight.shape)}")
                moments.append(t.detach().numpy())
            if isinstance(table.step, bool) or not isinstance(table.step, int) or table.step < 1:
                raise ValueError(f"table_step: the {name} table's step must be an int >= 1, got {table.step!r}")
            _check_hyper(table.lr, table.beta1, table.beta2, table.eps, table.weight_decay)
        query_coef, item_coef = (adam_coefficients(t.step, t.lr, t.beta1, t.beta2, t.eps, t.weight_decay, t.decoupled,
                                                   dtype, grad_scale) for t in (query, item))
        query_slots, item_slots = query.slots, item.slots
    else:
        moments = [np.zeros((1, 1), dtype=dtype)] * 4
        query_coef = item_coef = np.zeros(9, dtype=dtype)
    query_slots = _slots(query_slots, qt.shape[0], "query")
    item_slots = _slots(item_slots, it.shape[0], "item")
    total = jit.backward(g, saved.query.numpy(), saved.query_scale, saved.items.numpy(), saved.item_scale,
                         saved.index.numpy(), saved.query_ids.numpy(), saved.item_ids.numpy(), saved.normalize,
                         saved.eps, qt, moments[0], moments[1], query_coef, query_slots, it, moments[2], moments[3],
                         item_coef, item_slots, apply, dtype.type(0))
    if total < 0:
        query_slots.fill(-1)  # found before any row was updated; the scratch is made usable again
        item_slots.fill(-1)
        raise ValueError("table_step: slots must be all -1 on entry (reuse the arrays a previous call returned, "
                         "or omit them); nothing was updated")
    return float(total)


def table_grad_sq_norm(saved: TableScores, grad: Tensor, *, query_slots: np.ndarray | None = None,
                       item_slots: np.ndarray | None = None) -> float:
    """The squared L2 norm of both tables' gradient given grad = dL/dscores, repeated rows summed
    first (the norm of the coalesced sparse gradients, as gradient clipping takes it). Updates nothing.

    Args:
        saved: what `table_scores` returned.
        grad: [B, C] gradient of the loss with respect to `saved.scores`.
        query_slots, item_slots: optional int64 scratch of each table's row count, all -1 (returned
            all -1), reused across calls; allocated per call when omitted.
    """
    if not _kernel_tables(saved.query_table, saved.item_table):
        return table_grad_sq_norm_eager(saved, grad)
    return _run(saved, grad, None, None, 1.0, query_slots, item_slots)


def table_adam_step(saved: TableScores, grad: Tensor, query: AdamTable, item: AdamTable, *,
                    grad_scale: float = 1.0) -> None:
    """In place: one Adam(W) step on every row of the two tables that the scores read, with the
    gradient given by grad = dL/dscores (times `grad_scale`), as `sparse_adam` would step them
    with the sparse gradients autograd would give; untouched rows are left alone.

    Args:
        saved: what `table_scores` returned; its tables must be `query.weight` and `item.weight`.
        grad: [B, C] gradient of the loss with respect to `saved.scores`.
        query, item: each table with its moments, Adam settings, step number (counting from 1) and
            optional slots scratch.
        grad_scale: > 0; gradient clipping's factor (see `table_grad_sq_norm`).

    Raises:
        ValueError: a shape, a moment, a step, a hyper-parameter or the scratch is wrong (named);
            nothing is updated then.
    """
    _check_scale(grad_scale)
    if not _kernel_tables(saved.query_table, saved.item_table):
        table_adam_step_eager(saved, grad, query, item, grad_scale=grad_scale)
        return
    _run(saved, grad, query, item, grad_scale, None, None)

