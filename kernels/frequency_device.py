"""The streaming frequency estimate of `twotower.kernels.frequency` in torch ops of fixed shapes, for
batches built on the training device (`twotower.training.device_batches`): the same hashes, the
same update rules and the same estimates as `StreamingFrequencyEstimator` (tests compare them
number for number), with its tables on the device and no host sync per batch.

One batch's update, per hash: every occurrence looks up its bucket's state (the state before the
batch), computes the bucket's new state from it and from the batch's hit count in that bucket
(counted by an index_add into a scratch row, reset after), and writes it back; occurrences that
share a bucket write the same values, so the scatter has one outcome whatever its order. The
64-bit hash arithmetic runs on int64 tensors: products wrap modulo 2**64 as the unsigned ones do,
and right shifts are made logical by masking the sign-extended bits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._rng import GOLDEN, MIX1, MIX2

__all__ = ["DeviceFrequencyEstimator"]


def _signed(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned `value`."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = _signed(GOLDEN), _signed(MIX1), _signed(MIX2)


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _fmix(x: Tensor) -> Tensor:
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def _buckets(keys: Tensor, items: Tensor, num_buckets: int) -> Tensor:
    """[H, B] bucket of each item under each hash: `bounded(bits(key, item), num_buckets)`."""
    x = _fmix(keys[:, None] + (items[None, :] + 1) * _GOLDEN)
    return _shr(_shr(x, 32) * num_buckets, 32)


class DeviceFrequencyEstimator:
    """`StreamingFrequencyEstimator` on a torch device; `state_dict` is interchangeable with it."""

    def __init__(self, num_buckets: int, *, num_hashes: int, learning_rate: float, seed: int,
                 device: torch.device | str) -> None:
        from .frequency import StreamingFrequencyEstimator

        host = StreamingFrequencyEstimator(num_buckets, num_hashes=num_hashes, learning_rate=learning_rate,
                                           seed=seed)  # validates the arguments, derives the hash keys
        self.device = torch.device(device)
        self.learning_rate = host.learning_rate
        self.num_buckets = int(num_buckets)
        self.load_state_dict(host.state_dict())

    def update(self, items: Tensor) -> None:
        """Records one batch of item ids [B] (on the device) as step `self.step`, then advances it."""
        lr, step = self.learning_rate, self.step
        b = _buckets(self.hash_keys, items.to(self.device, torch.int64), self.num_buckets)  # [H, B]
        for h in range(b.shape[0]):
            hits_in_batch = self._scratch.index_add_(0, b[h], torch.ones_like(b[h], dtype=torch.float64))[b[h]]
            last, gap, count = self.last_step[h, b[h]], self.gap[h, b[h]], self.count[h, b[h]]
            first = last < 0
            seen = torch.where(first, 1, count + 1)
            rate = torch.clamp(1.0 / seen.double(), min=lr)
            new_gap = torch.where(first, float(step + 1), (1.0 - rate) * gap + rate * (step - last).double())
            new_hits = (1.0 - rate) * self.hits[h, b[h]] + rate * hits_in_batch
            self.gap[h, b[h]], self.count[h, b[h]], self.hits[h, b[h]] = new_gap, seen, new_hits
            self.last_step[h, b[h]] = step
            self._scratch.index_fill_(0, b[h], 0.0)
        self.step += 1

    def probability(self, items: Tensor) -> Tensor:
        """[B] float64 estimated occurrences per step (hits / gap); 0 for an item never seen."""
        b = _buckets(self.hash_keys, items.to(self.device, torch.int64), self.num_buckets)
        rows = torch.arange(b.shape[0], device=self.device)[:, None]
        never = (self.last_step[rows, b] < 0).any(dim=0)
        estimate = (self.hits[rows, b] / self.gap[rows, b]).amin(dim=0)
        return torch.where(never, 0.0, estimate)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The host estimator's arrays (the same names and dtypes)."""
        return {
            "hash_keys": self.hash_keys.cpu().numpy().view(np.uint64).copy(),
            "last_step": self.last_step.cpu().numpy().copy(),  # copies: .numpy() of a CPU tensor shares it
            "gap": self.gap.cpu().numpy().copy(),
            "hits": self.hits.cpu().numpy().copy(),
            "count": self.count.cpu().numpy().copy(),
            "step": np.array([self.step], dtype=np.int64),
            "learning_rate": np.array([self.learning_rate], dtype=np.float64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        keys = np.asarray(state["hash_keys"], dtype=np.uint64).view(np.int64)
        shape = np.shape(state["gap"])
        if shape != (keys.size, self.num_buckets):
            raise ValueError(f"state 'gap' has shape {shape}, expected {(keys.size, self.num_buckets)}")
        put = lambda a, dtype: torch.from_numpy(np.array(a, dtype=dtype)).to(self.device)  # noqa: E731 (a copy)
        self.hash_keys = put(keys, np.int64)
        self.last_step = put(state["last_step"], np.int64)
        self.gap = put(state["gap"], np.float64)
        self.hits = put(state["hits"], np.float64)
        self.count = put(state["count"], np.int64)
        self.step = int(np.asarray(state["step"]).reshape(-1)[0])
        self._scratch = torch.zeros(self.num_buckets, dtype=torch.float64, device=self.device)
