"""Plain PyTorch reference for `twotower.kernels.embedding_scores`: the oracle of its tests, its
benchmark baseline, and the path for dtypes and devices the Numba kernel does not take."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .gather_scores_reference import gather_scores_reference


def embedding_scores_reference(query: Tensor, weight: Tensor, ids: Tensor, index: Tensor, *, normalize: bool,
                               eps: float = 1e-12, sparse: bool = True) -> Tensor:
    """scores[b, j] = query[b] · f(weight[ids[index[b, j]]]), by looking the rows up
    (`F.embedding`), normalising them (`F.normalize`) and gathering the [B, C, D] copy.

    Args:
        query: [B, D] floating.
        weight: [R, D] table of query's dtype.
        ids: [U] integer rows of `weight`, each in [0, R).
        index: [B, C] integer positions in `ids`, each in [0, U).
        normalize: f is x / max(||x||, eps) when True, the identity when False.
        eps: see `normalize`.
        sparse: `weight` receives a sparse COO gradient (as `nn.Embedding(sparse=True)`).

    Returns:
        [B, C] scores, differentiable in `query` and `weight`.
    """
    rows = F.embedding(ids, weight, sparse=sparse)
    if normalize:
        rows = F.normalize(rows, dim=1, eps=eps)
    return gather_scores_reference(query, rows, index)
