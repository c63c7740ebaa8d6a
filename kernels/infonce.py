"""Fused InfoNCE (in-batch + shared negatives) for two-tower retrieval.

`infonce` computes the contrastive loss over the [B, B + M] logits of B queries against their B
positives and M shared extra negatives without ever materialising the logits: on CUDA through the
Triton kernels of `infonce_triton` (FlashAttention-2 layout, fp32 online log-sum-exp, only lse[B]
saved for backward, deterministic); on the CPU through the row-blocked PyTorch version of the same
algorithm in `infonce_cpu`; everything else (`symmetric=True` on the CPU, a GPU without Triton or
float64 on a GPU) through the eager PyTorch `infonce_eager`.
Under TRITON_INTERPRET=1 CPU tensors go through the Triton kernels instead (how the tests exercise them).

Importing this module needs torch only; Triton is imported on first use of the kernel path.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch
from torch import Tensor

from ._first_order import first_order_only
from .infonce_cpu import infonce_blocked
from .infonce_eager import check_infonce_inputs, infonce_eager

__all__ = ["infonce", "InfoNCE", "kernel_available"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_triton_module: ModuleType | None = None


def _kernels() -> ModuleType:
    global _triton_module
    if _triton_module is None:
        _triton_module = importlib.import_module(f"{__package__}.infonce_triton")
    return _triton_module


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _find_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked installation
        return False


_HAS_TRITON = _find_triton()  # looked up once (without importing Triton), not on every call


def kernel_available(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether `infonce` runs the Triton kernel for tensors of this device and dtype: CUDA devices
    (or CPU under TRITON_INTERPRET=1) with Triton installed, for float16 / bfloat16 / float32."""
    device = torch.device(device)
    if dtype not in _KERNEL_DTYPES or not _HAS_TRITON:
        return False
    return device.type == "cuda" or (device.type == "cpu" and _interpreting())


def _autocast(q: Tensor, k: Tensor, extra: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Under torch.autocast, float32 vectors go to the autocast dtype first, as a matmul would
    (differentiably: their gradients come back in float32). L2-normalised tower outputs are float32
    under autocast, and the fp32 kernel path is many times slower than the bf16 one."""
    device_type = q.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # torch < 2.4, or a device without autocast
        return q, k, extra
    if not enabled or q.dtype != torch.float32 or dtype not in (torch.float16, torch.bfloat16):
        return q, k, extra
    return q.to(dtype), k.to(dtype), None if extra is None else extra.to(dtype)


class _InfoNCEFunction(torch.autograd.Function):
    """Autograd glue: forward launches the row log-sum-exp kernel (twice when symmetric), backward the
    row pass (dQ, dtau) and the column passes (dK, dExtra)."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        extra: Tensor | None,
        temp: Tensor,
        logq: Tensor | None,
        logq_extra: Tensor | None,
        query_ids: Tensor | None,
        item_ids: Tensor | None,
        extra_ids: Tensor | None,
        correct_positive: bool,
        reduction: str,
        symmetric: bool,
        extra_query_ids: Tensor | None,
    ) -> Tensor:
        kt = _kernels()
        side = kt.Side(extra, logq, logq_extra, query_ids, item_ids, extra_ids, correct_positive, extra_query_ids)
        lse, loss = kt.forward_lse(q, k, temp, side)
        lse_col = None
        if symmetric:
            # item -> query: anchors k, candidates q, no extra and no logQ; the in-batch mask is
            # symmetric, so the same ids serve.
            col_side = kt.Side(None, None, None, query_ids, item_ids, None, True)
            lse_col, loss_col = kt.forward_lse(k, q, temp, col_side)
            loss = loss + loss_col
        ctx.save_for_backward(q, k, extra, temp, logq, logq_extra, query_ids, item_ids, extra_ids, lse, lse_col,
                              extra_query_ids)
        ctx.correct_positive = correct_positive
        ctx.reduction = reduction
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss

    @staticmethod
    @first_order_only  # a second derivative is an error, not a silent zero
    def backward(ctx, grad_out: Tensor):
        q, k, extra, temp, logq, logq_extra, query_ids, item_ids, extra_ids, lse, lse_col, extra_query_ids = (
            ctx.saved_tensors)
        kt = _kernels()
        B = q.shape[0]
        # Upstream gradient of each row's loss (no host sync: expand/divide stay on the device).
        if ctx.reduction == "mean":
            g = (grad_out.float() / B).expand(B).contiguous()
        elif ctx.reduction == "sum":
            g = grad_out.float().expand(B).contiguous()
        else:
            g = grad_out.float().contiguous()
        side = kt.Side(extra, logq, logq_extra, query_ids, item_ids, extra_ids, ctx.correct_positive,
                       extra_query_ids)
        need_q, need_k, need_e, need_t = ctx.needs_input_grad[0:4]
        dq = dk = de = dtemp = None
        if need_q or need_t:
            dq, rowdot = kt.backward_dq(q, k, temp, side, lse, lse_col, g, compute_dtau=need_t)
            if need_t:
                # d loss / d tau = -(1/tau) sum_ij dS_ij u_ij; the kernel returns sum_j per row.
                dtemp = -(rowdot.sum() / temp)
            if not need_q:
                dq = None
        if need_k:
            dk = kt.backward_dc(q, k, temp, side, lse, lse_col, g, is_extra=False)
        if need_e and extra is not None:
            de = kt.backward_dc(q, extra, temp, side, lse, lse_col, g, is_extra=True)
        # None for logq, logq_extra, query_ids, item_ids, extra_ids (constants: sampling estimates and
        # ids), correct_positive, reduction, symmetric (Python flags), extra_query_ids.
        return dq, dk, de, dtemp, None, None, None, None, None, None, None, None, None


def infonce(
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
    symmetric: bool = False,
    extra_query_ids: Tensor | None = None,
    masked_pairs: Tensor | None = None,
) -> Tensor:
    """InfoNCE (sampled softmax) of each query against its positive, the other in-batch positives
    and optional shared extra negatives, fused so the [B, B + M] logits never exist in memory.

    Row i's candidates are k[0..B) ++ extra[0..M), its positive is k[i], and
    ``loss_i = logsumexp_j(s_ij) - s_ii`` with ``s_ij = <q_i, c_j> / temperature - logq_j``.

    Args:
        q: [B, D] query vectors (float16, bfloat16, float32; float64 runs `infonce_eager`).
        k: [B, D] positive item vectors; row i's positive is k[i], the other rows are its negatives.
        temperature: a float > 0, or a 0-d floating tensor (a learned temperature gets its gradient).
            A tensor's positivity is checked only on CPU, to avoid a GPU sync.
        extra: [M, D] negatives shared by the whole batch (e.g. sampled from the corpus); mixed
            negative sampling = in-batch + extra.
        logq: [B] log sampling probability of each in-batch candidate, subtracted from its logit
            (logQ correction, Yi et al. 2019). Treated as a constant (no gradient).
        logq_extra: [M] the same for `extra`; required together with `logq` when extra is given.
        correct_positive: subtract logq from the positive logit too (default True). In-batch
            positives are themselves draws from the item distribution, and correcting every logit
            of the softmax is what Yi et al. and TensorFlow Recommenders do; False keeps the raw
            positive score, as some implementations (e.g. sampled-softmax codebases that only
            correct negatives) do.
        query_ids: [B] integer ids; rows sharing a query id (the same user twice in a batch) do not
            use each other's positives as negatives.
        item_ids: [B] integer ids of the positives; an in-batch candidate with the same id as row i's
            positive (other than the positive itself) leaves row i's softmax (accidental hit).
        extra_ids: [M] integer ids of `extra`; needs `item_ids`; masks extra negatives equal to the
            row's positive. Masked logits are -inf (an explicit masked log-sum-exp): a row whose
            every negative is masked has loss 0 and zero gradient.
        reduction: "mean" (default, over the B rows), "sum", or "none" ([B] per-row losses).
        symmetric: add the item -> query direction (CLIP-style, the SUM of both directions, not their
            average): item j softmaxes over the B queries with its positive q_j, the same masks, and
            no logQ term (queries are not sampled; with correct_positive=True the per-item
            correction would cancel in that softmax anyway). Extra negatives have no positive query
            and take no part in that direction. With reduction="none", entry i is the sum of query
            i's and item i's losses.
        extra_query_ids: [M] integer ids of the query each extra belongs to, when the extras hold
            other processes' in-batch positives (distributed training); needs `query_ids`: extra m
            leaves row i's softmax when `extra_query_ids[m] == query_ids[i]`, as an in-batch row of
            the same query does (an id no query has, e.g. -1, masks nothing).
        masked_pairs: [P, 2] integer (row, column) pairs: candidate `column` of k ++ extra leaves
            row's softmax, as an accidental hit does (e.g. the items the row's user is known to
            like: `twotower.losses.known_positives`). A pair naming the row's own positive is
            ignored; pairs may repeat or name candidates the id masks drop already. Not with
            `symmetric`. The CPU and eager paths mask the logits; the Triton path subtracts the
            pairs' share from each row's softmax (`infonce_pairs`).

    Under torch.autocast (CUDA, or CPU), float32 q / k / extra are cast to the autocast dtype first,
    as a matmul would be.

    Returns:
        The loss: a 0-d tensor, or [B] for reduction="none"; float32 (float64 for float64 inputs).

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> k = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> loss = infonce(q, k, temperature=0.05)
        >>> loss.shape
        torch.Size([])
    """
    check_infonce_inputs(
        q, k, temperature=temperature, extra=extra, logq=logq, logq_extra=logq_extra,
        query_ids=query_ids, item_ids=item_ids, extra_ids=extra_ids, reduction=reduction,
        extra_query_ids=extra_query_ids, masked_pairs=masked_pairs, symmetric=symmetric,
    )
    q, k, extra = _autocast(q, k, extra)
    if not kernel_available(q.device, q.dtype):
        if q.device.type == "cpu" and not symmetric:
            return infonce_blocked(
                q, k, temperature=temperature, extra=extra, logq=logq, logq_extra=logq_extra,
                correct_positive=correct_positive, query_ids=query_ids, item_ids=item_ids,
                extra_ids=extra_ids, reduction=reduction, extra_query_ids=extra_query_ids,
                masked_pairs=masked_pairs,
            )
        return infonce_eager(
            q, k, temperature=temperature, extra=extra, logq=logq, logq_extra=logq_extra,
            correct_positive=correct_positive, query_ids=query_ids, item_ids=item_ids,
            extra_ids=extra_ids, reduction=reduction, symmetric=symmetric, extra_query_ids=extra_query_ids,
            masked_pairs=masked_pairs,
        )
    dev = q.device
    if isinstance(temperature, Tensor):
        temp = temperature.to(device=dev, dtype=torch.float32)  # differentiable: grads flow back
    else:
        temp = torch.full((), float(temperature), dtype=torch.float32, device=dev)
    if extra is not None and extra.shape[0] == 0:
        extra = logq_extra = extra_ids = extra_query_ids = None

    def rows(x: Tensor) -> Tensor:  # unit stride along D; any row stride is fine
        return x if x.stride(-1) == 1 else x.contiguous()

    def vec(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        return None if x is None else x.detach().to(dtype).contiguous()

    q, k, extra = rows(q), rows(k), None if extra is None else rows(extra)
    ids = vec(query_ids, torch.int64), vec(item_ids, torch.int64), vec(extra_ids, torch.int64)
    lq, lq_extra, extra_query_ids = vec(logq, torch.float32), vec(logq_extra, torch.float32), vec(extra_query_ids,
                                                                                                  torch.int64)
    kernel_reduction = reduction if masked_pairs is None else "none"
    losses = _apply_kernel(q, k, extra, temp, lq, lq_extra, *ids, bool(correct_positive), kernel_reduction,
                           bool(symmetric), extra_query_ids)
    if masked_pairs is None:
        return losses
    from .infonce_pairs import masked_pair_losses

    cand = k if extra is None else torch.cat([k, extra])
    lq_all = None if lq is None else (lq if lq_extra is None else torch.cat([lq, lq_extra]))
    losses = masked_pair_losses(losses, q, cand, temp, lq_all, bool(correct_positive), masked_pairs,
                                ids[0], ids[1], ids[2], extra_query_ids)
    return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses


@torch.compiler.disable
def _apply_kernel(*args):
    """The kernel path runs eagerly inside torch.compile'd code (a graph break), rather than asking
    Dynamo to trace heuristics-wrapped Triton launches."""
    return _InfoNCEFunction.apply(*args)


class InfoNCE(torch.nn.Module):
    """Module form of `infonce` with a fixed or learned temperature.

    Args:
        temperature: initial temperature (> 0).
        learn_temperature: learn log(temperature) as a parameter (CLIP-style), clamped to
            [min_temperature, max_temperature].
        **options: any keyword option of `infonce` except temperature (reduction, symmetric, ...).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        *,
        learn_temperature: bool = False,
        min_temperature: float = 1e-3,
        max_temperature: float = 10.0,
        **options,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"InfoNCE: temperature must be > 0, got {temperature}")
        if "temperature" in options:
            raise TypeError("InfoNCE: pass temperature as the first argument")
        self.options = options
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.learn_temperature = learn_temperature
        self.fixed_temperature = float(temperature)
        if learn_temperature:
            self.log_temperature = torch.nn.Parameter(torch.tensor(float(temperature)).log())

    def forward(self, q: Tensor, k: Tensor, **kwargs) -> Tensor:
        """q [B, D], k [B, D]; keyword arguments override the constructor's options per call."""
        if self.learn_temperature:
            temperature = self.log_temperature.exp().clamp(self.min_temperature, self.max_temperature)
        else:
            temperature = self.fixed_temperature
        return infonce(q, k, temperature=temperature, **{**self.options, **kwargs})
