"""Eager PyTorch `sparse_adam`: the path for tensors the Numba kernel does not take (CUDA,
non-contiguous) and the benchmark baseline. Tests check it, like the kernel, against the float64
oracle in `tests/kernels/oracles.py`."""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def sparse_adam_eager(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, grads: Tensor, *,
                          step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                          weight_decay: float = 0.0, decoupled: bool = True, grad_scale: float = 1.0) -> None:
    """Same contract as `sparse_adam`: sum the gradients of repeated rows, then one Adam(W) step on
    each distinct row (in place); untouched rows keep their weights and moments."""
    touched, inverse = torch.unique(rows.long(), return_inverse=True)
    g = torch.zeros(touched.numel(), param.shape[1], dtype=param.dtype, device=param.device)
    g.index_add_(0, inverse, grads.to(param.dtype))
    g = g * grad_scale
    p, m, v = param[touched], exp_avg[touched], exp_avg_sq[touched]
    if weight_decay and not decoupled:
        g = g + weight_decay * p
    m = m * beta1 + (1 - beta1) * g
    v = v * beta2 + (1 - beta2) * g * g
    if weight_decay and decoupled:
        p = p * (1 - lr * weight_decay)
    denom = v.sqrt() / math.sqrt(1 - beta2**step) + eps
    p = p - (lr / (1 - beta1**step)) * m / denom
    param[touched], exp_avg[touched], exp_avg_sq[touched] = p, m, v
