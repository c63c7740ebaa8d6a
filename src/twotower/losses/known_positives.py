"""Known positives among a batch's negatives, taken out of each row's softmax.

A batch's candidates are drawn without looking at the row's user: the other rows' positives, the
pooled per-row negatives and the shared negatives include items the user has interacted with.
Left in, the loss pushes those items below the row's positive, against what the user did.
`LossInputs.known_positives` names them as (row, column) pairs, and the losses drop them from that
row's candidates, as they drop accidental hits.

Columns index the batch's candidate list, the same for every loss kind: the B positives, then the
per-row negatives flattened row by row (B * n), then the M shared negatives. That is the in-batch
kinds' candidate order (`twotower.kernels.infonce`'s k ++ extra), which takes the pairs as they
are; the per-row kinds use the pairs whose column is one of their candidates: the row's own per-row
negatives and the shared ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from twotower.losses.inputs import LossInputs

__all__ = ["check_known_positives", "per_row_mask"]


def check_known_positives(x: LossInputs) -> None:
    """Shape, dtype and device of `LossInputs.known_positives` (values are not read here: that would
    synchronise a GPU every step; the in-batch kernel checks their range on the CPU)."""
    pairs = x.known_positives
    if pairs is None:
        return
    if not isinstance(pairs, Tensor):
        raise TypeError(f"LossInputs.known_positives must be a torch.Tensor, got {type(pairs).__name__}")
    if pairs.is_floating_point() or pairs.is_complex() or pairs.dtype == torch.bool:
        raise TypeError(f"LossInputs.known_positives must be an integer tensor, got {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"LossInputs.known_positives must be [P, 2] (row, column) pairs, got shape "
                         f"{list(pairs.shape)}")
    if pairs.device != x.query.device:
        raise TypeError(f"LossInputs.known_positives is on {pairs.device}, query on {x.query.device}")


def per_row_mask(x: LossInputs, valid: Tensor | None, num_negatives: int, num_shared: int) -> Tensor | None:
    """The per-row kinds' [B, n + M] keep-mask of the negatives' columns, with the known positives
    among the row's own negatives and the shared ones set False (`valid` None: all kept before)."""
    if x.known_positives is None:
        return valid
    rows, cols = x.known_positives[:, 0].long(), x.known_positives[:, 1].long()
    b, n, m = x.query.shape[0], num_negatives, num_shared
    own = (cols >= b + rows * n) & (cols < b + (rows + 1) * n)
    shared = (cols >= b + b * n) & (cols < b + b * n + m)
    where = torch.where(own, cols - b - rows * n, cols - b - b * n + n)
    take = own | shared
    valid = torch.ones(b, n + m, dtype=torch.bool, device=x.query.device) if valid is None else valid.clone()
    valid[rows[take], where[take]] = False
    return valid
