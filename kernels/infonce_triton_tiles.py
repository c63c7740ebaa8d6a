"""Tile sizes of the fused InfoNCE kernels (`infonce_triton_jit`) and the kernel variants built from
them: block sizes, warps and pipeline stages chosen from D, the dtype and whether id masks are on
(triton.heuristics), or searched at run time by triton.autotune as a GPU-only opt-in
(TWOTOWER_INFONCE_AUTOTUNE=1). The sweep behind the half-precision tiles and its timings:
benchmarks/results/infonce-gpu-tuning.md."""

from __future__ import annotations

import functools
import os

import torch
import triton

from .infonce_triton_jit import _bwd_dc_kernel, _bwd_dq_kernel, _fwd_kernel


def interpreting() -> bool:
    """Whether Triton runs through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------------------------
# Block-size heuristics, from D, the dtype and whether id masks are on. Half-precision tiles for
# 64 < D <= 256 are the winners of a tile sweep on an H200 (B = N = 16384, each pass alone, through
# Triton's autotuner: `python -m benchmarks.gpu.profile_infonce --sweep 16384x128`; the gains are in
# benchmarks/results/infonce-gpu-tuning.md). Masked
# launches at D <= 128 keep 8-warp tiles: the sweep's 4-warp ones spill registers there. Every bf16
# variant compiles for sm_90 with wgmma and pipelined loads (`python -m benchmarks.gpu.compile_infonce`
# prints registers and spills without a GPU); TWOTOWER_INFONCE_AUTOTUNE=1 searches tiles at run time
# instead. float32 operands take the exact ("ieee") FMA path (torch's default float32 matmul
# precision), whose register-hungry layout needs small tiles and D chunks of 64. Under the
# interpreter tiles are 64 wide and D is cut into 64-wide chunks, so that the tests at small sizes
# walk several row blocks, column blocks and D chunks.
# ---------------------------------------------------------------------------------------------------


def _fp32(args: dict) -> bool:
    x = args["A_ptr"] if "A_ptr" in args else args["Q_ptr"]
    return x.dtype == torch.float32


def _block_d(args: dict) -> int:
    """Whole D on chip up to 256 (half precision); beyond, D is streamed in chunks of 128, which keep
    the chunked loops free of register spills."""
    D = args["D"]
    if args["INTERPRET"] or _fp32(args):
        return max(16, min(triton.next_power_of_2(D), 64))
    return max(16, triton.next_power_of_2(D)) if D <= 256 else 128


def _single_d(args: dict) -> bool:
    return args["D"] <= args["BLOCK_D"]


def _half(args: dict) -> bool:
    return not args["INTERPRET"] and not _fp32(args)


def _mid_half(args: dict) -> bool:
    """Half precision with 64 < D <= 128 and no id masks (tiles from an H200 sweep at B = N = 16384;
    with masks on, those 4-warp tiles spill registers, so masked launches keep the 8-warp ones)."""
    masked = args.get("HAS_IDS") or args.get("HAS_QIDS")
    return _half(args) and 64 < args["D"] <= 128 and not masked


def _wide_half(args: dict) -> bool:
    """Half precision with 128 < D <= 256: whole D on chip (tiles from the same sweep)."""
    return _half(args) and 128 < args["D"] <= 256


def _fwd_block_m(args: dict) -> int:
    """Forward: rows per program (the query tile held on chip)."""
    return 64 if not _half(args) or _mid_half(args) or _wide_half(args) else 128


def _fwd_block_n(args: dict) -> int:
    """Forward: candidate columns per step of the sweep."""
    if args["INTERPRET"]:
        return 64
    if _fp32(args):
        return 32
    return 128 if _mid_half(args) else 64


def _bwd_block_own(args: dict) -> int:
    """Backward: rows (dQ pass) or columns (dC pass) whose fp32 gradient a program keeps in
    registers beside the resident input tile."""
    if not _half(args) or _mid_half(args) or args["D"] > 256:
        return 64
    return 128


def _bwd_block_stream(args: dict) -> int:
    """Backward: rows / columns streamed past the resident block per step."""
    if args["INTERPRET"] or _wide_half(args):
        return 64
    return 128 if _mid_half(args) else 32


def _fwd_num_warps(args: dict) -> int:
    return 4 if _half(args) and (args["D"] <= 64 or _mid_half(args) or _wide_half(args)) else 8


def _bwd_num_warps(args: dict) -> int:
    return 4 if _half(args) and (args["D"] <= 64 or _mid_half(args)) else 8


def _fwd_num_stages(args: dict) -> int:
    if _fp32(args):
        return 2
    return 2 if args["D"] > 128 else 3


def _dq_num_stages(args: dict) -> int:
    return 2 if _fp32(args) or args["D"] > 256 else 3


def _dc_num_stages(args: dict) -> int:
    return 2 if _fp32(args) or args["D"] > 256 or _mid_half(args) else 3


# ---------------------------------------------------------------------------------------------------
# Kernel variants: heuristics by default, autotune as a GPU-only opt-in
# ---------------------------------------------------------------------------------------------------

_D_HEURISTICS = {"BLOCK_D": _block_d, "SINGLE_D": _single_d}

_fwd_heur = triton.heuristics(
    {"BLOCK_M": _fwd_block_m, "BLOCK_N": _fwd_block_n, **_D_HEURISTICS,
     "num_warps": _fwd_num_warps, "num_stages": _fwd_num_stages}
)(_fwd_kernel)
_dq_heur = triton.heuristics(
    {"BLOCK_M": _bwd_block_own, "BLOCK_N": _bwd_block_stream, **_D_HEURISTICS,
     "num_warps": _bwd_num_warps, "num_stages": _dq_num_stages}
)(_bwd_dq_kernel)
_dc_heur = triton.heuristics(
    {"BLOCK_M": _bwd_block_stream, "BLOCK_N": _bwd_block_own, **_D_HEURISTICS,
     "num_warps": _bwd_num_warps, "num_stages": _dc_num_stages}
)(_bwd_dc_kernel)


def _tune_configs() -> list:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm in (64, 128)
        for bn in (32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
        if not (bm == 64 and w == 8)
    ]


@functools.cache
def _tuned_kernels() -> tuple:
    """Autotuned variants (TWOTOWER_INFONCE_AUTOTUNE=1, GPU only: multi-config autotune does not run
    under the interpreter). Tile shapes are searched; BLOCK_D stays the heuristic's."""
    key = ["D", "B", "M"]
    fwd = triton.autotune(_tune_configs(), key=key)(triton.heuristics(_D_HEURISTICS)(_fwd_kernel))
    dq = triton.autotune(_tune_configs(), key=key)(triton.heuristics(_D_HEURISTICS)(_bwd_dq_kernel))
    dc = triton.autotune(_tune_configs(), key=["D", "B", "NC"])(triton.heuristics(_D_HEURISTICS)(_bwd_dc_kernel))
    return fwd, dq, dc


def _kernels() -> tuple:
    if os.environ.get("TWOTOWER_INFONCE_AUTOTUNE", "0") == "1" and not interpreting():
        return _tuned_kernels()
    return _fwd_heur, _dq_heur, _dc_heur
