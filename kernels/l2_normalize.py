"""Row-wise L2 normalisation with a fused backward: what cosine-scored towers do to every vector.

    y = l2_normalize(x)        # y[b] = x[b] / max(||x[b]||, eps), as torch.nn.functional.normalize(x, dim=1)

Through autograd, `F.normalize` is a norm, a clamp, an expand and a division forward and about eight
kernels backward (the norm's backward masks zero rows); on a CPU, for a batch's [12k, 64] item
vectors, that was about a quarter of a training step. Here forward is one pass that also keeps each
row's norm, and backward one pass: dx = (g - y (g · y)) / n for rows with n > eps, g / eps otherwise
(the derivative of the clamped form, as PyTorch computes it).

Dispatch: 2-d float32/float64 CPU tensors go to the Numba kernel (sums in the input's dtype); anything else to
`l2_normalize_eager` (`F.normalize`). Imports torch and Numba, nothing from twotower.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from ._first_order import first_order_only
from .l2_normalize_eager import l2_normalize_eager

__all__ = ["l2_normalize"]


# Sums run in the storage dtype (`zero` is a 0 of it) so that the loops over D vectorise: float64
# sums made both passes 2-3x slower, and float32 sums of D products are within ~1e-7 relative.
@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _forward(x, eps, out, norms, zero):
    rows, dim = x.shape
    for r in range(rows):
        acc = zero
        for d in range(dim):
            acc += x[r, d] * x[r, d]
        n = max(np.sqrt(np.float64(acc)), eps)
        norms[r] = n
        inv = x.dtype.type(1.0 / n)
        for d in range(dim):
            out[r, d] = x[r, d] * inv


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _backward(grad, y, norms, eps, out, zero):
    rows, dim = y.shape
    for r in range(rows):
        n = norms[r]
        inv = y.dtype.type(1.0 / n)
        dot = zero
        for d in range(dim):
            dot += grad[r, d] * y[r, d]
        if not n > eps:  # below eps the divisor is the constant eps: no projection term
            dot = zero
        for d in range(dim):
            out[r, d] = (grad[r, d] - y[r, d] * dot) * inv


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        x = x.detach().contiguous()
        out = torch.empty_like(x)
        norms = np.empty(x.shape[0], dtype=np.float64)
        _forward(x.numpy(), float(eps), out.numpy(), norms, x.numpy().dtype.type(0))
        ctx.save_for_backward(out)
        ctx.norms, ctx.eps = norms, float(eps)
        return out

    @staticmethod
    @first_order_only  # a second derivative is an error, not a silent zero
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        grad = grad.detach().to(y.dtype).contiguous()
        out = torch.empty_like(y)
        _backward(grad.numpy(), y.numpy(), ctx.norms, ctx.eps, out.numpy(), y.numpy().dtype.type(0))
        return out, None


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Each row of `x` [N, D] divided by max(its L2 norm, eps); differentiable.

    Args:
        x: [N, D] floating tensor.
        eps: lower bound of the divisor (a zero row stays zero), as in `F.normalize`.

    Returns:
        [N, D] tensor of x's dtype; equal to `F.normalize(x, dim=1, eps=eps)` up to rounding.

    Example:
        >>> l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"l2_normalize: x must be a 2-d floating tensor [N, D], got {shape}")
    if not eps > 0:
        raise ValueError(f"l2_normalize: eps must be > 0, got {eps}")
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return l2_normalize_eager(x, eps)
    return _L2Normalize.apply(x, eps)
