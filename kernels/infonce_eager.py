"""Eager PyTorch InfoNCE: the path for what neither the fused Triton kernel nor the CPU path takes
(`symmetric=True` on the CPU, a GPU without Triton, float64 on a GPU) and the benchmark baseline.
Tests check it, like the kernels, against the float64 oracle in `tests/kernels/oracles.py`.

Same signature and semantics as `twotower.kernels.infonce.infonce`; see that function for the maths.
This module also holds the input checks both implementations share, so they reject exactly the same
inputs with the same messages. Nothing here imports Triton.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["infonce_eager", "check_infonce_inputs", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_vectors(name: str, x: Tensor | None, length: int, device: torch.device, *, integer: bool) -> None:
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"infonce: {name} must be a torch.Tensor or None, got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] != length:
        raise ValueError(f"infonce: {name} must have shape [{length}], got {list(x.shape)}")
    if x.device != device:
        raise ValueError(f"infonce: {name} is on {x.device} but q is on {device}")
    if integer and (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool):
        raise TypeError(f"infonce: {name} must be an integer tensor of ids, got {x.dtype}")
    if not integer and not x.dtype.is_floating_point:
        raise TypeError(f"infonce: {name} must be a floating tensor of log-probabilities, got {x.dtype}")


def check_infonce_inputs(
    q: Tensor,
    k: Tensor,
    *,
    temperature: float | Tensor,
    extra: Tensor | None,
    logq: Tensor | None,
    logq_extra: Tensor | None,
    query_ids: Tensor | None,
    item_ids: Tensor | None,
    extra_ids: Tensor | None,
    reduction: str,
    extra_query_ids: Tensor | None = None,
    masked_pairs: Tensor | None = None,
    symmetric: bool = False,
) -> None:
    """Raises `TypeError`/`ValueError` naming the argument when the inputs of `infonce` are malformed.

    Only shapes, dtypes, devices and scalar values are checked: nothing here reads device memory, so
    the check never synchronises with a GPU (a tensor temperature is therefore not checked for > 0
    unless it lives on the CPU).
    """
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, Tensor):
            raise TypeError(f"infonce: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"infonce: {name} must be 2-D [B, D], got shape {list(x.shape)}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"infonce: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"infonce: q and k must have the same shape [B, D], got {list(q.shape)} and {list(k.shape)}")
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"infonce: q must have at least one row and one column, got shape {list(q.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"infonce: q and k must have the same dtype, got {q.dtype} and {k.dtype}")
    if k.device != q.device:
        raise ValueError(f"infonce: q is on {q.device} but k is on {k.device}")
    B, D = q.shape
    M = 0
    if extra is not None:
        if not isinstance(extra, Tensor):
            raise TypeError(f"infonce: extra must be a torch.Tensor or None, got {type(extra).__name__}")
        if extra.dim() != 2 or extra.shape[1] != D:
            raise ValueError(f"infonce: extra must have shape [M, {D}], got {list(extra.shape)}")
        if extra.dtype != q.dtype:
            raise TypeError(f"infonce: extra must have q's dtype {q.dtype}, got {extra.dtype}")
        if extra.device != q.device:
            raise ValueError(f"infonce: extra is on {extra.device} but q is on {q.device}")
        M = extra.shape[0]
    if logq_extra is not None and extra is None:
        raise ValueError("infonce: logq_extra was given without extra")
    if extra_ids is not None and extra is None:
        raise ValueError("infonce: extra_ids was given without extra")
    if extra_ids is not None and item_ids is None:
        raise ValueError("infonce: extra_ids needs item_ids (the id of each row's positive, to compare against)")
    if extra is not None and M > 0 and (logq is None) != (logq_extra is None):
        raise ValueError(
            "infonce: with extra negatives, pass both logq (in-batch candidates) and logq_extra (extra "
            "negatives) or neither; correcting only one group would bias the softmax between them"
        )
    _check_vectors("logq", logq, B, q.device, integer=False)
    _check_vectors("logq_extra", logq_extra, M, q.device, integer=False)
    _check_vectors("query_ids", query_ids, B, q.device, integer=True)
    _check_vectors("item_ids", item_ids, B, q.device, integer=True)
    _check_vectors("extra_ids", extra_ids, M, q.device, integer=True)
    if extra_query_ids is not None and (extra is None or query_ids is None):
        raise ValueError("infonce: extra_query_ids needs extra and query_ids (each row's query, to compare against)")
    _check_vectors("extra_query_ids", extra_query_ids, M, q.device, integer=True)
    _check_pairs(masked_pairs, q.device, symmetric, B, B + M)
    if isinstance(temperature, bool):
        raise TypeError("infonce: temperature must be a positive float or a 0-d floating tensor, got a bool")
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0 or not temperature.dtype.is_floating_point:
            raise ValueError(
                f"infonce: a tensor temperature must be 0-d and floating, got shape {list(temperature.shape)} "
                f"and dtype {temperature.dtype}"
            )
        if temperature.device.type == "cpu" and not bool(temperature.detach() > 0):
            raise ValueError(f"infonce: temperature must be > 0, got {float(temperature)}")
    elif isinstance(temperature, numbers.Real):  # int, float, NumPy scalars
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"infonce: temperature must be a finite number > 0, got {temperature}")
    else:
        raise TypeError(f"infonce: temperature must be a float or a 0-d tensor, got {type(temperature).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"infonce: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_pairs(pairs: Tensor | None, device: torch.device, symmetric: bool, B: int, N: int) -> None:
    if pairs is None:
        return
    if not isinstance(pairs, Tensor):
        raise TypeError(f"infonce: masked_pairs must be a torch.Tensor or None, got {type(pairs).__name__}")
    if pairs.is_floating_point() or pairs.is_complex() or pairs.dtype == torch.bool:
        raise TypeError(f"infonce: masked_pairs must be an integer tensor, got {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"infonce: masked_pairs must be [P, 2] (row, column) pairs, got shape {list(pairs.shape)}")
    if pairs.device != device:
        raise ValueError(f"infonce: masked_pairs is on {pairs.device} but q is on {device}")
    if symmetric:
        raise ValueError("infonce: masked_pairs with symmetric=True is not supported (the item -> query "
                         "direction would need its own pairs)")
    if device.type == "cpu" and pairs.numel():  # read only where it costs no device synchronisation
        rows, cols = pairs[:, 0], pairs[:, 1]
        if int(rows.min()) < 0 or int(rows.max()) >= B or int(cols.min()) < 0 or int(cols.max()) >= N:
            raise ValueError(f"infonce: masked_pairs must hold rows in [0, {B}) and columns in [0, {N}) (the B "
                             f"positives, then the M extras), got rows {int(rows.min())}..{int(rows.max())} and "
                             f"columns {int(cols.min())}..{int(cols.max())}")


def pair_mask(pairs: Tensor, B: int, N: int) -> Tensor:
    """[B, N] bool, True at the (row, column) pairs other than a row's own positive (column = row)."""
    rows, cols = pairs[:, 0].long(), pairs[:, 1].long()
    flat = torch.zeros(B * N, dtype=torch.bool, device=pairs.device)
    flat = flat.index_fill(0, (rows * N + cols)[cols != rows], True)
    return flat.view(B, N)


def accidental_hit_mask(
    B: int,
    M: int,
    *,
    query_ids: Tensor | None,
    item_ids: Tensor | None,
    extra_ids: Tensor | None,
    device: torch.device,
    extra_query_ids: Tensor | None = None,
) -> Tensor | None:
    """[B, B + M] bool, True where candidate j must leave row i's softmax; None when nothing is masked.

    In-batch column j (j != i) leaves row i when it holds the same item as row i's positive
    (`item_ids[j] == item_ids[i]`) or belongs to the same query (`query_ids[j] == query_ids[i]`);
    extra column m leaves row i when `extra_ids[m] == item_ids[i]` or `extra_query_ids[m] == query_ids[i]`
    (extras that are other processes' in-batch rows). The positive itself is never masked.
    The in-batch block is symmetric, so the item -> query direction uses its transpose unchanged.
    """
    if query_ids is None and item_ids is None:
        return None
    # Out-of-place throughout, so torch.compile can trace it.
    inb = torch.zeros(B, B, dtype=torch.bool, device=device)
    if item_ids is not None:
        inb = inb | (item_ids[:, None] == item_ids[None, :])
    if query_ids is not None:
        inb = inb | (query_ids[:, None] == query_ids[None, :])
    inb = inb & ~torch.eye(B, dtype=torch.bool, device=device)
    if M == 0:
        return inb
    if extra_ids is not None and item_ids is not None:
        ext = item_ids[:, None] == extra_ids[None, :]
    else:
        ext = torch.zeros(B, M, dtype=torch.bool, device=device)
    if extra_query_ids is not None and query_ids is not None:
        ext = ext | (query_ids[:, None] == extra_query_ids[None, :])
    return torch.cat([inb, ext], dim=1)


def infonce_eager(
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
    """InfoNCE over in-batch (+ shared extra) negatives, materialising the [B, B + M] logits.

    Identical contract to `twotower.kernels.infonce.infonce`. Logits come from a GEMM in the input
    dtype (fp16/bf16 GEMMs accumulate in fp32 but round their output, as eager PyTorch code does) and
    everything after it (correction, masks, log-sum-exp) runs in float32, or float64 for float64
    inputs, as the float64 path. The loss is float32 (float64 for float64
    inputs). `logq`/`logq_extra` are treated as constants (no gradient).

    Example:
        >>> q, k = torch.randn(4, 8), torch.randn(4, 8)
        >>> infonce_eager(q, k, temperature=0.1).shape
        torch.Size([])
    """
    check_infonce_inputs(
        q, k, temperature=temperature, extra=extra, logq=logq, logq_extra=logq_extra,
        query_ids=query_ids, item_ids=item_ids, extra_ids=extra_ids, reduction=reduction,
        extra_query_ids=extra_query_ids, masked_pairs=masked_pairs, symmetric=symmetric,
    )
    B = q.shape[0]
    M = 0 if extra is None else extra.shape[0]
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    cand = k if extra is None or M == 0 else torch.cat([k, extra], dim=0)  # [N, D], N = B + M
    if isinstance(temperature, Tensor):
        temp = temperature.to(device=q.device, dtype=compute)
    else:
        temp = float(temperature)
    u = (q @ cand.T).to(compute) / temp  # [B, N] uncorrected logits
    s = u
    if logq is not None:
        lq = logq if logq_extra is None or M == 0 else torch.cat([logq, logq_extra])
        s = u - lq.detach().to(compute)[None, :]
        if not correct_positive:
            eye = torch.eye(B, B + M, dtype=torch.bool, device=q.device)
            s = torch.where(eye, u, s)
    drop = accidental_hit_mask(
        B, M, query_ids=query_ids, item_ids=item_ids,
        extra_ids=extra_ids if M > 0 else None, device=q.device,
        extra_query_ids=extra_query_ids if M > 0 else None,
    )
    if masked_pairs is not None:
        pairs = pair_mask(masked_pairs, B, B + M)
        drop = pairs if drop is None else drop | pairs
    if drop is not None:
        s = s.masked_fill(drop, float("-inf"))
    loss = torch.logsumexp(s, dim=1) - s[:, :B].diagonal()  # [B]
    if symmetric:
        # item -> query direction: column j (item j) softmaxes over the B queries, with the same
        # accidental-hit mask and no logQ term (queries are not sampled; with correct_positive=True the
        # per-column correction would cancel anyway). Extra negatives have no positive query: they
        # take no part in this direction.
        uc = u[:, :B]
        if drop is not None:
            uc = uc.masked_fill(drop[:, :B], float("-inf"))
        loss = loss + (torch.logsumexp(uc, dim=0) - uc.diagonal())
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
