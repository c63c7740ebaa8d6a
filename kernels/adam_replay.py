"""Replays, in closed form, the Adam(W) steps a row-sparse optimizer skipped on rows no batch touched.

    log = StepLog(beta1=0.9, beta2=0.999)
    log.record(step, lr, weight_decay)                          # every optimizer step, in order
    replay_rows(table, exp_avg, exp_avg_sq, rows, last, log, through=step - 1)   # then the usual step

Dense Adam keeps moving a row on the steps where its gradient is zero: the moments decay
(m <- beta1 m, v <- beta2 v) and the row takes the step m_hat / sqrt(v_hat), about ten more steps
of a fading momentum after each touch at beta1 = 0.9; lazy Adam freezes the row instead, so a
rarely touched row (most users of a large data set) moves several times less per touch. Those
skipped steps need no gradient, so they can be applied late, all at once, when the row is touched
again: for a row current through step t0, the steps s = t0 + 1 .. T give

    w_T = w_t0 * P(t0, T) - (m / sqrt(v)) * sum_s P(s, T) a_s r^(s - t0)
    m_T = beta1^(T - t0) m,   v_T = beta2^(T - t0) v

with r = beta1 / sqrt(beta2), a_s = lr_s sqrt(1 - beta2^s) / (1 - beta1^s) (Adam's bias-corrected
step size at step s) and P(s, T) the product of AdamW's decoupled shrink (1 - lr_u wd) over
u = s + 1 .. T. The momentum terms fade as r^j, so the sum stops after `horizon` steps
(r^horizon < 1e-10); the shrink is exact over the whole gap (prefix sums of its log). Dense Adam's
denominators on the skipped steps add eps to sqrt(v_hat_s); the replay adds it as at the first
skipped step (which carries the most weight) to all of them, a difference only where sqrt(v_hat) is
as small as eps. Weight decay as L2 in the gradient (Adam, not
AdamW) puts a gradient on every skipped step and has no such closed form: `StepLog` refuses it.

`last` [R] holds the step through which each row is current; `replay_rows` brings the given rows
to `through` and records it. Dispatch: contiguous float32/float64 CPU tensors go to the Numba
kernel, anything else (CUDA) to `adam_replay_eager.replay_rows_eager`, fixed-shape torch ops with
no host sync. `StepLog` lives with the eager version, which both share.
Imports torch and Numba, nothing from twotower.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from ._bounds_jit import checked_indices
from .adam_replay_eager import StepLog, replay_rows_eager
from .sparse_adam import check_table_rows

__all__ = ["StepLog", "replay_rows"]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _replay(param, exp_avg, exp_avg_sq, rows, last, through, first, step_size, unshrink, log_shrink, beta1, beta2,
            ratio, eps, horizon):
    """Returns -1 when done, else the position in `rows` of a row current after `through` or
    before `first` (nothing of that row is changed; earlier rows are)."""
    dim = param.shape[1]
    end = log_shrink[through - first]
    for p in range(rows.shape[0]):
        row = rows[p]
        t0 = last[row]
        gap = through - t0
        if gap == 0:
            continue
        if gap < 0 or t0 < first:
            return p
        shrink = np.exp(end - log_shrink[t0 - first])
        after = shrink  # the shrink of the steps after step s, for s = t0 + j (no exp per step)
        momentum = 0.0
        fade = 1.0
        for j in range(1, min(gap, horizon) + 1):
            fade *= ratio
            s = t0 + j - first
            after *= unshrink[s]
            momentum += step_size[s] * fade * after
        floor = eps * np.sqrt(1.0 - beta2 ** (t0 + 1)) / np.sqrt(beta2)  # eps as at the first skipped step
        decay1 = beta1**gap
        decay2 = beta2**gap
        for d in range(dim):
            m = exp_avg[row, d]
            v = exp_avg_sq[row, d]
            param[row, d] = param[row, d] * shrink - momentum * m / (np.sqrt(v) + floor)
            exp_avg[row, d] = m * decay1
            exp_avg_sq[row, d] = v * decay2
        last[row] = through
    return -1


def _check(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, last: Tensor, log: StepLog,
           through: int) -> None:
    check_table_rows("replay_rows", param, exp_avg, exp_avg_sq, rows)
    if last.shape != (param.shape[0],) or last.dtype != torch.int64 or last.device != param.device:
        raise ValueError(f"replay_rows: last must be an int64 tensor of shape ({param.shape[0]},) on {param.device}")
    if not isinstance(log, StepLog):
        raise TypeError(f"replay_rows: log must be a StepLog, got {type(log).__name__}")
    if isinstance(through, bool) or not isinstance(through, int) or not log.first <= through <= log.last_step:
        raise ValueError(f"replay_rows: through must be a logged step in [{log.first}, {log.last_step}], "
                         f"got {through!r}")


def replay_rows(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, last: Tensor, log: StepLog, *,
                through: int, eps: float = 1e-8) -> None:
    """In place: brings each of `rows` (repeats allowed) from step last[row] to step `through` as
    dense Adam(W) would with zero gradients (see the module docstring), and sets last[row] = through.

    Args:
        param: [R, D] table; exp_avg, exp_avg_sq: its Adam moments (all updated in place).
        rows: [P] integer rows in [0, R).
        last: int64 [R], the step through which each row is current (updated in place).
        log: the table's `StepLog`, holding steps up to `through`.
        through: the step to bring the rows to.
        eps: Adam's eps.

    Raises:
        ValueError / TypeError: shapes, dtypes or `through` wrong (named); a row current after
            `through` or before the log's first step (its position and value named).
        IndexError: a row outside [0, R).
    """
    _check(param, exp_avg, exp_avg_sq, rows, last, log, through)
    kernel = (param.device.type == "cpu" and param.dtype in (torch.float32, torch.float64)
              and all(t.is_contiguous() for t in (param, exp_avg, exp_avg_sq, last)))
    if not kernel:
        replay_rows_eager(param, exp_avg, exp_avg_sq, rows, last, log, through=through, eps=eps)
        return
    rows_np = checked_indices(rows.detach().cpu().numpy(), param.shape[0], "replay_rows: rows")
    step_size, unshrink, log_shrink = log.arrays()
    bad = _replay(param.detach().numpy(), exp_avg.detach().numpy(), exp_avg_sq.detach().numpy(), rows_np,
                  last.numpy(), through, log.first, step_size, unshrink, log_shrink, log.beta1, log.beta2, log.ratio,
                  float(eps), log.horizon)
    if bad >= 0:
        row = int(rows_np[bad])
        raise ValueError(f"replay_rows: rows[{bad}] = {row} is current through step {int(last[row])}, outside "
                         f"[{log.first}, {through}]")
