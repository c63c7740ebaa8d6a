"""Scores of each query against its own list of rows of a vector table, without gathering the rows.

    scores = gather_scores(query, vectors, index)      # scores[b, j] = query[b] · vectors[index[b, j]]

This is the inner loop of every loss over per-row negatives: `vectors` holds each distinct item of
a batch once (encoded by the item tower), `index` [B, C] says which of them row b is scored against.
Gathering `vectors[index]` first writes a [B, C, D] tensor and its backward scatters a gradient of
the same size through a sort (`index_put_` with accumulation): with B = 1024, C = 17 and D = 64 that
was half of a CPU training step. The kernel reads the rows in place and writes only [B, C] forward,
[B, D] and [U, D] backward, each row of the [U, D] gradient once.

Dispatch: float32 and float64 tensors on the CPU go to the Numba kernel (one thread, deterministic);
anything else (CUDA, half precision) to `gather_scores_eager`, where PyTorch's own gather and
reduction are already what a GPU wants. Imports torch and Numba, nothing from twotower.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _gather_scores_jit as jit
from ._bounds_jit import checked_indices
from ._first_order import first_order_only
from .gather_scores_eager import gather_scores_eager

__all__ = ["gather_scores"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _check(query: Tensor, vectors: Tensor, index: Tensor) -> None:
    for name, t in (("query", query), ("vectors", vectors), ("index", index)):
        if not isinstance(t, Tensor):
            raise TypeError(f"gather_scores: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not query.is_floating_point():
        raise TypeError(f"gather_scores: query must be floating point, got {query.dtype}")
    if vectors.dtype != query.dtype:
        raise TypeError(f"gather_scores: vectors ({vectors.dtype}) must have query's dtype ({query.dtype})")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"gather_scores: index must be an integer tensor, got {index.dtype}")
    if query.dim() != 2 or vectors.dim() != 2 or index.dim() != 2:
        raise ValueError(
            f"gather_scores: query [B, D], vectors [U, D] and index [B, C] must be 2-d; got "
            f"{tuple(query.shape)}, {tuple(vectors.shape)}, {tuple(index.shape)}"
        )
    if vectors.shape[1] != query.shape[1]:
        raise ValueError(f"gather_scores: vectors have D = {vectors.shape[1]}, query D = {query.shape[1]}")
    if index.shape[0] != query.shape[0]:
        raise ValueError(f"gather_scores: index has {index.shape[0]} rows, query {query.shape[0]}")
    if not (query.device == vectors.device == index.device):
        raise TypeError(f"gather_scores: query, vectors and index must share a device; got "
                        f"{query.device}, {vectors.device}, {index.device}")


class _GatherScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query: Tensor, vectors: Tensor, index: np.ndarray) -> Tensor:
        query, vectors = query.detach().contiguous(), vectors.detach().contiguous()
        out = torch.empty(query.shape[0], index.shape[1], dtype=query.dtype)
        jit.forward(query.numpy(), vectors.numpy(), index, out.numpy(), query.numpy().dtype.type(0))
        ctx.save_for_backward(query, vectors)
        ctx.index = index
        return out

    @staticmethod
    @first_order_only  # a second derivative is an error, not a silent zero
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        query, vectors = ctx.saved_tensors
        want_query, want_vectors = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_query = torch.zeros_like(query) if want_query else torch.zeros(1, 1, dtype=query.dtype)
        grad_vectors = torch.empty_like(vectors) if want_vectors else torch.zeros(1, 1, dtype=query.dtype)
        jit.backward(grad.detach().to(query.dtype).contiguous().numpy(), query.numpy(), vectors.numpy(), ctx.index,
                     grad_query.numpy(), grad_vectors.numpy(), want_query, want_vectors)
        return (grad_query if want_query else None), (grad_vectors if want_vectors else None), None


def gather_scores(query: Tensor, vectors: Tensor, index: Tensor) -> Tensor:
    """scores[b, j] = query[b] · vectors[index[b, j]], differentiable in `query` and `vectors`.

    Args:
        query: [B, D] float tensor.
        vectors: [U, D] tensor of query's dtype and device (e.g. the distinct items of a batch).
        index: [B, C] integer tensor, every entry in [0, U): the rows of `vectors` row b is scored against.

    Returns:
        [B, C] scores in query's dtype.

    Raises:
        TypeError / ValueError: wrong types, dtypes, devices or shapes (the argument is named).
        IndexError: an index entry outside [0, U) (its position and value are named).

    Example:
        >>> q, v = torch.randn(2, 4), torch.randn(3, 4)
        >>> gather_scores(q, v, torch.tensor([[0, 2], [1, 1]])).shape
        torch.Size([2, 2])
    """
    _check(query, vectors, index)
    if query.device.type != "cpu" or query.dtype not in _KERNEL_DTYPES:
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= vectors.shape[0]):
            raise IndexError(f"gather_scores: index entries must lie in [0, {vectors.shape[0]})")
        return gather_scores_eager(query, vectors, index)
    return _GatherScores.apply(
        query, vectors, checked_indices(index.detach().numpy(), vectors.shape[0], "gather_scores: index")
    )
