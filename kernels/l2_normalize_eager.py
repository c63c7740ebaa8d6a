"""Eager PyTorch `l2_normalize`: the path off the Numba kernel (CUDA, half precision) and the
benchmark baseline. Tests check it, like the kernel, against the float64 oracle in
`tests/kernels/oracles.py`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def l2_normalize_eager(x: Tensor, eps: float = 1e-12) -> Tensor:
    """y[i] = x[i] / max(||x[i]||, eps), by `F.normalize(x, dim=1, eps=eps)`; same contract as
    `l2_normalize`, any device and floating dtype, differentiable (also twice)."""
    return F.normalize(x, dim=1, eps=eps)
