"""Which of a batch's candidates are the row's user's known positives (`batches.mask_known_positives`).

The candidates of a batch (the other rows' positives, the pooled per-row negatives, the shared
negatives) are drawn without looking at the row's user, so some are items that user has. The step
names them as `LossInputs.known_positives` (row, column) pairs, in the loss's candidate order, and
the loss takes them out of that row (`twotower.losses.known_positives`). The pairs are found after
distributed training has gathered the other ranks' candidates, so those are checked too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from twotower.kernels.known_positives import known_positive_pairs
from twotower.kernels.known_positives_eager import history_keys, pairs_from_keys
from twotower.losses import LossInputs

__all__ = ["KnownPositives"]


class KnownPositives:
    """The training history, and the pairs of a batch's candidates it holds.

    On the CPU the Numba kernel (`twotower.kernels.known_positives`) looks each row's history items
    up in a table of where each candidate sits; on another device every (row, candidate) key is
    searched among the history's sorted keys, kept there (`known_positives_eager.pairs_from_keys`).
    Both return the pairs in the same order."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, num_items: int, device: torch.device) -> None:
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices)
        self.num_items = int(num_items)
        self.device = torch.device(device)
        self._keys = None
        if self.device.type != "cpu":
            self._keys = history_keys(torch.from_numpy(self.indptr).to(self.device),
                                      torch.from_numpy(self.indices.astype(np.int64)).to(self.device), self.num_items)

    def pairs(self, x: LossInputs) -> torch.Tensor:
        """[P, 2] int64 (row, column) pairs over the candidates of `x`: its positives, then its per-row
        negatives row by row, then its shared negatives."""
        parts = [x.item_ids]
        if x.negatives is not None:
            parts.append(x.negative_ids.reshape(-1))
        if x.shared_negatives is not None:
            parts.append(x.shared_ids)
        if any(p is None for p in parts) or x.user_ids is None:
            raise ValueError("batches.mask_known_positives needs the ids of the batch's users and candidates")
        candidates = torch.cat([p.long() for p in parts])
        if self._keys is None:
            found = known_positive_pairs(self.indptr, self.indices, x.user_ids.numpy(), candidates.numpy(),
                                         self.num_items)
            return torch.from_numpy(found)
        inside = (candidates >= 0) & (candidates < self.num_items)
        return pairs_from_keys(self._keys, self.num_items, x.user_ids,
                               torch.where(inside, candidates, candidates.new_full((), -1)))

    def attach(self, x: LossInputs) -> LossInputs:
        """`x` with its `known_positives`."""
        return dataclasses.replace(x, known_positives=self.pairs(x))
