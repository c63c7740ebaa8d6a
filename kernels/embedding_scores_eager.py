"""Eager PyTorch `embedding_scores`: the path for dtypes and devices the Numba kernel does not take
(CUDA, half precision) and the benchmark baseline. Tests check it, like the kernel, against the
float64 oracle in `tests/kernels/oracles.py`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .gather_scores_eager import gather_scores_eager


def embedding_scores_eager(query: Tensor, weight: Tensor, ids: Tensor, index: Tensor, *, normalize: bool,
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
    return gather_scores_eager(query, rows, index)
