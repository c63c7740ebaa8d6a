"""`infonce`'s masked pairs on the Triton path, without changing the fused kernels: the kernel gives
each row's loss over all its candidates, lse_r - z_rr, and the masked row's loss is that plus
log(1 - sum over the row's pairs of exp(z_rc - lse_r)), the share of the row's softmax the pairs
held, from the pairs' own logits. Autograd through both terms gives the masked softmax's gradient.

The Triton kernels accumulate their dot products in float32 from operands in the input dtype, and
so do the pairs' logits here; the CPU and eager paths mask inside the logits instead (-inf), exact
for any operand rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_pair_losses"]

# Keeps log(1 - share) finite where the pairs hold (to rounding) all of a row's softmax but the positive.
_MAX_SHARE = 1.0 - 1e-6


def _unmasked_pairs(pairs: Tensor, B: int, N: int, query_ids: Tensor | None, item_ids: Tensor | None,
                    extra_ids: Tensor | None, extra_query_ids: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, columns, weight): each distinct pair once (`torch.unique`, one host sync: the pairs'
    count is data-dependent); weight 0 where the kernel masks the candidate already (the row's
    positive, an accidental hit, a candidate of the row's query)."""
    flat = torch.unique(pairs[:, 0].long() * N + pairs[:, 1].long())
    rows, cols = flat // N, flat % N
    keep = cols != rows
    M = N - B
    inb, ext = cols < B, cols >= B
    col_inb, col_ext = cols.clamp(max=B - 1), (cols - B).clamp(min=0)
    if item_ids is not None:
        own = item_ids.long()[rows]
        hit = inb & (item_ids.long()[col_inb] == own)
        if extra_ids is not None and M > 0:
            hit |= ext & (extra_ids.long()[col_ext] == own)
        keep &= ~hit
    if query_ids is not None:
        own = query_ids.long()[rows]
        same = inb & (query_ids.long()[col_inb] == own)
        if extra_query_ids is not None and M > 0:
            same |= ext & (extra_query_ids.long()[col_ext] == own)
        keep &= ~same
    return rows, cols, keep


def masked_pair_losses(
    row_losses: Tensor,
    q: Tensor,
    cand: Tensor,
    temperature: Tensor,
    lq: Tensor | None,
    correct_positive: bool,
    pairs: Tensor,
    query_ids: Tensor | None,
    item_ids: Tensor | None,
    extra_ids: Tensor | None,
    extra_query_ids: Tensor | None,
) -> Tensor:
    """Per-row losses [B] with the pairs' candidates out of each row's softmax.

    Args:
        row_losses: [B] the kernel's losses (reduction "none") over every candidate.
        q: [B, D]; cand: [N, D] the candidates k ++ extra, in the dtype the kernel read them in.
        temperature: 0-d float32 tensor (differentiable); lq: [N] log-q of the candidates or None.
        pairs: [P, 2] (row, column); the ids: the kernel's masks, so no candidate leaves twice.
    """
    B, N = q.shape[0], cand.shape[0]
    if pairs.numel() == 0:
        return row_losses
    rows, cols, keep = _unmasked_pairs(pairs, B, N, query_ids, item_ids, extra_ids, extra_query_ids)
    dtype = row_losses.dtype
    qr = q[rows]
    with torch.autocast(q.device.type, enabled=False):
        s_pair = (qr.to(dtype) * cand[cols].to(dtype)).sum(-1)
        s_pos = (qr.to(dtype) * cand[rows].to(dtype)).sum(-1)
    z = (s_pair - s_pos) / temperature.to(dtype)
    if lq is not None:
        z = z - lq.to(dtype)[cols]
        if correct_positive:
            z = z + lq.to(dtype)[rows]
    # exp(z_rc - lse_r) = exp((z_rc - z_rr) - loss_r): the share of row r's softmax on column c.
    terms = torch.exp(z - row_losses[rows]) * keep.to(dtype)
    share = torch.zeros(B, dtype=dtype, device=row_losses.device).index_add(0, rows, terms)
    return row_losses + torch.log1p(-share.clamp(max=_MAX_SHARE))
