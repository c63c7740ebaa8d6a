"""Negative samplers in plain torch ops of fixed shapes, for batches built on the training device
(`twotower.training.device_batches`): every output's shape follows from its inputs' shapes, so a
CUDA step needs no host synchronisation and no host-to-device copy to draw its negatives, and the
same code runs on the CPU (where the tests check it against the laws it must follow).

Each user's positives are one segment of a flattened, per-user sorted array (`Segments`, a CSR on
the device). Exact exclusion without rejection loops (whose iteration count would depend on the
data, and so need a sync):

- uniform over the N - d_u items a user has not interacted with: draw a rank r in [0, N - d_u) and
  map it to the r-th such item, t = r + #{j : p_j - j <= r} over the user's sorted positives p_j
  (p_j - j counts the free items below p_j);
- proportional to weights w over those items: draw x in [0, W - m_u) (m_u the mass of the user's
  positives) on the axis where the positives take no room, count the positives below it there
  (their starts C(p_j) - (mass of p_0..p_{j-1}) are sorted), shift x by their mass onto the full
  axis, and invert the cumulative weights C there.

Both counts are a bisection inside each draw's segment with a fixed number of steps
(`Segments.depth`), vectorised over all draws (`segment_count_le`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Segments", "WeightTable", "distinct_rows", "segment_count_le", "uniform", "uniform_excluding", "weighted",
           "weighted_excluding"]


@dataclass(frozen=True)
class Segments:
    """Each user's positives, sorted, as one flat array on the device.

    Attributes:
        indptr: [U + 1] int64 segment bounds.
        items: [nnz] int64 sorted item ids within each segment.
        shifted: [nnz] int64 items[j] - (j - indptr[u]): the free items below each positive.
        depth: bisection steps that resolve any segment (ceil(log2(longest + 1)), at least 1).
    """

    indptr: Tensor
    items: Tensor
    shifted: Tensor
    depth: int

    @staticmethod
    def from_csr(indptr: np.ndarray, indices: np.ndarray, device: torch.device) -> Segments:
        """From a host CSR (indptr [U + 1], indices [nnz]); each row is sorted here."""
        indptr = np.asarray(indptr, dtype=np.int64)
        rows = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
        order = np.lexsort((np.asarray(indices, dtype=np.int64), rows))
        items = np.asarray(indices, dtype=np.int64)[order]
        shifted = items - (np.arange(items.size, dtype=np.int64) - indptr[rows])
        longest = int(np.diff(indptr).max(initial=0))
        put = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (indptr, items, shifted)]
        return Segments(*put, max(1, longest.bit_length()))

    def degrees(self, users: Tensor) -> Tensor:
        return self.indptr[users + 1] - self.indptr[users]


def segment_count_le(values: Tensor, lo: Tensor, hi: Tensor, x: Tensor, depth: int) -> Tensor:
    """#{j in [lo, hi) : values[j] <= x}, elementwise over lo / hi / x (broadcast together), for
    `values` sorted non-decreasing within each [lo, hi); `depth` bisection steps must resolve the
    longest segment (ceil(log2(length + 1)))."""
    lo, hi, x = torch.broadcast_tensors(lo, hi, x)
    start = lo
    if values.numel() == 0:
        return torch.zeros_like(lo)
    last = values.numel() - 1
    for _ in range(depth):
        active = lo < hi
        mid = (lo + hi) // 2
        right = active & (values[mid.clamp(max=last)] <= x)
        lo = torch.where(right, mid + 1, lo)
        hi = torch.where(active & ~right, mid, hi)
    return lo - start


def _unit(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """float64 uniforms in [0, 1)."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def uniform_excluding(segments: Segments, users: Tensor, n: int, num_items: int,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """[B, n] item ids drawn uniformly among the items not in each user's segment, and the [B]
    float32 log-probability of one draw, -log(N - d_u). Every user needs a free item."""
    lo = segments.indptr[users]
    free = num_items - (segments.indptr[users + 1] - lo)
    rank = (_unit((users.numel(), n), generator, users.device) * free[:, None]).long()
    rank = torch.minimum(rank, free[:, None] - 1)  # a float64 product can round up to `free`
    below = segment_count_le(segments.shifted, lo[:, None], (lo + segments.degrees(users))[:, None], rank,
                             segments.depth)
    return rank + below, (-torch.log(free.double())).float()


@dataclass(frozen=True)
class WeightTable:
    """Cumulative weights for inverse-CDF draws, with each user's positive mass for exclusion.

    Attributes:
        weights: [N] float64 w_i >= 0.
        cumulative: [N + 1] float64 C, C[i] = w_0 + ... + w_{i-1}.
        positive_prefix: [nnz + 1] float64 G, G[j] = the weights of the flattened positives before j.
        starts: [nnz] float64 each positive's position on its user's axis without positives,
            C[p_j] - (G[j] - G[indptr[u]]); sorted within each segment.
    """

    weights: Tensor
    cumulative: Tensor
    positive_prefix: Tensor
    starts: Tensor

    @staticmethod
    def build(weights: np.ndarray, segments: Segments) -> WeightTable:
        device = segments.items.device
        w = torch.from_numpy(np.asarray(weights, dtype=np.float64)).to(device)
        cumulative = torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])
        positive_prefix = torch.cat([w.new_zeros(1), torch.cumsum(w[segments.items], 0)])
        rows = torch.repeat_interleave(torch.arange(segments.indptr.numel() - 1, device=device),
                                       segments.indptr[1:] - segments.indptr[:-1])
        before = positive_prefix[:-1] - positive_prefix[segments.indptr[rows]]
        return WeightTable(w, cumulative, positive_prefix, cumulative[segments.items] - before)

    def positive_mass(self, segments: Segments, users: Tensor) -> Tensor:
        return self.positive_prefix[segments.indptr[users + 1]] - self.positive_prefix[segments.indptr[users]]

    def invert(self, y: Tensor) -> Tensor:
        """The item whose interval [C[t], C[t + 1]) holds y (zero-weight items have none)."""
        t = torch.searchsorted(self.cumulative, y, right=True) - 1
        return t.clamp(0, self.weights.numel() - 1)


def weighted(table: WeightTable, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """[count] ids drawn with probability w_i / W (inverse CDF), and their [count] float32 log-probabilities."""
    total = table.cumulative[-1]
    ids = table.invert(_unit((count,), generator, total.device) * total)
    return ids, (torch.log(table.weights[ids]) - torch.log(total)).float()


def weighted_excluding(table: WeightTable, segments: Segments, users: Tensor, n: int,
                       generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """[B, n] ids drawn with probability w_i / (W - m_u) among the items not in each user's segment
    (m_u the mass of its positives), and their [B, n] float32 log-probabilities. Every user needs
    free mass (W - m_u > 0)."""
    lo = segments.indptr[users]
    hi = segments.indptr[users + 1]
    total = table.cumulative[-1]
    free_mass = total - table.positive_mass(segments, users)
    x = _unit((users.numel(), n), generator, users.device) * free_mass[:, None]
    below = segment_count_le(table.starts, lo[:, None], hi[:, None], x, segments.depth)
    shift = table.positive_prefix[lo[:, None] + below] - table.positive_prefix[lo][:, None]
    ids = table.invert(x + shift)
    # A draw within rounding of a positive's bounds can land on it: move it to the free item the
    # uniform map gives for the same rank (a change of order 1e-16 in the law).
    if segments.items.numel():
        at_or_below = segment_count_le(segments.items, lo[:, None], hi[:, None], ids, segments.depth)
        hit = at_or_below - segment_count_le(segments.items, lo[:, None], hi[:, None], ids - 1, segments.depth)
        ids = torch.where(hit > 0, _next_free(segments, lo, hi, ids, at_or_below, table.weights.numel()), ids)
    log_q = torch.log(table.weights[ids]) - torch.log(free_mass)[:, None]
    return ids, log_q.float()


def _next_free(segments: Segments, lo: Tensor, hi: Tensor, ids: Tensor, at_or_below: Tensor,
               num_items: int) -> Tensor:
    """The smallest item above `ids` not in the segment (the largest below, if none is above);
    `at_or_below`: the segment's items <= each id."""
    rank = ids - at_or_below + 1
    free = num_items - (hi - lo)
    rank = torch.minimum(rank, free[:, None] - 1)
    return rank + segment_count_le(segments.shifted, lo[:, None], hi[:, None], rank, segments.depth)


def uniform(count: int, num_items: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """[count] ids drawn uniformly from [0, N) and their float32 log-probability -log N."""
    ids = torch.randint(0, num_items, (count,), generator=generator, device=device)
    return ids, torch.full((count,), -math.log(num_items), dtype=torch.float32, device=device)


def distinct_rows(ids: Tensor) -> tuple[Tensor, Tensor]:
    """(distinct [L], rows [L]) with distinct[rows] == ids, of fixed length L = len(ids): the distinct
    ids in increasing order, then copies of the first id as padding (a row no id refers to). A
    static shape, where torch.unique's would depend on the data (a host sync on CUDA)."""
    ordered, order = torch.sort(ids)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[1:] = ordered[1:] != ordered[:-1]
    slot = torch.cumsum(new, 0) - 1
    rows = torch.empty_like(slot)
    rows[order] = slot
    distinct = ordered[:1].expand(ids.numel()).clone()
    distinct[slot] = ordered
    return distinct, rows
