"""One Adam / AdamW step on the rows of an embedding table that a batch touched ("lazy" Adam).

    sparse_adam(table, exp_avg, exp_avg_sq, rows, grads, step=t, lr=1e-3)   # in place

A batch reads a few thousand rows of tables that may hold millions; a dense optimizer still reads
and writes the weight, both moments and the gradient of every row, every step (44% of a CPU step on
two 20k x 64 tables, and a dense [R, D] gradient to zero and scatter first). Here the gradient
arrives as (rows [P], grads [P, D]), e.g. the indices and values of the sparse gradient of
`nn.Embedding(sparse=True)`; repeated rows are summed, then each distinct row takes exactly the
update `torch.optim.Adam` / `AdamW` would give it. Rows a batch does not touch keep their weights
and moments (no momentum drift, no weight decay): the semantics of TensorFlow's LazyAdam and
`torch.optim.SparseAdam`, with decoupled weight decay added.

Dispatch: contiguous float32/float64 CPU tensors go to the Numba kernel (one pass to find the
distinct rows through a per-table slot array, the few repeated rows summed aside, one pass to
update; untouched rows are never read); anything else goes to `sparse_adam_eager`. Imports
torch and Numba, nothing from twotower.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor

from ._adam_jit import adam_row, ascending_rows
from ._bounds_jit import checked_indices
from .sparse_adam_eager import sparse_adam_eager

__all__ = ["adam_coefficients", "sparse_adam"]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _step(param, exp_avg, exp_avg_sq, rows, grads, slots, order, coefficients):
    """`slots` [R] is all -1 on entry and on exit; `order` [P] is scratch; `coefficients` from
    `adam_coefficients` (see `_adam_jit`).

    A row met once reads its gradient where it is (slots[r] = its position in `grads`); only rows
    that repeat (in a training batch: the unknown-id row that id dropout maps to, a few users) are
    summed, into a side buffer (slots[r] = -2 - k), so no [P, D] copy of the gradients is written."""
    dim = param.shape[1]
    count = 0
    repeats = 0
    side_rows = np.empty(rows.shape[0], dtype=np.int64)  # the row of each side slot, to check slots by
    for p in range(rows.shape[0]):  # first pass: distinct rows in order; repeated rows numbered
        r = rows[p]
        s = slots[r]
        if s == -1:
            slots[r] = p
            order[count] = r
            count += 1
        elif s >= 0:  # met a second time: the row gets side slot k = repeats
            if s >= p or rows[s] != r:
                return False  # not a mark of this call: `slots` was not all -1
            slots[r] = -2 - repeats
            side_rows[repeats] = r
            repeats += 1
        elif -2 - s >= repeats or side_rows[-2 - s] != r:
            return False
    side = np.zeros((repeats, dim), dtype=grads.dtype)
    for p in range(rows.shape[0]):  # sum each repeated row's gradients, in the order met
        s = slots[rows[p]]
        if s <= -2:
            k = -2 - s
            for d in range(dim):
                side[k, d] += grads[p, d]
    if not ascending_rows(order, count, slots):
        return False
    for c in range(count):
        r = order[c]
        s = slots[r]
        slots[r] = -1
        adam_row(param, exp_avg, exp_avg_sq, r, grads[s] if s >= 0 else side[-2 - s], coefficients)
    return True


def check_table_rows(op: str, param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor) -> None:
    """A 2-d table, its two Adam moments alike, and a 1-d integer tensor of rows (`op` names the caller)."""
    if param.dim() != 2:
        raise ValueError(f"{op}: param must be a 2-d table [R, D], got shape {tuple(param.shape)}")
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.shape != param.shape or t.dtype != param.dtype or t.device != param.device:
            raise ValueError(f"{op}: {name} must match param {tuple(param.shape)} {param.dtype} {param.device}")
    if rows.dim() != 1 or rows.is_floating_point() or rows.dtype == torch.bool:
        raise TypeError(f"{op}: rows must be a 1-d integer tensor, got {rows.dtype} {tuple(rows.shape)}")


def _check(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, grads: Tensor, step: int) -> None:
    check_table_rows("sparse_adam", param, exp_avg, exp_avg_sq, rows)
    if grads.dim() != 2 or grads.shape != (rows.shape[0], param.shape[1]):
        raise ValueError(
            f"sparse_adam: grads must be [P, D] = [{rows.shape[0]}, {param.shape[1]}], got {tuple(grads.shape)}"
        )
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"sparse_adam: step must be an int >= 1 (the step being taken), got {step!r}")


def _check_hyper(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """torch.optim.Adam's ranges (a beta of 1 would divide by zero in the bias correction)."""
    for name, value, ok in (("lr", lr, 0 <= lr < math.inf), ("beta1", beta1, 0 <= beta1 < 1),
                            ("beta2", beta2, 0 <= beta2 < 1), ("eps", eps, 0 < eps < math.inf),
                            ("weight_decay", weight_decay, 0 <= weight_decay < math.inf)):
        if not ok:
            raise ValueError(f"sparse_adam: {name} out of range: {value!r}")


def _check_scale(grad_scale: float) -> None:
    if not 0 < grad_scale < math.inf:
        raise ValueError(f"sparse_adam: grad_scale must be positive and finite, got {grad_scale!r}")


def adam_coefficients(step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                      decoupled: bool, dtype: np.dtype, grad_scale: float = 1.0) -> np.ndarray:
    """The scalars of Adam(W) step `step` for the `_adam_jit.adam_row` kernel, in `dtype`, with the
    gradient scale `grad_scale` folded in (see `_adam_jit`)."""
    s = float(grad_scale)
    return np.array([beta1, (1.0 - beta1) * s, beta2, (1.0 - beta2) * s * s, eps,
                     0.0 if decoupled else weight_decay / s, 1.0 - lr * weight_decay if decoupled else 1.0,
                     lr / (1.0 - beta1**step), 1.0 / math.sqrt(1.0 - beta2**step)], dtype=dtype)


def sparse_adam(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, grads: Tensor, *, step: int,
                lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                decoupled: bool = True, slots: np.ndarray | None = None, grad_scale: float = 1.0) -> None:
    """In place: one Adam(W) step on the distinct `rows` of `param`, with their summed `grads`.

    Args:
        param: [R, D] table (updated in place).
        exp_avg, exp_avg_sq: [R, D] first and second moments (updated in place).
        rows: [P] integer rows in [0, R), repeats allowed (their gradients are summed).
        grads: [P, D] gradient of each entry of `rows`.
        step: the step being taken, counting from 1 (bias correction, as torch's Adam).
        lr, beta1, beta2, eps: as `torch.optim.Adam`.
        weight_decay: decoupled (AdamW) when `decoupled`, else L2 added to the gradient (Adam);
            applied to touched rows only.
        slots: optional int64 [R] scratch, all -1, reused across calls (returned all -1); one is
            allocated per call when omitted.
        grad_scale: the gradients are taken times this (> 0; gradient clipping), at no extra pass.

    Raises:
        ValueError / TypeError: shapes, dtypes, step or a hyper-parameter wrong (the argument is named).
        IndexError: a row outside [0, R) (its position and value are named); nothing is updated.
    """
    _check(param, exp_avg, exp_avg_sq, rows, grads, step)
    _check_hyper(lr, beta1, beta2, eps, weight_decay)
    _check_scale(grad_scale)
    if rows.numel() == 0:
        return
    kernel = (param.device.type == "cpu" and param.dtype in (torch.float32, torch.float64)
              and all(t.is_contiguous() for t in (param, exp_avg, exp_avg_sq)))
    rows_np = checked_indices(rows.detach().cpu().numpy(), param.shape[0], "sparse_adam: rows")
    if not kernel:
        sparse_adam_eager(param, exp_avg, exp_avg_sq, rows, grads, step=step, lr=lr, beta1=beta1, beta2=beta2,
                              eps=eps, weight_decay=weight_decay, decoupled=decoupled, grad_scale=grad_scale)
        return
    if slots is None:
        slots = np.full(param.shape[0], -1, dtype=np.int64)
    elif not (isinstance(slots, np.ndarray) and slots.dtype == np.int64 and slots.shape == (param.shape[0],)
              and slots.flags.c_contiguous and slots.flags.writeable):
        raise ValueError(f"sparse_adam: slots must be a writable int64 array of shape ({param.shape[0]},)")
    table = param.detach().numpy()
    grads_np = np.ascontiguousarray(grads.detach().numpy(), dtype=table.dtype)
    order = np.empty(rows_np.shape[0], dtype=np.int64)
    coefficients = adam_coefficients(step, lr, beta1, beta2, eps, weight_decay, decoupled, table.dtype, grad_scale)
    # In place through NumPy views: autograd never sees these writes.
    if not _step(table, exp_avg.detach().numpy(), exp_avg_sq.detach().numpy(), rows_np, grads_np, slots,
                 order, coefficients):
        slots.fill(-1)  # found before any row was updated; the scratch is made usable again
        raise ValueError("sparse_adam: slots must be all -1 on entry (reuse the array a previous call "
                         "returned, or omit it); nothing was updated")
