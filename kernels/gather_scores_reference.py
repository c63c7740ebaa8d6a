"""Plain PyTorch reference for `twotower.kernels.gather_scores`: the oracle of its tests, its
benchmark baseline, and the path for dtypes and devices the Numba kernel does not take."""

from __future__ import annotations

from torch import Tensor


def gather_scores_reference(query: Tensor, vectors: Tensor, index: Tensor) -> Tensor:
    """scores[b, j] = query[b] · vectors[index[b, j]], by materialising the gathered [B, C, D] rows.

    Args:
        query: [B, D] floating.
        vectors: [U, D] of query's dtype.
        index: [B, C] integer, every entry in [0, U).

    Returns:
        [B, C] scores, differentiable in `query` and `vectors`.
    """
    return (vectors[index] * query.unsqueeze(1)).sum(-1)
