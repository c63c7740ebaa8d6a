"""Eager PyTorch `replay_rows` and the `StepLog` both versions read: the path for tensors the Numba
kernel does not take (CUDA, non-contiguous) and the benchmark baseline. Tests check it, like the
kernel, against dense Adam(W) run step by step in float64 (`tests/kernels/oracles.py`). The math is
in `adam_replay`'s docstring. On CUDA each call copies the step log (a few floats per step since the
last flush) to the device."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["StepLog", "fading_ratio", "replay_rows_eager"]

_FADE = 1e-10  # the momentum term r^j below which the replay stops summing
_MAX_HORIZON = 100_000


def fading_ratio(beta1: float, beta2: float) -> float:
    """r = beta1 / sqrt(beta2), the factor by which each skipped step's momentum term shrinks.

    Raises:
        ValueError: a beta outside [0, 1), or r >= 1 (the momentum does not fade: no closed form).
    """
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"StepLog: betas must lie in [0, 1), got {beta1}, {beta2}")
    ratio = beta1 / math.sqrt(beta2) if beta2 > 0 else math.inf
    if ratio >= 1:
        raise ValueError(f"StepLog: replaying skipped steps needs beta1 < sqrt(beta2) (the momentum must "
                         f"fade); got beta1 = {beta1}, beta2 = {beta2}")
    return ratio


class StepLog:
    """Per-step scalars of one table's optimizer steps, indexed by step (entry 0: before step 1):
    `step_size[s]` = lr_s sqrt(1 - beta2^s) / (1 - beta1^s) and `log_shrink[s]` = the sum over
    u <= s of log(1 - lr_u wd). Steps before `first` (the step the log started after, e.g. a
    resumed run's) are not known: rows must be current through `first` or later."""

    def __init__(self, beta1: float, beta2: float, first: int = 0) -> None:
        ratio = fading_ratio(beta1, beta2)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise ValueError(f"StepLog: first must be an int >= 0, got {first!r}")
        self.beta1, self.beta2, self.ratio, self.first = float(beta1), float(beta2), ratio, first
        self.horizon = 1 if ratio == 0 else min(_MAX_HORIZON, max(1, math.ceil(math.log(_FADE) / math.log(ratio))))
        self.last_step = first
        self._step_size = np.zeros(64, dtype=np.float64)
        self._unshrink = np.ones(64, dtype=np.float64)
        self._log_shrink = np.zeros(64, dtype=np.float64)

    def record(self, step: int, lr: float, weight_decay: float = 0.0) -> None:
        """Logs step `step` (the next one: last_step + 1) taken at `lr` with decoupled `weight_decay`."""
        if step != self.last_step + 1:
            raise ValueError(f"StepLog.record: step {step} is not the next step ({self.last_step + 1})")
        shrink = 1.0 - lr * weight_decay
        if not (lr >= 0 and math.isfinite(lr) and weight_decay >= 0 and shrink > 0):
            raise ValueError(f"StepLog.record: lr {lr} and weight_decay {weight_decay} must be finite, >= 0, "
                             "with lr * weight_decay < 1")
        index = step - self.first
        if index >= self._step_size.shape[0]:
            more = index
            self._step_size = np.concatenate([self._step_size, np.zeros(more)])
            self._unshrink = np.concatenate([self._unshrink, np.ones(more)])
            self._log_shrink = np.concatenate([self._log_shrink, np.zeros(more)])
        self._step_size[index] = lr * math.sqrt(1.0 - self.beta2**step) / (1.0 - self.beta1**step)
        self._unshrink[index] = 1.0 / shrink
        self._log_shrink[index] = self._log_shrink[index - 1] + math.log(shrink)
        self.last_step = step

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step_size, unshrink, log_shrink) over steps first .. last_step, position i = step first + i
        (unshrink = 1 / (1 - lr wd) of that step, log_shrink the running sum of log(1 - lr wd))."""
        n = self.last_step - self.first + 1
        return self._step_size[:n], self._unshrink[:n], self._log_shrink[:n]


@torch.no_grad()
def replay_rows_eager(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, last: Tensor, log: StepLog,
                      *, through: int, eps: float = 1e-8) -> None:
    """`replay_rows` in torch ops of fixed shape ([P, horizon] coefficients), on any device, with
    no host synchronisation; rows current after `through` or before the log's first step are left
    as they are (the kernel raises for them; checking here would need a sync)."""
    device = param.device
    step_size, _, log_shrink = log.arrays()
    step_size, log_shrink = torch.from_numpy(step_size).to(device), torch.from_numpy(log_shrink).to(device)
    rows = torch.unique(rows.to(device=device, dtype=torch.int64))
    t0 = last[rows]
    gap = through - t0
    ok = (gap > 0) & (t0 >= log.first)
    t0 = torch.where(ok, t0, through)
    gap = torch.where(ok, gap, 0)
    j = torch.arange(1, log.horizon + 1, device=device)
    steps = torch.minimum(t0[:, None] + j, torch.tensor(through, device=device)) - log.first
    end = log_shrink[through - log.first]
    fade = log.ratio ** j.to(torch.float64)
    terms = step_size[steps] * fade * torch.exp(end - log_shrink[steps])
    momentum = torch.where(j <= gap[:, None], terms, 0.0).sum(1)
    shrink = torch.exp(end - log_shrink[t0 - log.first])
    gap_f = gap.to(torch.float64)
    p, m, v = param[rows], exp_avg[rows], exp_avg_sq[rows]
    dtype = param.dtype
    floor = (eps * torch.sqrt(1.0 - log.beta2 ** (t0 + 1).to(torch.float64)) / math.sqrt(log.beta2)).to(dtype)
    param[rows] = p * shrink.to(dtype)[:, None] - momentum.to(dtype)[:, None] * m / (v.sqrt() + floor[:, None])
    exp_avg[rows] = m * (log.beta1**gap_f).to(dtype)[:, None]
    exp_avg_sq[rows] = v * (log.beta2**gap_f).to(dtype)[:, None]
    last[rows] = torch.where(ok, through, last[rows])
