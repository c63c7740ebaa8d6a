"""Exact top-K on a torch device (`topk_torch`): blocked score matrix, seen items masked, top-k, with
`twotower.topk`'s contract, so that a CUDA run ranks its validation users on the GPU instead of
copying the vectors to the C++ scorer. The CPU runs the same code (its tests compare it with the
C++ scorer and the eager NumPy reference); on the CPU the C++ scorer stays the faster path.

Order: higher score first, then lower item id (ties are resolved exactly: the k-th score's ties are
taken lowest id first); NaN scores rank after every number, -inf included; excluded items never
appear; missing slots hold id -1 and score -inf. Scores are the float32 inner products of the
device's matmul (a different summation order from the C++ scorer's, so near-ties may swap).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from twotower.retrieval.checks import check_exclude, check_k, check_matrix

__all__ = ["scores_topk", "topk_torch"]

_BLOCK_ELEMENTS = 1 << 24  # scores held at once per block of queries
# Sort keys below every float32 score, for the scores that must rank last but still appear.
_KEY_NEG_INF, _KEY_NAN = -1.0e308, -1.7e308


def topk_torch(queries: Any, items: Any, k: int, *, exclude: tuple[np.ndarray, np.ndarray] | None = None,
               device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product on `device` (default: the items' device if a tensor, else the CPU).

    Args:
        queries: [B, D] float32 (NumPy or torch).
        items: [N, D] float32 (NumPy or torch).
        k: results per query, k >= 1 (k > N pads).
        exclude: optional CSR (indptr [B+1], indices) of item ids to skip per query.

    Returns:
        (scores float32 [B, k], ids int64 [B, k]) as NumPy arrays.
    """
    device = torch.device(device) if device is not None else (
        items.device if isinstance(items, Tensor) else torch.device("cpu"))
    q = _on(queries, "queries", device)
    v = _on(items, "items", device)
    if q.shape[1] != v.shape[1]:
        raise ValueError(f"queries and items must have the same dimension D; got queries {tuple(q.shape)} and "
                         f"items {tuple(v.shape)}")
    k = check_k(k)
    exclude = check_exclude(exclude, q.shape[0], v.shape[0])
    out_scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    out_ids = np.full((q.shape[0], k), -1, dtype=np.int64)
    if v.shape[0] == 0:
        return out_scores, out_ids
    block = max(1, _BLOCK_ELEMENTS // v.shape[0])
    for start in range(0, q.shape[0], block):
        stop = min(start + block, q.shape[0])
        scores, ids = _block_topk(q[start:stop], v, min(k, v.shape[0]), _block_exclude(exclude, start, stop, device))
        out_scores[start:stop, : ids.shape[1]] = scores.cpu().numpy()
        out_ids[start:stop, : ids.shape[1]] = ids.cpu().numpy()
    return out_scores, out_ids


def _on(x: Any, name: str, device: torch.device) -> Tensor:
    if isinstance(x, Tensor):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating tensor, got shape {tuple(x.shape)} and {x.dtype}")
        return x.detach().to(device=device, dtype=torch.float32)
    return torch.from_numpy(check_matrix(name, x)).to(device)


def _block_exclude(exclude: tuple[np.ndarray, np.ndarray] | None, start: int, stop: int,
                   device: torch.device) -> tuple[Tensor, Tensor] | None:
    """(rows, cols) of the block's excluded (query, item) pairs, on the device."""
    if exclude is None:
        return None
    indptr, indices = exclude
    counts = np.diff(indptr[start:stop + 1])
    rows = np.repeat(np.arange(stop - start, dtype=np.int64), counts)
    cols = np.asarray(indices[indptr[start]:indptr[stop]], dtype=np.int64)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def _block_topk(q: Tensor, v: Tensor, k: int, excluded: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    return scores_topk(q @ v.T, k, excluded, overwrite=True)


def scores_topk(scores: Tensor, k: int, excluded: tuple[Tensor, Tensor] | None = None, *,
                overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """(scores, ids) [rows, k] of a float32 score matrix under `topk_torch`'s contract: best first,
    ties lowest id first, NaN after every number, the (row, column) pairs of `excluded` never
    listed, missing slots id -1 and score -inf (k <= columns). With `overwrite` the excluded
    entries of `scores` are set to -inf in place (for a caller whose matrix is a temporary).

    One `torch.topk` decides most rows: where the k-th and (k+1)-th scores differ the k best are
    fixed and only their order among equal scores needs the ids. Rows with a tie across that
    boundary, a NaN or an infinite score take the exact path (`_exact_topk`)."""
    columns = scores.shape[1]
    low, high = torch.aminmax(scores, dim=1)
    slow = ~(torch.isfinite(high) & torch.isfinite(low))  # NaN: both NaN
    work = scores if overwrite or excluded is None else scores.clone()
    if excluded is not None:
        work[excluded[0], excluded[1]] = float("-inf")  # an excluded entry's value no longer matters, below too
    values, ids = torch.topk(work, min(k + 1, columns), dim=1)
    if values.shape[1] > k:
        slow |= (values[:, k - 1] == values[:, k]) & (values[:, k - 1] > float("-inf"))
    values, ids = values[:, :k], ids[:, :k]
    ids, by_id = torch.sort(ids, dim=1)  # equal scores: the lower id first, by the stable sort below
    values = values.gather(1, by_id)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    values, ids = values.gather(1, order), ids.gather(1, order)
    missing = values == float("-inf")  # excluded: fewer than k items were left
    ids = ids.masked_fill(missing, -1)
    if bool(slow.any()):
        rows = slow.nonzero().squeeze(1)
        values[rows], ids[rows] = _exact_topk(work[rows], k, _rows_of(excluded, rows, len(scores)))
    return values, ids


def _rows_of(excluded: tuple[Tensor, Tensor] | None, rows: Tensor, num_rows: int) -> tuple[Tensor, Tensor] | None:
    """The excluded (row, column) pairs of `rows`, renumbered 0.. in their order."""
    if excluded is None:
        return None
    position = torch.full((num_rows,), -1, dtype=torch.int64, device=rows.device)
    position[rows] = torch.arange(len(rows), device=rows.device)
    new_rows = position[excluded[0]]
    keep = new_rows >= 0
    return new_rows[keep], excluded[1][keep]


def _exact_topk(scores: Tensor, k: int, excluded: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """`scores_topk` for any rows: every score as a float64 key (NaN and -inf as keys below every
    number), the k-th key's ties taken lowest id first."""
    key = scores.double()
    key = torch.where(scores == float("-inf"), _KEY_NEG_INF, key)
    key = torch.where(torch.isnan(scores), _KEY_NAN, key)
    if excluded is not None:
        key[excluded[0], excluded[1]] = float("-inf")
    kth = torch.topk(key, k, dim=1).values[:, -1:]
    above = key > kth
    tied = key == kth
    need = k - above.sum(dim=1, keepdim=True)
    take = above | (tied & (torch.cumsum(tied, dim=1) <= need))  # the k-th score's ties, lowest ids first
    cols = take.nonzero()[:, 1].reshape(-1, k)  # each row's k items, in increasing id
    order = torch.sort(key.gather(1, cols), dim=1, descending=True, stable=True).indices
    ids = cols.gather(1, order)
    missing = key.gather(1, ids) == float("-inf")  # excluded: fewer than k items were left
    out = scores.gather(1, ids).masked_fill(missing, float("-inf"))
    return out, ids.masked_fill(missing, -1)
