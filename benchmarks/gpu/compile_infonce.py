"""Compile every InfoNCE kernel variant for an NVIDIA target WITHOUT a GPU, and report registers,
spills (ptxas), async copies (software-pipelined loads) and shared memory: catches GPU-only compile
errors (the CPU interpreter runs the kernels' Python, not Triton's compiler) and poor tile shapes
before a GPU is at hand. Arguments are specialised as Triton's launcher does for contiguous rows
with D % 16 == 0 (pointers, strides and D divisible by 16).

    python -m benchmarks.gpu.compile_infonce            # sm_90 (H100/H200), full compile + ptxas -v
    python -m benchmarks.gpu.compile_infonce --arch 80 --stage ttir

Needs Triton with its NVIDIA backend (the bundled ptxas); runs on CPU-only machines.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, even when the caller interprets

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def _kt():
    try:
        import twotower.kernels.infonce_triton as kt
    except ImportError:  # not installed: load from this checkout (see run_infonce.load_kernels)
        from benchmarks.gpu.run_infonce import load_kernels

        _, kt = load_kernels()
    return kt


def _heuristic_values(heur, args: dict) -> tuple[dict, dict]:
    """(constexprs, launch options) that `heur` (a triton.heuristics wrapper) picks for `args`,
    evaluated in order as Triton does, so later heuristics see earlier values."""
    args = dict(args)
    for name, fn in heur.values.items():
        args[name] = fn(args)
    picked = {name: args[name] for name in heur.values}
    options = {k: picked.pop(k) for k in ("num_warps", "num_stages") if k in picked}
    return picked, options


def variants(dtypes=("bf16", "fp32"), dims=(64, 128, 256, 320)) -> Iterator[tuple[str, object, dict, dict, dict, int]]:
    """(label, jit function, pointer types, constexprs, options, D) for each kernel the launchers can
    pick, with every option on (the largest code path) and with every option off; tile shapes come
    from the kernels' own triton.heuristics."""
    import torch

    kt = _kt()
    for dt in dtypes:
        tensor = SimpleNamespace(dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dt])
        precision = "ieee" if dt == "fp32" else "tf32"
        for D in dims:
            base = {"D": D, "INTERPRET": False, "A_ptr": tensor, "Q_ptr": tensor, "PRECISION": precision}
            for all_on in (True, False):
                flags = dict(HAS_LOGQ=all_on, CORRECT_POS=not all_on, HAS_IDS=all_on, HAS_QIDS=all_on,
                             INTERPRET=False, PRECISION=precision)
                tag = f"{dt} D={D} {'all-options' if all_on else 'plain'}"
                launch = {**base, **flags}  # the heuristics see the launch's flags, as at run time
                ce, opts = _heuristic_values(kt._fwd_heur, launch)
                ptrs = {"A_ptr": dt, "P_ptr": dt, "E_ptr": dt, "IDS_ptr": "i64", "QIDS_ptr": "i64", "EIDS_ptr": "i64",
                        "EQIDS_ptr": "i64"}
                yield (f"fwd {tag}", kt._fwd_kernel, ptrs,
                       dict(HAS_EXTRA=all_on, HAS_EIDS=all_on, HAS_EQIDS=all_on, IS_SPLIT=all_on, **flags, **ce),
                       opts, D)
                ce, opts = _heuristic_values(kt._dq_heur, launch)
                ptrs = {"Q_ptr": dt, "K_ptr": dt, "E_ptr": dt, "IDS_ptr": "i64", "QIDS_ptr": "i64", "EIDS_ptr": "i64",
                        "EQIDS_ptr": "i64", "DQ_ptr": "fp32" if all_on else dt}
                yield (f"dq  {tag}", kt._bwd_dq_kernel, ptrs,
                       dict(HAS_EXTRA=all_on, HAS_EIDS=all_on, HAS_EQIDS=all_on, SYMMETRIC=all_on, COMPUTE_DTAU=all_on,
                            **flags, **ce), opts, D)
                ce, opts = _heuristic_values(kt._dc_heur, launch)
                for is_extra in (False, True):
                    ptrs = {"Q_ptr": dt, "C_ptr": dt, "DC_ptr": "fp32" if all_on else dt, "IDS_ptr": "i64",
                            "QIDS_ptr": "i64", "CIDS_ptr": "i64", "CQIDS_ptr": "i64"}
                    yield (f"dc{'e' if is_extra else 'k'} {tag}", kt._bwd_dc_kernel, ptrs,
                           dict(IS_EXTRA=is_extra, HAS_CIDS=all_on and is_extra, HAS_CQIDS=all_on and is_extra,
                                SYMMETRIC=all_on and not is_extra, **flags, **ce), opts, D)
    yield "combine", kt._fwd_combine_kernel, {}, dict(SPLITS=3, BLOCK=128), dict(num_warps=4, num_stages=1), 16


def source(fn, pointer_types: dict, constexprs: dict, *, aligned: int | None = None) -> ASTSource:
    """ASTSource with every *_ptr fp32 unless named in pointer_types, other runtime args i32.

    `aligned`: the D of the launch when rows are 16-element aligned (D % 16 == 0, contiguous rows),
    as Triton's launcher specialises at run time: pointers, strides, D and split sizes are then
    marked divisible by 16, which is what lets loads vectorise and pipeline. None marks nothing.
    """
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        sig[name] = "*" + pointer_types.get(name, "fp32") if name.endswith("_ptr") else "i32"
        divisible = name.endswith("_ptr") or name.startswith("stride") or name.endswith("per_split") or name == "D"
        if aligned is not None and aligned % 16 == 0 and divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in constexprs]
    if missing:
        raise ValueError(f"{fn.__name__}: constexprs not set: {missing}")
    constants = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    return ASTSource(fn=fn, signature=sig, constexprs=constants, attrs=attrs)


def ptxas_stats(ptx: str, arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself uses for this arch

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        out = subprocess.run(
            [
                str(ptxas), "-v", f"--gpu-name=sm_{arch}a" if arch >= 90 else f"--gpu-name=sm_{arch}", str(path), "-o",
                os.devnull
            ],
            capture_output=True, text=True,
        )
    text = out.stderr + out.stdout
    regs = re.findall(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill stores", text)
    return f"regs {','.join(regs) or '?'} spill-stores {','.join(spill) or '0'} B"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--stage", choices=["ttir", "cubin"], default="cubin")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--dims", default="64,128,256,320")
    args = p.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    for label, fn, ptrs, ce, opts, D in variants(
        tuple(args.dtypes.split(",")), tuple(int(d) for d in args.dims.split(","))
    ):
        t0 = time.perf_counter()
        try:
            src = source(fn, ptrs, ce, aligned=D)
            if args.stage == "ttir":
                from triton._C.libtriton import ir

                backend = triton.compiler.make_backend(target)
                options = backend.parse_options(opts)
                context = ir.context()
                ir.load_dialects(context)
                backend.load_dialects(context)
                src.make_ir(
                    target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context
                )
                stats = "ttir ok"
            else:
                kernel = triton.compile(src, target=target, options=opts)
                ptx = kernel.asm["ptx"]
                async_copies = ptx.count("cp.async.cg") + ptx.count("cp.async.ca") + ptx.count("cp.async.bulk")
                stats = f"{ptxas_stats(ptx, args.arch)} async-copies {async_copies} smem {kernel.metadata.shared} B"
            print(f"{label:40s} {time.perf_counter() - t0:5.1f} s  {stats}  {opts}", flush=True)
        except Exception as exc:  # report every failing variant, not just the first
            failures += 1
            print(f"{label:40s} FAILED: {type(exc).__name__}: {str(exc).strip()[:2000]}", flush=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
