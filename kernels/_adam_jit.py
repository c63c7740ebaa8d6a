"""The Adam(W) update of one table row, shared by the Numba kernels that step embedding rows
(`sparse_adam` and `table_step`), so that both give a row exactly the same update.

`coefficients` holds the step's scalars in the table's dtype, so the loop over D vectorises in it:
(beta1, (1 - beta1) s, beta2, (1 - beta2) s^2, eps, L2 decay / s, decoupled shrink, step size,
1/sqrt(bc2)), where s is a gradient scale (gradient clipping; 1 without) folded into the moments'
coefficients so that the gradient needs no pass of its own: m = beta1 m + (1 - beta1) s (g + l2 w / s)
is beta1 m + (1 - beta1) (s g + l2 w). Built by `sparse_adam.adam_coefficients`."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
def adam_row(weight, exp_avg, exp_avg_sq, r, grad, coefficients):
    """In place: one Adam(W) step of row r of `weight` [R, D] (and of its moments) given `grad` [D].
    The tables are indexed [r, d], not sliced: a row view loses the contiguity the loop needs to
    vectorise (a sliced version ran at half the speed)."""
    beta1, keep1, beta2, keep2, eps, l2, shrink, step_size, inv_sqrt_bc2 = (
        coefficients[0], coefficients[1], coefficients[2], coefficients[3], coefficients[4],
        coefficients[5], coefficients[6], coefficients[7], coefficients[8])
    for d in range(weight.shape[1]):
        w = weight[r, d]
        g = grad[d] + l2 * w
        m = beta1 * exp_avg[r, d] + keep1 * g
        v = beta2 * exp_avg_sq[r, d] + keep2 * g * g
        exp_avg[r, d] = m
        exp_avg_sq[r, d] = v
        weight[r, d] = w * shrink - step_size * m / (np.sqrt(v) * inv_sqrt_bc2 + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def ascending_rows(order, count, slots):
    """Puts order[:count], the distinct rows a step marked in `slots` (anything but -1), in ascending
    order: neighbouring rows share pages and the prefetcher streams them (2x faster than batch order
    on a 20k x 64 table). A table touched densely is scanned through its slots, a sparsely touched
    one sorts its few rows. False when the scan meets a mark that is not one of the `count` rows
    (the caller's `slots` was not all -1)."""
    if 8 * count >= slots.shape[0]:
        c = 0
        for r in range(slots.shape[0]):
            if slots[r] != -1:
                if c == count:
                    return False
                order[c] = r
                c += 1
        return c == count
    order[:count] = np.sort(order[:count])
    return True
