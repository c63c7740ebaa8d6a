"""Host launchers of the fused InfoNCE loss: buffers, grids and the split of the streamed axis over
programs, around the Triton kernels of `infonce_triton_jit` with the tiles of
`infonce_triton_tiles`. `twotower.kernels.infonce` is the autograd function that calls these; the
notation and the math are in `infonce_triton_jit`'s docstring."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from .infonce_triton_jit import LN2, LOG2E, _bwd_dc_kernel, _bwd_dq_kernel, _fwd_combine_kernel, _fwd_kernel
from .infonce_triton_tiles import _dc_heur, _dq_heur, _fwd_heur, _kernels, _tune_configs, _tuned_kernels, interpreting

# Granularity of the share of the streamed axis one split sweeps (candidate columns in the forward
# and dQ passes, anchor rows in the dC pass): every streamed block size divides it, so split
# boundaries fall between tiles.
SPLIT_GRANULE = 256

# Tests set this to True: every output and scratch buffer is then filled with NaN before the kernels
# run, so an element a kernel forgets to write shows up as a NaN in the result.
POISON_OUTPUTS = False



@dataclass(frozen=True)
class Side:
    """Optional per-candidate tensors shared by every launch (already on the device, contiguous)."""

    extra: Tensor | None = None  # [M, D]
    logq: Tensor | None = None  # [B] fp32
    logq_extra: Tensor | None = None  # [M] fp32
    query_ids: Tensor | None = None  # [B] int64
    item_ids: Tensor | None = None  # [B] int64
    extra_ids: Tensor | None = None  # [M] int64
    correct_positive: bool = True
    extra_query_ids: Tensor | None = None  # [M] int64; needs query_ids


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _on_device(x: Tensor):
    """Triton launches on the current CUDA device: make it the tensors' device for the launch."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4  # interpreter: pretend a tiny GPU so that small batches exercise the split path


def choose_splits(programs: int, streamed: int, device: torch.device) -> int:
    """How many programs share one block's sweep over `streamed` rows or columns, given about
    `programs` resident blocks (rows of the forward / dQ pass, candidate columns of the dC pass):
    enough to fill the SMs about once, but at least 1024 streamed items (4 granules) per split so
    each split amortises loading its resident tile. 1 when the blocks alone fill the GPU."""
    blocks = triton.cdiv(programs, 64 if interpreting() else 128)
    sms = _num_sms(device)
    if blocks >= sms:
        return 1
    granule = SPLIT_GRANULE if interpreting() else 4 * SPLIT_GRANULE
    return max(1, min(triton.cdiv(sms, blocks), triton.cdiv(streamed, granule)))


def _cols_per_split(N: int, splits: int) -> int:
    """Items per split: N / splits rounded up to whole granules (so every tile divides it)."""
    return triton.cdiv(triton.cdiv(N, splits), SPLIT_GRANULE) * SPLIT_GRANULE


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"  # only read for float32 operands; fp16/bf16 dots always use tensor cores


def _side_pointers(side: Side, placeholder: Tensor) -> tuple[Tensor, ...]:
    """(logq, logq_extra, item_ids, query_ids, extra_ids, extra_query_ids) for a row-pass launch,
    `placeholder` standing in for each absent one (never read: its HAS_* flag is off)."""
    return tuple(
        t if t is not None else placeholder
        for t in (side.logq, side.logq_extra, side.item_ids, side.query_ids, side.extra_ids, side.extra_query_ids)
    )


def _flags(side: Side) -> dict:
    return dict(
        HAS_LOGQ=side.logq is not None,
        CORRECT_POS=bool(side.correct_positive),
        HAS_IDS=side.item_ids is not None,
        HAS_QIDS=side.query_ids is not None,
    )


def forward_lse(
    a: Tensor,
    p: Tensor,
    temp: Tensor,
    side: Side,
    *,
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Row log-sum-exp and per-row loss of the anchors `a` [B, D] against `p` [B, D] ++ side.extra.

    Returns (lse2 [B] fp32, loss [B] fp32): lse2 is the row log-sum-exp in base 2 (lse * log2(e)),
    the form the backward launchers take; loss is in natural log. `temp` is a 0-d fp32 tensor on
    the device. `splits` overrides the split-column heuristic (tests use it to cover both paths).
    """
    B, D = a.shape
    M = 0 if side.extra is None else side.extra.shape[0]
    N = B + M
    dev = a.device
    splits = choose_splits(B, N, dev) if splits is None else int(splits)
    cols = _cols_per_split(N, splits)
    splits = triton.cdiv(N, cols)  # drop splits the rounding left empty
    lse = _empty((B,), torch.float32, dev)
    loss = _empty((B,), torch.float32, dev)
    part = _empty((3, splits, B), torch.float32, dev) if splits > 1 else lse
    extra = side.extra if side.extra is not None else a
    fwd, _, _ = _kernels()
    grid = lambda meta: (triton.cdiv(B, meta["BLOCK_M"]), splits)  # noqa: E731
    with _on_device(a):
        fwd[grid](
            a, p, extra,
            *_side_pointers(side, lse),
            temp, lse, loss, part,
            B, M, D,
            a.stride(0), p.stride(0), extra.stride(0),
            cols, splits,
            HAS_EXTRA=M > 0,
            HAS_EIDS=side.extra_ids is not None and M > 0,
            HAS_EQIDS=side.extra_query_ids is not None and M > 0,
            IS_SPLIT=splits > 1,
            INTERPRET=interpreting(),
            PRECISION=_precision(a.dtype),
            **_flags(side),
        )
        if splits > 1:
            _fwd_combine_kernel[(triton.cdiv(B, 128),)](part, lse, loss, B, SPLITS=splits, BLOCK=128)
    return lse, loss


def backward_dq(
    q: Tensor,
    k: Tensor,
    temp: Tensor,
    side: Side,
    lse: Tensor,
    lse_col: Tensor | None,
    g: Tensor,
    *,
    compute_dtau: bool,
    splits: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Row pass: dQ [B, D] in q's dtype and, when `compute_dtau`, rowdot [B] fp32 with
    dL/dtau = -sum(rowdot) / tau. `lse_col` enables the symmetric (item -> query) terms."""
    B, D = q.shape
    M = 0 if side.extra is None else side.extra.shape[0]
    N = B + M
    dev = q.device
    splits = choose_splits(B, N, dev) if splits is None else int(splits)
    cols = _cols_per_split(N, splits)
    splits = triton.cdiv(N, cols)
    if splits == 1:
        dq = _empty((B, D), q.dtype, dev)
        stride_dq_split = 0
    else:
        dq = _empty((splits, B, D), torch.float32, dev)
        stride_dq_split = B * D
    dt = _empty((splits, B), torch.float32, dev) if compute_dtau else lse
    extra = side.extra if side.extra is not None else q
    _, dq_kernel, _ = _kernels()
    grid = lambda meta: (  # noqa: E731
        triton.cdiv(B, meta["BLOCK_M"]), 1 if meta["SINGLE_D"] else triton.cdiv(D, meta["BLOCK_D"]), splits
    )
    with _on_device(q):
        dq_kernel[grid](
            q, k, extra,
            *_side_pointers(side, lse),
            temp, lse, lse_col if lse_col is not None else lse, g, dq, dt,
            B, M, D,
            q.stride(0), k.stride(0), extra.stride(0), D, stride_dq_split,
            cols,
            HAS_EXTRA=M > 0,
            HAS_EIDS=side.extra_ids is not None and M > 0,
            HAS_EQIDS=side.extra_query_ids is not None and M > 0,
            SYMMETRIC=lse_col is not None,
            COMPUTE_DTAU=compute_dtau,
            INTERPRET=interpreting(),
            PRECISION=_precision(q.dtype),
            **_flags(side),
        )
    if splits > 1:
        dq = dq.sum(dim=0).to(q.dtype)  # fixed-order reduction over splits: deterministic
    rowdot = dt.sum(dim=0) if compute_dtau else None
    return dq, rowdot


def backward_dc(
    q: Tensor,
    c: Tensor,
    temp: Tensor,
    side: Side,
    lse: Tensor,
    lse_col: Tensor | None,
    g: Tensor,
    *,
    is_extra: bool,
    splits: int | None = None,
) -> Tensor:
    """Column pass: d(candidates) [NC, D] for `c` = k (is_extra=False) or `c` = side.extra. When the
    candidate blocks alone do not fill the GPU, the anchor rows are split over `splits` programs per
    block whose fp32 partials are summed in a fixed order (deterministic)."""
    B, D = q.shape
    NC = c.shape[0]
    dev = c.device
    if NC == 0:
        return _empty((NC, D), c.dtype, dev)
    splits = choose_splits(NC, B, dev) if splits is None else int(splits)
    rows = _cols_per_split(B, splits)
    splits = triton.cdiv(B, rows)
    if splits == 1:
        dc = _empty((NC, D), c.dtype, dev)
    else:
        dc = _empty((splits, NC, D), torch.float32, dev)
    logq = side.logq_extra if is_extra else side.logq
    _, _, dc_kernel = _kernels()
    grid = lambda meta: (  # noqa: E731
        triton.cdiv(NC, meta["BLOCK_N"]), 1 if meta["SINGLE_D"] else triton.cdiv(D, meta["BLOCK_D"]), splits
    )
    with _on_device(q):
        dc_kernel[grid](
            q, c,
            logq if logq is not None else lse,
            side.item_ids if side.item_ids is not None else lse,
            side.query_ids if side.query_ids is not None else lse,
            side.extra_ids if (is_extra and side.extra_ids is not None) else lse,
            side.extra_query_ids if (is_extra and side.extra_query_ids is not None) else lse,
            temp, lse, lse_col if lse_col is not None else lse, g, dc,
            B, NC, D,
            q.stride(0), c.stride(0), D, NC * D if splits > 1 else 0,
            rows,
            IS_EXTRA=is_extra,
            HAS_LOGQ=logq is not None,
            CORRECT_POS=bool(side.correct_positive),
            HAS_IDS=side.item_ids is not None,
            HAS_QIDS=side.query_ids is not None,
            HAS_CIDS=is_extra and side.extra_ids is not None,
            HAS_CQIDS=is_extra and side.extra_query_ids is not None,
            SYMMETRIC=(lse_col is not None) and not is_extra,
            INTERPRET=interpreting(),
            PRECISION=_precision(q.dtype),
        )
    if splits > 1:
        dc = dc.sum(dim=0).to(c.dtype)  # fixed-order reduction over splits: deterministic
    return dc


__all__ = [
    "_bwd_dc_kernel",
    "_bwd_dq_kernel",
    "_dc_heur",
    "_dq_heur",
    "_fwd_combine_kernel",
    "_fwd_heur",
    "_fwd_kernel",
    "_kernels",
    "_tune_configs",
    "_tuned_kernels",
    "Side",
    "backward_dc",
    "backward_dq",
    "choose_splits",
    "forward_lse",
    "interpreting",
    "LOG2E",
    "LN2",
]
