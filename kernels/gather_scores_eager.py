"""Eager PyTorch `gather_scores`: the path for dtypes and devices the Numba kernel does not take
(CUDA, half precision) and the benchmark baseline. Tests check it, like the kernel, against the
float64 oracle in `tests/kernels/oracles.py`."""

from __future__ import annotations

from torch import Tensor


def gather_scores_eager(query: Tensor, vectors: Tensor, index: Tensor) -> Tensor:
    """scores[b, j] = query[b] · vectors[index[b, j]], by materialising the gathered [B, C, D] rows.

    Args:
        query: [B, D] floating.
        vectors: [U, D] of query's dtype.
        index: [B, C] integer, every entry in [0, U).

    Returns:
        [B, C] scores, differentiable in `query` and `vectors`.
    """
    return (vectors[index] * query.unsqueeze(1)).sum(-1)
