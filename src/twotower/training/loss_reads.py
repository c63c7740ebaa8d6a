"""The training loop's reads of the step losses (`LossReads`): every step on the CPU, where a read
costs nothing and the NaN check comes before the step's update; every `CUDA_LOSS_READ_EVERY` steps
on CUDA, where each read waits for the GPU to finish every queued step (the loop would otherwise
keep it idle between steps). Either way the losses are checked in step order, and the first
non-finite one stops the run naming its step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from twotower.training.distributed import DistributedStep
from twotower.training.step import TrainingDiverged

__all__ = ["CUDA_LOSS_READ_EVERY", "LossReads", "loss_read_every"]

CUDA_LOSS_READ_EVERY = 32


def loss_read_every(device: torch.device, train_step: Any) -> int:
    """How many steps' losses are read back at once: 1 on the CPU, `CUDA_LOSS_READ_EVERY` on CUDA;
    1 across ranks, whose global loss is an all-reduce per step anyway."""
    if device.type != "cuda" or isinstance(train_step, DistributedStep):
        return 1
    return CUDA_LOSS_READ_EVERY


class LossReads:
    """One epoch's losses on the host: read each step (`check`), or kept on the device and read
    `every` steps at once (`add`, `flush`); `last_good()` says where the run can resume from."""

    def __init__(self, epoch: int, every: int, last_good: Callable[[], str]) -> None:
        self.epoch, self.every, self._last_good = epoch, every, last_good
        self.started = time.perf_counter()
        self.loss_sum, self.seen, self.last = 0.0, 0, float("nan")
        self._pending: list[torch.Tensor] = []
        self._rows: list[int] = []

    def samples_per_s(self) -> float:
        return self.seen / max(time.perf_counter() - self.started, 1e-9)

    def add(self, step: int, loss: torch.Tensor, rows: int) -> None:
        """The loss of step `step` (1-based), kept on its device until `every` are pending."""
        self._pending.append(loss)
        self._rows.append(rows)
        if len(self._pending) >= self.every:
            self.flush(step)

    def flush(self, step: int) -> None:
        """Reads the pending losses (of the steps up to `step`)."""
        if self._pending:
            values = torch.stack(self._pending).float().cpu().tolist()
            rows, self._pending, self._rows = self._rows, [], []
            self.check(step - len(values), values, rows)

    def check(self, before: int, values: list[float], rows: list[int]) -> None:
        """Steps before + 1, before + 2, ... had these losses (of `rows` rows each): stop at the first
        non-finite one."""
        for offset, (value, count) in enumerate(zip(values, rows, strict=True)):
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss is {value} at epoch {self.epoch + 1}, step {before + offset + 1}; "
                                       f"training stopped. {self._last_good()}")
            self.loss_sum += value * count
            self.seen += count
            self.last = value
