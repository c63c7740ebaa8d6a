"""A marker for autograd Functions whose backward has no derivative of its own."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def first_order_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a `torch.autograd.Function.backward` that computes gradients with Numba or in place, so
    that no graph of them exists: a double backward (`create_graph=True`, e.g. a gradient penalty)
    raises instead of silently treating the second derivative as zero. Grad mode is on inside
    backward exactly when the caller asked for create_graph."""

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{type(ctx).__name__.removesuffix('Backward')} has no second derivative: backward with "
                "create_graph=True (double backward) is not supported; use its *_eager function for that"
            )
        return backward(ctx, *grads)

    return wrapper
