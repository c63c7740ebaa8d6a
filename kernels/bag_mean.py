"""Mean of table rows per bag (a user's history pooled from the item table), with a row-sparse,
coalesced gradient.

    pooled = bag_mean(table, values, offsets, keep)   # pooled[b] = mean of table[values[e]], e in bag b, kept

A user tower that pools its history reads tens of item rows per user from the item table. Through
`F.embedding_bag(sparse=True)` the table's gradient holds one [D] row per history entry, which
autograd then concatenates and the optimizer's clipping sorts to coalesce: on a CPU that backward
cost several times the rest of a matrix-factorisation step. This kernel sums each distinct row's
gradient once (a first-appearance slot per row, one pass over the entries) and hands autograd a
sparse gradient with one row per distinct item, or the dense table gradient when `sparse` is off.

Dispatch: float32 and float64 tensors on the CPU go to the Numba kernel (one thread, deterministic);
anything else (CUDA, half precision) to `bag_mean_eager`. Imports torch and Numba, nothing from
twotower.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _bag_mean_jit as jit
from ._bounds_jit import checked_indices
from ._first_order import first_order_only
from .bag_mean_eager import bag_mean_eager

__all__ = ["bag_mean"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _check(table: Tensor, values: Tensor, offsets: Tensor, keep: Tensor | None) -> None:
    for name, t in (("table", table), ("values", values), ("offsets", offsets)):
        if not isinstance(t, Tensor):
            raise TypeError(f"bag_mean: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not table.is_floating_point() or table.dim() != 2:
        raise TypeError(f"bag_mean: table must be a floating [V, D] tensor, got {table.dtype} {tuple(table.shape)}")
    for name, t in (("values", values), ("offsets", offsets)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() != 1:
            raise TypeError(f"bag_mean: {name} must be a 1-d integer tensor, got {t.dtype} {tuple(t.shape)}")
    if offsets.shape[0] < 1:
        raise ValueError("bag_mean: offsets needs B + 1 >= 1 entries")
    if keep is not None and (not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != values.shape):
        raise TypeError(f"bag_mean: keep must be a bool tensor shaped like values {tuple(values.shape)}")
    devices = {t.device for t in (table, values, offsets, *([] if keep is None else [keep]))}
    if len(devices) > 1:
        raise TypeError(f"bag_mean: every tensor must be on one device; got {sorted(map(str, devices))}")
    ends = offsets.detach().cpu()
    if int(ends[0]) != 0 or int(ends[-1]) != values.shape[0] or bool((ends[1:] < ends[:-1]).any()):
        raise ValueError(f"bag_mean: offsets must start at 0, be non-decreasing and end at len(values) = "
                         f"{values.shape[0]}")


class _BagMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, values: np.ndarray, offsets: np.ndarray, keep: np.ndarray | None,
                sparse: bool) -> Tensor:
        weights = table.detach().contiguous()
        batch = offsets.shape[0] - 1
        out = torch.empty(batch, weights.shape[1], dtype=weights.dtype)
        inverse_counts = np.empty(batch, dtype=weights.numpy().dtype)
        use_keep = keep is not None
        keep_array = keep if use_keep else np.ones(1, dtype=np.bool_)
        jit.forward(weights.numpy(), values, offsets, keep_array, use_keep, out.numpy(), inverse_counts)
        ctx.saved = (values, offsets, keep_array, use_keep, inverse_counts)
        ctx.table_shape, ctx.sparse = tuple(weights.shape), sparse
        return out

    @staticmethod
    @first_order_only  # a second derivative is an error, not a silent zero
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        values, offsets, keep, use_keep, inverse_counts = ctx.saved
        num_rows, dim = ctx.table_shape
        grad = grad.detach().contiguous()
        slots = np.full(num_rows, -1, dtype=np.int64)
        rows, entry_slot = jit.distinct_rows(values, offsets, keep, use_keep, slots)
        grad_rows = torch.zeros(rows.shape[0], dim, dtype=grad.dtype)
        jit.backward_rows(grad.numpy(), offsets, entry_slot, inverse_counts.astype(grad.numpy().dtype),
                          grad_rows.numpy())
        index = torch.from_numpy(rows)
        if ctx.sparse:
            sparse_grad = torch.sparse_coo_tensor(
                index.unsqueeze(0), grad_rows, (num_rows, dim), check_invariants=False
            )
            return sparse_grad, None, None, None, None
        dense = torch.zeros(num_rows, dim, dtype=grad.dtype)
        dense[index] = grad_rows
        return dense, None, None, None, None


def bag_mean(table: Tensor, values: Tensor, offsets: Tensor, keep: Tensor | None = None, *,
             sparse: bool = False) -> Tensor:
    """out[b] = mean of table[values[e]] over the kept entries e of bag b; an empty bag (or one whose
    entries are all dropped) gives zeros. Differentiable in `table`.

    Args:
        table: [V, D] float tensor (e.g. the item embedding table).
        values: [M] integer rows of `table`, bag after bag.
        offsets: [B + 1] integer, non-decreasing from 0 to M: bag b is values[offsets[b]:offsets[b + 1]].
        keep: optional bool [M]; False entries count neither in the sum nor in the bag's size
            (history dropout, a left-out target).
        sparse: give `table` a sparse COO gradient with one row per distinct kept row (for a table
            stepped by a row-sparse optimizer); False: a dense [V, D] gradient.

    Returns:
        [B, D] in table's dtype.

    Raises:
        TypeError / ValueError: wrong types, dtypes, devices, shapes or offsets (the argument is named).
        IndexError: a value outside [0, V) (its position and value are named).

    Example:
        >>> table = torch.arange(6.0).view(3, 2)
        >>> bag_mean(table, torch.tensor([0, 2, 1]), torch.tensor([0, 2, 3])).tolist()
        [[2.0, 3.0], [2.0, 3.0]]
    """
    _check(table, values, offsets, keep)
    if table.device.type != "cpu" or table.dtype not in _KERNEL_DTYPES:
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= table.shape[0]):
            raise IndexError(f"bag_mean: values must lie in [0, {table.shape[0]})")
        return bag_mean_eager(table, values, offsets, keep, sparse=sparse)
    rows = checked_indices(values.detach().numpy(), table.shape[0], "bag_mean: values")
    bounds = np.ascontiguousarray(offsets.detach().numpy(), dtype=np.int64)
    mask = None if keep is None else np.ascontiguousarray(keep.detach().numpy())
    return _BagMean.apply(table, rows, bounds, mask, sparse)
