"""Scores of queries against rows of an embedding table, looked up, L2-normalised (optionally) and
scored in one pass, with a row-sparse gradient for the table.

    scores = embedding_scores(query, weight, ids, index, normalize=True)
    # scores[b, j] = query[b] · f(weight[ids[index[b, j]]]),  f(x) = x / max(||x||, eps) or x

This is the item side of a training step when the item tower is an id embedding alone (matrix
factorisation, cosine or dot scores): `ids` are the table rows of a batch's distinct items, `index`
[B, C] says which of them row b is scored against (its positive and its negatives). Done with
separate ops (lookup, normalisation, `gather_scores`), the step writes the looked-up rows, their
normalised copy, the gradient of that copy and the gradient of the rows ([U, D] each, about 3 MB
for a 1024-row batch with 16 negatives) and reads each back, on a CPU step that is memory-bound.
Here forward reads each table row once, writing its normalised copy into a compact [U, D] array
(in the order of `ids`, so a batch's positives, listed first, are scored in sequence), then
scores; backward groups the entries by row (a counting sort), sums each row's gradient in a
D-sized accumulator, applies the normalisation's derivative there and writes it once, as the
values of a sparse COO gradient over `ids` (what `nn.Embedding(sparse=True)` gives; `sparse=False`
gives a dense one instead).

Dispatch: float32 and float64 tensors on the CPU go to the Numba kernel (one thread, deterministic);
anything else (CUDA, half precision) to `embedding_scores_eager`. Imports torch and Numba,
nothing from twotower.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from . import _embedding_scores_jit as jit
from ._bounds_jit import checked_indices
from ._first_order import first_order_only
from .embedding_scores_eager import embedding_scores_eager

__all__ = ["embedding_scores"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _check(query: Tensor, weight: Tensor, ids: Tensor, index: Tensor, eps: float) -> None:
    for name, t in (("query", query), ("weight", weight), ("ids", ids), ("index", index)):
        if not isinstance(t, Tensor):
            raise TypeError(f"embedding_scores: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not query.is_floating_point():
        raise TypeError(f"embedding_scores: query must be floating point, got {query.dtype}")
    if weight.dtype != query.dtype:
        raise TypeError(f"embedding_scores: weight ({weight.dtype}) must have query's dtype ({query.dtype})")
    for name, t in (("ids", ids), ("index", index)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"embedding_scores: {name} must be an integer tensor, got {t.dtype}")
    if query.dim() != 2 or weight.dim() != 2 or ids.dim() != 1 or index.dim() != 2:
        raise ValueError(
            "embedding_scores: query [B, D], weight [R, D], ids [U] and index [B, C] expected; got "
            f"{tuple(query.shape)}, {tuple(weight.shape)}, {tuple(ids.shape)}, {tuple(index.shape)}"
        )
    if weight.shape[1] != query.shape[1]:
        raise ValueError(f"embedding_scores: weight has D = {weight.shape[1]}, query D = {query.shape[1]}")
    if index.shape[0] != query.shape[0]:
        raise ValueError(f"embedding_scores: index has {index.shape[0]} rows, query {query.shape[0]}")
    if not (query.device == weight.device == ids.device == index.device):
        raise TypeError(f"embedding_scores: query, weight, ids and index must share a device; got "
                        f"{query.device}, {weight.device}, {ids.device}, {index.device}")
    if not eps > 0:
        raise ValueError(f"embedding_scores: eps must be > 0, got {eps}")


class _EmbeddingScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query: Tensor, weight: Tensor, ids: np.ndarray, index: np.ndarray, normalize: bool, eps: float,
                sparse: bool) -> Tensor:
        query, table = query.detach().contiguous(), weight.detach().contiguous()
        out = torch.empty(query.shape[0], index.shape[1], dtype=query.dtype)
        rows = torch.empty(ids.shape[0], table.shape[1], dtype=table.dtype)
        scale = np.empty(ids.shape[0], dtype=np.float64)
        zero = query.numpy().dtype.type(0)
        jit.forward(query.numpy(), table.numpy(), ids, index, normalize, float(eps), out.numpy(), rows.numpy(), scale,
                    zero)
        ctx.save_for_backward(query, rows)
        ctx.ids, ctx.index, ctx.scale, ctx.normalize, ctx.eps = ids, index, scale, normalize, eps
        ctx.sparse, ctx.table_shape = sparse, table.shape
        return out

    @staticmethod
    @first_order_only  # a second derivative is an error, not a silent zero
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        query, rows = ctx.saved_tensors
        want_query, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_query = torch.zeros_like(query) if want_query else torch.zeros(1, 1, dtype=query.dtype)
        values = torch.empty_like(rows) if want_weight else torch.zeros(1, 1, dtype=rows.dtype)
        jit.backward(grad.detach().to(query.dtype).contiguous().numpy(), query.numpy(), rows.numpy(), ctx.index,
                     ctx.scale, ctx.normalize, float(ctx.eps), want_query, want_weight, grad_query.numpy(),
                     values.numpy(), query.numpy().dtype.type(0))
        grad_weight = None
        if want_weight:
            ids = torch.from_numpy(ctx.ids)
            if ctx.sparse:
                # ids were checked against the table in embedding_scores: no invariant check needed (torch
                # 2.11 warns about the explicit False as if it were implicit)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
                    grad_weight = torch.sparse_coo_tensor(ids.unsqueeze(0), values, ctx.table_shape,
                                                          check_invariants=False)
            else:
                grad_weight = torch.zeros(ctx.table_shape, dtype=values.dtype).index_add_(0, ids, values)
        return (grad_query if want_query else None), grad_weight, None, None, None, None, None


def embedding_scores(query: Tensor, weight: Tensor, ids: Tensor, index: Tensor, *, normalize: bool,
                     eps: float = 1e-12, sparse: bool = True) -> Tensor:
    """scores[b, j] = query[b] · f(weight[ids[index[b, j]]]), differentiable in `query` and `weight`.

    Args:
        query: [B, D] float tensor.
        weight: [R, D] table of query's dtype and device (e.g. an `nn.Embedding`'s weight).
        ids: [U] integer rows of `weight`, each in [0, R) (repeats allowed: their gradients add up).
        index: [B, C] integer positions in `ids`, each in [0, U).
        normalize: f(x) = x / max(||x||, eps) (cosine towers), else the identity (dot products).
        eps: lower bound of the norm, as in `F.normalize`.
        sparse: `weight` gets a sparse COO gradient with one entry per element of `ids` (as
            `nn.Embedding(sparse=True)`); False gives a dense [R, D] gradient.

    Returns:
        [B, C] scores in query's dtype.

    Raises:
        TypeError / ValueError: wrong types, dtypes, devices, shapes or eps (the argument is named).
        IndexError: an `ids` or `index` entry out of range (its position and value are named).

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
        >>> embedding_scores(torch.tensor([[1.0, 0.0]]), w, torch.tensor([1, 0]), torch.tensor([[1, 0]]),
        ...                  normalize=True)
        tensor([[0.6000, 1.0000]], grad_fn=<_EmbeddingScoresBackward>)
    """
    _check(query, weight, ids, index, eps)
    if query.device.type != "cpu" or query.dtype not in _KERNEL_DTYPES:
        for name, t, rows in (("ids", ids, weight.shape[0]), ("index", index, ids.shape[0])):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= rows):
                raise IndexError(f"embedding_scores: {name} entries must lie in [0, {rows})")
        return embedding_scores_eager(query, weight, ids, index, normalize=normalize, eps=eps, sparse=sparse)
    ids_np = checked_indices(ids.detach().numpy(), weight.shape[0], "embedding_scores: ids")
    index_np = checked_indices(index.detach().numpy(), ids.shape[0], "embedding_scores: index")
    return _EmbeddingScores.apply(query, weight, ids_np, index_np, bool(normalize), float(eps), bool(sparse))
