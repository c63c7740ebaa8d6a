"""InfoNCE on the CPU without the [B, B + M] logits in memory: the fused kernel's algorithm, one
block of rows at a time.

Each block's raw scores come from torch's GEMM (sized to stay in a core's L2 cache); temperature,
log-q correction and accidental-hit masks are then one Numba pass over the block (and `masked_pairs`
one scatter of -inf)
(`_infonce_cpu_jit`, integer codes instead of boolean [rows, N] masks: the PyTorch form of that
step took about ten passes), and torch's vectorised exp does the log-sum-exp forward and
dS = g * (softmax - onehot) / tau backward. Above `_KEEP_ELEMENTS` logits only lse[B] is kept for
backward, which recomputes each block's scores: extra memory is O(B + M) plus one block, where
`infonce_eager` holds several [B, B + M] temporaries (about 10 GB at B = 8192, M = 65536); below it the
forward keeps the softmax (at most 64 MiB) and backward skips the recomputation. Same contract as `infonce_eager`
except `symmetric` (the caller sends that to `infonce_eager`).

bfloat16 inputs (torch.autocast on the CPU casts float32 vectors to it) keep their GEMMs in
bfloat16, the fast path of CPUs with native bf16 arithmetic (AVX512-BF16, AMX), while the logits,
the log-sum-exp, the softmax and the sums of the gradients stay float32; the loss and the gradients
come back in float32, as the float32 path's do.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _infonce_cpu_jit as jit
from ._first_order import first_order_only
from .distinct import distinct

_BLOCK_ELEMENTS = 1 << 17  # logits per row block: 512 KiB of float32
# Up to this many logits (64 MiB of float32) the forward keeps the softmax for backward, which then
# skips recomputing the scores (a quarter of a B = 1024, M = 1024 step); above it, O(B + M) memory.
_KEEP_ELEMENTS = 1 << 24


def _block_rows(num_candidates: int) -> int:
    return max(8, _BLOCK_ELEMENTS // max(num_candidates, 1))


class _Side:
    """Everything besides q and the candidates, as the kernel takes it, shared by forward and backward.

    Ids become small codes so that a mask is one integer compare: item ids (positives, then the
    extras that carry ids) are numbered by `distinct`; extras without ids get -1, and when item
    masking is off every row gets -3, which nothing matches. Query ids likewise, with -2 for the
    extras unless `extra_query_ids` names their queries (other processes' in-batch rows)."""

    def __init__(self, B: int, N: int, logq: Tensor | None, logq_extra: Tensor | None, correct_positive: bool,
                 query_ids: Tensor | None, item_ids: Tensor | None, extra_ids: Tensor | None,
                 dtype: torch.dtype, extra_query_ids: Tensor | None = None,
                 masked_pairs: Tensor | None = None) -> None:
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.B = B
        self.lq = np.zeros(N, dtype=np_dtype)
        if logq is not None:
            self.lq[:B] = logq.detach().cpu().numpy()
            if logq_extra is not None:
                self.lq[B:] = logq_extra.detach().cpu().numpy()
        self.positive_lq = self.lq[:B].copy() if correct_positive else np.zeros(B, dtype=np_dtype)
        self.cand_item = np.full(N, -1, dtype=np.int64)
        self.row_item = np.full(B, -3, dtype=np.int64)
        if item_ids is not None:
            ids = item_ids if extra_ids is None else torch.cat([item_ids, extra_ids])
            codes = distinct(ids.detach().cpu().numpy().astype(np.int64))[1]
            self.cand_item[: codes.size] = codes
            self.row_item[:] = codes[:B]
        self.cand_query = np.full(N, -2, dtype=np.int64)
        self.row_query = np.full(B, -3, dtype=np.int64)
        if query_ids is not None:
            ids = query_ids if extra_query_ids is None else torch.cat([query_ids, extra_query_ids])
            codes = distinct(ids.detach().cpu().numpy().astype(np.int64))[1]
            self.cand_query[: codes.size] = codes
            self.row_query[:] = codes[:B]
        self.N = N
        self.pairs = None  # sorted flat indices row * N + column of the masked pairs
        if masked_pairs is not None and masked_pairs.numel():
            rows, cols = masked_pairs[:, 0].long(), masked_pairs[:, 1].long()
            self.pairs = torch.sort((rows * N + cols)[cols != rows]).values.numpy()

    def logits(self, q_blk: Tensor, cand: Tensor, r0: int, inv_t: float) -> Tensor:
        """Corrected, masked (-inf) logits of rows [r0, r0 + len(q_blk)) against every candidate
        (float32 from bfloat16 GEMM operands)."""
        s = q_blk @ cand.T
        if s.dtype == torch.bfloat16:
            s = s.float()
        jit.block_logits(s.numpy(), r0, s.numpy().dtype.type(inv_t), self.lq, self.cand_item, self.row_item,
                         self.cand_query, self.row_query, self.positive_lq)
        if self.pairs is not None:
            lo, hi = np.searchsorted(self.pairs, [r0 * self.N, (r0 + s.shape[0]) * self.N])
            s.view(-1)[torch.from_numpy(self.pairs[lo:hi] - r0 * self.N)] = float("-inf")
        return s


class InfoNCEBlocked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, cand: Tensor, temperature: Tensor | float, side: _Side, reduction: str,
                gemm_dtype: torch.dtype) -> Tensor:
        B = q.shape[0]
        inv_t = 1.0 / float(temperature)
        dtype = q.dtype  # of the logits, the softmax and the results: float32 or float64
        q, cand = q.detach().to(gemm_dtype).contiguous(), cand.detach().to(gemm_dtype).contiguous()
        lse = torch.empty(B, dtype=dtype)
        loss = torch.empty(B, dtype=dtype)
        # Small problems keep the softmax for backward (no recomputed GEMM and logits pass).
        softmax = torch.empty(B, cand.shape[0], dtype=dtype) if B * cand.shape[0] <= _KEEP_ELEMENTS else None
        step = _block_rows(cand.shape[0])
        for r0 in range(0, B, step):
            s = side.logits(q[r0 : r0 + step], cand, r0, inv_t)
            rows = torch.arange(s.shape[0])
            if softmax is None:
                torch.logsumexp(s, dim=1, out=lse[r0 : r0 + step])
            else:  # one exp pass gives both the log-sum-exp and the kept softmax
                top = s.amax(dim=1, keepdim=True)  # finite: the positive is never masked
                p = torch.exp(s - top, out=softmax[r0 : r0 + step])
                total = p.sum(dim=1, keepdim=True)
                p.div_(total)
                lse[r0 : r0 + step] = (top + total.log()).squeeze(1)
            loss[r0 : r0 + step] = lse[r0 : r0 + step] - s[rows, rows + r0]
        ctx.save_for_backward(
            q, cand, lse, temperature if isinstance(temperature, Tensor) else torch.tensor(temperature)
        )
        ctx.side, ctx.reduction, ctx.softmax, ctx.dtype = side, reduction, softmax, dtype
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    @first_order_only  # a second derivative is an error, not a silent zero
    def backward(ctx, grad_out: Tensor):
        q, cand, lse, temperature = ctx.saved_tensors
        B = q.shape[0]
        if ctx.reduction == "mean":
            g = (grad_out / B).expand(B)
        elif ctx.reduction == "sum":
            g = grad_out.expand(B)
        else:
            g = grad_out
        inv_t = 1.0 / float(temperature)
        dtype = ctx.dtype
        scale = (g.to(dtype) * inv_t).contiguous()
        dq = torch.empty(q.shape, dtype=dtype)
        dcand = torch.zeros(cand.shape, dtype=dtype)
        # bfloat16 GEMMs over a kept softmax run whole: short blocks would waste their speed.
        step = B if ctx.softmax is not None and q.dtype != dtype else _block_rows(cand.shape[0])
        for r0 in range(0, B, step):
            q_blk = q[r0 : r0 + step]
            if ctx.softmax is not None:
                ds = ctx.softmax[r0 : r0 + step]  # consumed in place (dropped below: a second backward recomputes)
            else:
                ds = ctx.side.logits(q_blk, cand, r0, inv_t)
                ds.sub_(lse[r0 : r0 + step, None]).exp_()  # softmax (masked entries: exp(-inf) = 0)
            rows = torch.arange(ds.shape[0])
            ds[rows, rows + r0] -= 1.0  # - onehot(positive)
            ds.mul_(scale[r0 : r0 + step, None])  # d loss / d (q c^T)
            if q.dtype == dtype:
                torch.mm(ds, cand, out=dq[r0 : r0 + step])
                dcand.addmm_(ds.T, q_blk)
            else:  # bfloat16 GEMMs, float32 sums
                ds = ds.to(q.dtype)
                dq[r0 : r0 + step] = ds @ cand
                dcand += ds.T @ q_blk
        ctx.softmax = None  # spent; a backward through a retained graph recomputes it from q, cand, lse
        dtemp = None
        if ctx.needs_input_grad[2]:
            # d loss / d tau = -(1/tau) sum_ij dS_ij u_ij with u = q c^T / tau; sum_ij dS_ij (q c^T)_ij
            # = sum_i q_i . (dS c)_i = sum(q * dq) once dq holds dS c / tau, hence the tau below.
            dtemp = -(q.to(dtype) * dq).sum() / temperature
        # None for side (ids, log-q: constants), reduction and gemm_dtype (flags).
        return dq, dcand, dtemp, None, None, None


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
    extra_query_ids: Tensor | None = None,
    masked_pairs: Tensor | None = None,
) -> Tensor:
    """Row-blocked InfoNCE for CPU tensors; inputs already checked by `check_infonce_inputs`.
    Computes in float32 (float64 for float64 inputs) and returns that dtype, like `infonce_eager`;
    bfloat16 inputs (all of them) keep bfloat16 GEMMs."""
    B = q.shape[0]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    no_extra = extra is None or extra.shape[0] == 0
    bf16 = q.dtype == k.dtype == torch.bfloat16 and (no_extra or extra.dtype == torch.bfloat16)
    gemm_dtype = torch.bfloat16 if bf16 else dtype
    cand = k if no_extra else torch.cat([k, extra], dim=0)
    if no_extra:
        extra_ids = logq_extra = extra_query_ids = None
    side = _Side(B, cand.shape[0], logq, logq_extra, correct_positive, query_ids, item_ids, extra_ids, dtype,
                 extra_query_ids, masked_pairs)
    temp = temperature.to(dtype) if isinstance(temperature, Tensor) else float(temperature)
    return InfoNCEBlocked.apply(q.to(dtype), cand.to(dtype), temp, side, reduction, gemm_dtype)
