"""Eager PyTorch `bag_mean`: the path for dtypes and devices the Numba kernel does not take (CUDA,
half precision) and the benchmark baseline. Tests check it, like the kernel, against the float64
oracle in `tests/kernels/oracles.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bag_mean_eager(
    table: Tensor, values: Tensor, offsets: Tensor, keep: Tensor | None = None, *, sparse: bool = False
) -> Tensor:
    """out[b] = mean of table[values[e]] over the kept entries e of bag b (zeros for an empty bag),
    through `F.embedding_bag`.

    Args:
        table: [V, D] floating.
        values: [M] integer rows of `table`, bag after bag.
        offsets: [B + 1] integer, non-decreasing from 0 to M: bag b is values[offsets[b]:offsets[b + 1]].
        keep: optional bool [M]; False entries count neither in the sum nor in the bag's size.
        sparse: give `table` a sparse gradient (one row per entry, uncoalesced).

    Returns:
        [B, D], differentiable in `table`.
    """
    weights = None if keep is None else keep.to(table.dtype)
    total = F.embedding_bag(values, table, offsets[:-1], mode="sum", per_sample_weights=weights, sparse=sparse)
    lengths = offsets[1:] - offsets[:-1]
    segment = torch.repeat_interleave(torch.arange(lengths.shape[0], device=values.device), lengths,
                                      output_size=values.shape[0])
    counted = torch.ones_like(values, dtype=table.dtype) if weights is None else weights
    counts = torch.zeros(lengths.shape[0], dtype=table.dtype, device=table.device).index_add_(0, segment, counted)
    return total / counts.clamp(min=1).unsqueeze(1)
