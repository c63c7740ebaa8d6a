"""InfoNCE on the CPU without the [B, B + M] logits in memory: the fused kernel's algorithm in
PyTorch, one block of rows at a time.

Each block's logits (sized to stay in a core's L2 cache) are formed, corrected, masked and reduced in
place; only the log-sum-exp of each row is kept for backward, which recomputes the block and forms
dS = g * (softmax - onehot) from it. Extra memory is O(B + M) plus one block, where the reference
holds several [B, B + M] temporaries (about 10 GB at B = 8192, M = 65536). Time is on par with the
reference (`python -m benchmarks.bench_infonce`: 0.9x to 1.3x its time, one thread): the recomputed
GEMM costs what the saved elementwise passes gain. Same contract as `infonce_reference` except
`symmetric` (the caller sends that to the reference). Imports only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BLOCK_ELEMENTS = 1 << 17  # logits per row block: 512 KiB of float32


def _block_rows(num_candidates: int) -> int:
    return max(8, _BLOCK_ELEMENTS // max(num_candidates, 1))


class _Side:
    """Everything besides q and the candidates, in the compute dtype, shared by forward and backward."""

    def __init__(self, B: int, logq: Tensor | None, logq_extra: Tensor | None, correct_positive: bool,
                 query_ids: Tensor | None, item_ids: Tensor | None, extra_ids: Tensor | None, dtype: torch.dtype) -> None:
        self.B = B
        self.lq = None
        if logq is not None:
            self.lq = (logq if logq_extra is None else torch.cat([logq, logq_extra])).detach().to(dtype)
        self.correct_positive = correct_positive
        self.query_ids, self.item_ids, self.extra_ids = query_ids, item_ids, extra_ids

    def logits(self, q_blk: Tensor, cand: Tensor, r0: int, inv_t: Tensor | float) -> Tensor:
        """Corrected, masked logits of rows [r0, r0 + len(q_blk)) against every candidate."""
        rows = torch.arange(r0, r0 + q_blk.shape[0], device=q_blk.device)
        s = q_blk @ cand.T
        s.mul_(inv_t)
        if self.lq is not None:
            raw_positive = s[rows - r0, rows].clone() if not self.correct_positive else None
            s.sub_(self.lq)
            if raw_positive is not None:
                s[rows - r0, rows] = raw_positive
        drop = None
        if self.item_ids is not None:
            drop = torch.zeros_like(s, dtype=torch.bool)
            drop[:, : self.B] = self.item_ids[rows, None] == self.item_ids[None, :]
            if self.extra_ids is not None:
                drop[:, self.B :] = self.item_ids[rows, None] == self.extra_ids[None, :]
        if self.query_ids is not None:
            same = torch.zeros_like(s, dtype=torch.bool) if drop is None else drop
            same[:, : self.B] |= self.query_ids[rows, None] == self.query_ids[None, :]
            drop = same
        if drop is not None:
            drop[rows - r0, rows] = False  # the positive itself is never masked
            s.masked_fill_(drop, float("-inf"))
        return s


class InfoNCEBlocked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, cand: Tensor, temperature: Tensor | float, side: _Side, reduction: str) -> Tensor:
        B = q.shape[0]
        inv_t = 1.0 / temperature
        lse = torch.empty(B, dtype=q.dtype)
        loss = torch.empty(B, dtype=q.dtype)
        step = _block_rows(cand.shape[0])
        for r0 in range(0, B, step):
            s = side.logits(q[r0 : r0 + step], cand, r0, inv_t)
            rows = torch.arange(s.shape[0])
            block_lse = torch.logsumexp(s, dim=1)
            lse[r0 : r0 + step] = block_lse
            loss[r0 : r0 + step] = block_lse - s[rows, rows + r0]
        ctx.save_for_backward(q, cand, lse, temperature if isinstance(temperature, Tensor) else torch.tensor(temperature))
        ctx.side, ctx.reduction = side, reduction
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, cand, lse, temperature = ctx.saved_tensors
        B = q.shape[0]
        if ctx.reduction == "mean":
            g = (grad_out / B).expand(B)
        elif ctx.reduction == "sum":
            g = grad_out.expand(B)
        else:
            g = grad_out
        g = g.to(q.dtype)
        inv_t = 1.0 / temperature
        dq = torch.empty_like(q)
        dcand = torch.zeros_like(cand)
        step = _block_rows(cand.shape[0])
        for r0 in range(0, B, step):
            q_blk = q[r0 : r0 + step]
            ds = ctx.side.logits(q_blk, cand, r0, inv_t)
            rows = torch.arange(ds.shape[0])
            ds.sub_(lse[r0 : r0 + step, None]).exp_()  # softmax
            ds[rows, rows + r0] -= 1.0  # - onehot(positive)
            ds.mul_(g[r0 : r0 + step, None] * inv_t)  # d loss / d (q c^T)
            dq[r0 : r0 + step] = ds @ cand
            dcand.addmm_(ds.T, q_blk)
        dtemp = None
        if ctx.needs_input_grad[2]:
            # d loss / d tau = -(1/tau) sum_ij dS_ij u_ij with u = q c^T / tau; sum_ij dS_ij (q c^T)_ij
            # = sum_i q_i . (dS c)_i = sum(q * dq) once dq holds dS c / tau, hence the tau below.
            dtemp = -(q * dq).sum() / temperature
        # None for side (ids, log-q: constants) and reduction (a flag).
        return dq, dcand, dtemp, None, None


def infonce_blocked(
    q: Tensor,
    k: Tensor,
    *,
    temperature: float | Tensor,
    extra: Tensor | None = None,
    logq: Tensor | None = None,
    logq_extra: Tensor | None = None,
    correct_positive: bool = True,
    query_ids: Tensor | None = None,
    item_ids: Tensor | None = None,
    extra_ids: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Row-blocked InfoNCE for CPU tensors; inputs already checked by `check_infonce_inputs`.
    Computes in float32 (float64 for float64 inputs) and returns that dtype, like the reference."""
    B = q.shape[0]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    cand = k if extra is None or extra.shape[0] == 0 else torch.cat([k, extra], dim=0)
    if extra is None or extra.shape[0] == 0:
        extra_ids = logq_extra = None
    side = _Side(B, logq, logq_extra, correct_positive, query_ids, item_ids, extra_ids, dtype)
    temp = temperature.to(dtype) if isinstance(temperature, Tensor) else float(temperature)
    return InfoNCEBlocked.apply(q.to(dtype), cand.to(dtype), temp, side, reduction)
