"""Plain torch `known_positive_pairs`: every (row, candidate) membership test at once, by a binary
search of user * N + item keys in the history's sorted keys. Device-agnostic (the device-resident
pipeline's path on a GPU, where B x C searches are cheap) and the reference the Numba kernel is
tested and benchmarked against."""

from __future__ import annotations

import torch
from torch import Tensor


def history_keys(indptr: Tensor, indices: Tensor, num_items: int) -> Tensor:
    """The history's entries as sorted int64 keys user * num_items + item (rows ascending, items
    sorted within a row: already in order)."""
    rows = torch.repeat_interleave(torch.arange(indptr.numel() - 1, device=indptr.device), torch.diff(indptr))
    return rows * num_items + indices.long()


_BLOCK_ELEMENTS = 1 << 24  # (row, candidate) keys searched at once: 128 MiB of int64 and its temporaries


def pairs_from_keys(keys: Tensor, num_items: int, users: Tensor, candidates: Tensor) -> Tensor:
    """[P, 2] int64 (row, column) pairs, rows then columns ascending: candidate c is in row r's
    user's history, found by searching users[r] * num_items + candidates[c] among `keys` (a block
    of rows at a time, so a batch of 8k rows against 70k candidates stays within memory)."""
    if keys.numel() == 0 or users.numel() == 0 or candidates.numel() == 0:
        return torch.empty((0, 2), dtype=torch.int64, device=users.device)
    cand = candidates.long().unsqueeze(0)
    step = max(1, _BLOCK_ELEMENTS // candidates.numel())
    found = []
    for r0 in range(0, users.numel(), step):
        asked = users[r0 : r0 + step].long().unsqueeze(1) * num_items + cand
        at = torch.searchsorted(keys, asked).clamp(max=keys.numel() - 1)
        hits = torch.nonzero((keys[at] == asked) & (cand >= 0))
        hits[:, 0] += r0
        found.append(hits)
    return torch.cat(found)


def known_positive_pairs_eager(indptr: Tensor, indices: Tensor, users: Tensor, candidates: Tensor,
                               num_items: int) -> Tensor:
    """Same contract as `known_positives.known_positive_pairs`, on torch tensors of any device."""
    inside = (candidates >= 0) & (candidates < num_items)  # other ids match nothing (no key collisions)
    candidates = torch.where(inside, candidates.long(), candidates.new_full((), -1).long())
    return pairs_from_keys(history_keys(indptr, indices, num_items), num_items, users, candidates)
