"""Fused InfoNCE on one CUDA GPU: correctness against the float64 reference (bf16, fp16, fp32), then
forward + backward time and peak extra memory of the eager reference, torch.compile(reference) and
the fused Triton kernel, as one table written under benchmarks/results/.

Installs nothing and needs no build of twotower: it loads `kernels/` straight from this checkout when
`twotower` is not installed. From the repository root:

    python -m benchmarks.gpu.run_infonce                      # full run, sized for < 8 min on an H100
    python -m benchmarks.gpu.run_infonce --device cpu --tiny  # same code paths, tiny sizes, through
                                                              # the Triton CPU interpreter (no GPU)

Sizes (issue 4): B = N in {4096, 8192 (D = 128 only), 16384, 65536} x D in {64, 128, 256}, bf16,
in-batch negatives; plus B = 8192 with M = 65536 shared extra negatives, logQ correction and
accidental-hit masks. FLOP rates count 10·B·N·D per forward + backward (the fused kernel's work:
forward QKᵀ, row pass QKᵀ + dS·K, column pass KQᵀ + dSᵀ·Q), for every method alike.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from benchmarks.runner import markdown_table, write_results

REPO = Path(__file__).resolve().parents[2]

# Dense bf16 tensor-core rate from the vendor's data sheets (TFLOP/s, no sparsity).
SPEC_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "L40S": 362.0, "GH200": 989.4}

# Tolerances relative to the largest magnitude of the float64 reference (same table as the tests).
TOL = {"float32": (1e-5, 5e-4), "float16": (1e-4, 5e-3), "bfloat16": (1e-4, 2e-2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (for --device cpu dry runs)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new timing rows after this")
    p.add_argument("--no-write", action="store_true", help="print only; write no result files")
    p.add_argument("--shapes", default=None, help="time only these rows, e.g. '16384x0x256,8192x65536x128' (BxMxD)")
    p.add_argument("--skip-correctness", action="store_true", help="timings only (e.g. a second, autotuning pass)")
    return p.parse_args(argv)


def load_kernels() -> tuple[ModuleType, ModuleType]:
    """(twotower.kernels.infonce, its infonce_triton) from the installed package, or else straight
    from this checkout's kernels/ directory (loaded as the package `_twotower_kernels`)."""
    try:
        mod = importlib.import_module("twotower.kernels.infonce")
    except ImportError:
        root = REPO / "kernels"
        spec = importlib.util.spec_from_file_location(
            "_twotower_kernels", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["_twotower_kernels"] = pkg
        spec.loader.exec_module(pkg)
        mod = importlib.import_module("_twotower_kernels.infonce")
    return mod, importlib.import_module(f"{mod.__package__}.infonce_triton")


class Device:
    """Timing, synchronisation and memory statistics for CUDA, with CPU stand-ins for dry runs."""

    def __init__(self, kind: str) -> None:
        import torch

        self.torch = torch
        self.kind = kind
        self.cuda = kind == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def peak_extra_bytes(self, step: Callable[[], None]) -> int | None:
        """Peak bytes allocated by one call of `step` above what was allocated before it."""
        if not self.cuda:
            step()
            return None
        self.sync()
        self.torch.cuda.reset_peak_memory_stats()
        base = self.torch.cuda.memory_allocated()
        step()
        self.sync()
        return self.torch.cuda.max_memory_allocated() - base

    def time_ms(
        self, step: Callable[[], None], *, warmup: int = 2, min_reps: int = 3, max_reps: int = 25, budget_s: float = 1.0
    ) -> float:
        """Median milliseconds of `step` over repeats (CUDA events on GPU), after `warmup` calls."""
        for _ in range(warmup):
            step()
        self.sync()
        samples: list[float] = []
        while len(samples) < max_reps and (len(samples) < min_reps or sum(samples) < budget_s * 1e3):
            if self.cuda:
                start = self.torch.cuda.Event(enable_timing=True)
                end = self.torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                step()
                samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)

    def oom_types(self) -> tuple[type[BaseException], ...]:
        return (self.torch.cuda.OutOfMemoryError,) if self.cuda else (MemoryError,)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


def make_inputs(torch, B: int, M: int, D: int, dtype, device: str, *, seed: int, options: bool) -> tuple[dict, dict]:
    """(tensors q, k[, extra] as leaves requiring grad, keyword options). Unit-norm vectors with each
    positive pulled towards its query; options = logQ on every candidate + accidental-hit masks."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def unit(n: int):
        return torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)

    q = unit(B)
    k = torch.nn.functional.normalize(unit(B) + 0.5 * q, dim=-1)
    leaves = {"q": q, "k": k}
    if M:
        leaves["extra"] = unit(M)
    leaves = {n: v.to(device=device, dtype=dtype).requires_grad_(True) for n, v in leaves.items()}
    opts: dict = {}
    if options:
        opts["logq"] = (-12 * torch.rand(B, generator=g)).to(device)
        opts["item_ids"] = torch.randint(0, max(2, B // 2), (B,), generator=g).to(device)
        opts["query_ids"] = torch.randint(0, max(2, B), (B,), generator=g).to(device)
        if M:
            opts["logq_extra"] = (-12 * torch.rand(M, generator=g)).to(device)
            opts["extra_ids"] = torch.randint(0, max(2, B // 2), (M,), generator=g).to(device)
    return leaves, opts


def fwd_bwd(fn: Callable, leaves: dict, opts: dict, temperature) -> Callable[[], None]:
    """One training step of the loss: clear grads, forward, backward."""

    def step() -> None:
        for v in leaves.values():
            v.grad = None
        if hasattr(temperature, "grad"):
            temperature.grad = None
        loss = fn(leaves["q"], leaves["k"], temperature=temperature, extra=leaves.get("extra"), **opts)
        loss.backward()

    return step


# ---------------------------------------------------------------------------------------------------
# 1. Correctness on the device
# ---------------------------------------------------------------------------------------------------


def correctness(torch, mod: ModuleType, kt: ModuleType, dev: Device, tiny: bool) -> tuple[list[list], bool]:
    # (B, M, D, dtype, options, symmetric, correct_positive, reduction)
    if tiny:
        cases = [
            (40, 0, 32, "bfloat16", False, False, True, "mean"),
            (9, 150, 80, "float32", True, True, False, "none"),
            (33, 20, 16, "float16", True, False, True, "sum"),
        ]
    else:
        cases = [
            (4096, 0, 128, "bfloat16", False, False, True, "mean"),
            (1000, 3000, 128, "bfloat16", True, True, True, "mean"),
            (2048, 2048, 256, "bfloat16", True, True, True, "none"),
            (513, 20000, 64, "float32", True, False, True, "mean"),  # small B: split-column path
            (300, 700, 320, "float32", True, True, False, "sum"),  # D > 256: D chunks on the GPU
            (777, 0, 96, "float16", True, False, True, "mean"),
            (1, 5, 8, "float32", False, True, True, "mean"),
        ]
    rows, all_ok = [], True
    kt.POISON_OUTPUTS = True  # every kernel output starts as NaN: unwritten elements fail the check
    try:
        for i, case in enumerate(cases):
            try:
                row, ok = _check_case(torch, mod, dev, i, *case)
            except Exception as exc:  # a kernel that fails to compile or run is a result too
                traceback.print_exc()
                row, ok = [*case[:4], "", "", f"ERROR {type(exc).__name__}: {str(exc)[:120]}", "", "FAIL"], False
            rows.append(row)
            all_ok &= ok
            print("correctness", row, flush=True)
            dev.free()
    finally:
        kt.POISON_OUTPUTS = False
    return rows, all_ok


def _check_case(torch, mod, dev, i, B, M, D, dtype_name, options, symmetric, correct_pos, reduction):
    """Kernel loss and gradients (q, k, extra, temperature) against the float64 reference on the
    device, plus a bitwise repeat. Returns (table row, passed)."""
    dtype = getattr(torch, dtype_name)
    leaves, opts = make_inputs(torch, B, M, D, dtype, dev.kind, seed=100 + i, options=options)
    opts.update(symmetric=symmetric, correct_positive=correct_pos, reduction=reduction)
    upstream = torch.randn(B if reduction == "none" else (), generator=torch.Generator().manual_seed(i),
                           dtype=torch.float64).to(dev.kind)

    def run(fn, cast):
        xs = {n: v.detach().clone().to(cast or v.dtype).requires_grad_(True) for n, v in leaves.items()}
        tau = torch.tensor(0.07, dtype=cast or torch.float32, device=dev.kind, requires_grad=True)
        loss = fn(xs["q"], xs["k"], temperature=tau, extra=xs.get("extra"), **opts)
        (loss.double() * upstream).sum().backward()
        return loss.detach(), {**{n: v.grad for n, v in xs.items()}, "tau": tau.grad}

    loss, grads = run(mod.infonce, None)
    loss2, grads2 = run(mod.infonce, None)
    ref_loss, ref_grads = run(mod.infonce_eager, torch.float64)
    deterministic = torch.equal(loss, loss2) and all(torch.equal(grads[n], grads2[n]) for n in grads)

    def rel(a, b) -> float:
        if not torch.isfinite(a).all():
            return math.inf
        return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()

    tol_loss, tol_grad = TOL[dtype_name]
    errs = {"loss": rel(loss, ref_loss), **{f"d{n}": rel(grads[n], ref_grads[n]) for n in grads}}
    ok = deterministic and errs["loss"] <= tol_loss and all(v <= tol_grad for n, v in errs.items() if n != "loss")
    switches = (("logq+masks", options), ("symmetric", symmetric), ("rawpos", not correct_pos))
    flags = "+".join(f for f, on in switches if on) or "plain"
    row = [
        B, M, D, dtype_name, flags, reduction,
        " ".join(f"{n} {v:.1e}" for n, v in errs.items()),
        "yes" if deterministic else "NO", "ok" if ok else "FAIL",
    ]
    return row, ok


# ---------------------------------------------------------------------------------------------------
# 2. Timings
# ---------------------------------------------------------------------------------------------------


def dense_rate_tflops(torch, dev: Device, tiny: bool) -> float | None:
    """Measured bf16 GEMM rate (8192³ through cuBLAS): what 'the card's rate' means in practice."""
    if not dev.cuda:
        return None
    n = 8192 if not tiny else 1024
    ms = _gemm_ms(torch, dev, n)  # its two n x n operands are gone once it returns
    dev.free()
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _gemm_ms(torch, dev: Device, n: int) -> float:
    """Median ms of one bf16 n x n @ n x n product on the GPU."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return dev.time_ms(lambda: a @ b, warmup=3, min_reps=10, budget_s=0.5)


def timings(
    torch, mod: ModuleType, dev: Device, args: argparse.Namespace, start: float
) -> tuple[list[list], list[dict]]:
    if args.tiny:
        shapes = [(64, 0, 16, False), (128, 0, 32, False), (32, 96, 32, True)]
    else:
        # The rows the targets read come first, so that a tight --budget-s still measures them.
        shapes = [(8192, 0, 128, False), (65536, 0, 128, False), (65536, 0, 256, False), (16384, 0, 256, False)]
        shapes += [(8192, 65536, 128, True), (16384, 0, 128, False), (65536, 0, 64, False)]
        shapes += [(4096, 0, d, False) for d in (64, 128, 256)] + [(16384, 0, 64, False)]
    if args.shapes:
        parsed = [tuple(int(x) for x in item.split("x")) for item in args.shapes.split(",")]
        shapes = [(B, M, D, M > 0) for B, M, D in parsed]
    dtype = torch.bfloat16 if dev.cuda else torch.float32
    methods: list[tuple[str, Callable]] = [("fused kernel", mod.infonce), ("eager reference", mod.infonce_eager)]
    if not args.no_compile:
        compiled = torch.compile(mod.infonce_eager, dynamic=True)
        methods.append(("torch.compile(reference)", compiled))
    rows, records = [], []
    for B, M, D, options in shapes:
        N = B + M
        flops = 10.0 * B * N * D
        results: dict[str, dict] = {}
        for name, fn in methods:
            if time.perf_counter() - start > args.budget_s:
                results[name] = {"status": "skipped (time budget)"}
                continue
            leaves, opts = make_inputs(torch, B, M, D, dtype, dev.kind, seed=7, options=options)
            step = fwd_bwd(fn, leaves, opts, 0.05)
            t0 = time.perf_counter()
            try:
                step()  # first call: Triton / Inductor compilation happens here
                dev.sync()
                first_s = time.perf_counter() - t0
                ms = dev.time_ms(step, warmup=1, budget_s=1.0 if not args.tiny else 0.2)
                for v in leaves.values():  # so the baseline below holds no gradients
                    v.grad = None
                peak = dev.peak_extra_bytes(step)
                results[name] = {"status": "ok", "ms": ms, "peak": peak, "first_call_s": first_s}
            except dev.oom_types():
                results[name] = {"status": "OOM"}
            except Exception as exc:  # record and go on: one failing method must not lose the table
                traceback.print_exc()
                results[name] = {"status": f"error: {type(exc).__name__}: {str(exc)[:80]}"}
            del leaves, opts, step
            dev.free()
        eager = results.get("eager reference", {}).get("ms")
        comp = results.get("torch.compile(reference)", {}).get("ms")
        for name, _ in methods:
            r = results[name]
            record = {"B": B, "M": M, "N": N, "D": D, "options": options, "method": name, **r}
            records.append(record)
            if r["status"] != "ok":
                rows.append([B, N, M, D, "logQ+masks" if options else "plain", name, r["status"], "", "", "", "", ""])
                continue
            ms, peak = r["ms"], r["peak"]
            rows.append([
                B, N, M, D, "logQ+masks" if options else "plain", name,
                f"{ms:.3f}",
                f"{flops / (ms * 1e-3) / 1e12:.1f}",
                "n/a" if peak is None else f"{peak / 2**20:.1f}",
                "n/a" if peak is None else f"{peak / N:.0f}",
                f"{eager / ms:.2f}x" if eager else "-",
                f"{comp / ms:.2f}x" if comp else "-",
            ])
            print("timing", rows[-1], f"(first call {r['first_call_s']:.1f} s)", flush=True)
        print_tuned_configs(mod)
    return rows, records


def print_tuned_configs(mod: ModuleType) -> None:
    """With TWOTOWER_INFONCE_AUTOTUNE=1: the tile configuration autotuning chose per kernel and key."""
    if os.environ.get("TWOTOWER_INFONCE_AUTOTUNE", "0") != "1":
        return
    kt = importlib.import_module(f"{mod.__package__}.infonce_triton")
    for name, kernel in zip(("fwd", "dq", "dc"), kt._tuned_kernels(), strict=True):
        for key, config in getattr(kernel, "cache", {}).items():
            print(f"tuned {name} key={key}: {config}", flush=True)


def targets(records: list[dict], rate: float | None, spec: float | None) -> list[str]:
    """The issue's targets, each with the measured number (or why it is missing)."""

    def find(B, M, D, method):
        for r in records:
            if (r["B"], r["M"], r["D"], r["method"]) == (B, M, D, method):
                return r
        return None

    lines = []
    for B in (65536, 16384):
        f, e = find(B, 0, 128, "fused kernel"), find(B, 0, 128, "eager reference")
        if f and e and f.get("ms") and e.get("ms"):
            lines.append(
                f"- B = N = {B}, D = 128: fused is {e['ms'] / f['ms']:.2f}x eager (target >= 3x at B = N >= 32768)"
            )
        elif f and e:
            lines.append(f"- B = N = {B}, D = 128: fused {f['status']}, eager {e['status']}")
    f, c = find(8192, 0, 128, "fused kernel"), find(8192, 0, 128, "torch.compile(reference)")
    if f and c and f.get("ms") and c.get("ms"):
        lines.append(f"- B = N = 8192, D = 128: fused is {c['ms'] / f['ms']:.2f}x torch.compile (target >= 1x)")
    for r in records:
        if r["method"] == "fused kernel" and r.get("peak") is not None:
            lines.append(f"- fused extra memory at B = {r['B']}, N = {r['N']}, D = {r['D']}: {r['peak']} bytes = "
                         f"{r['peak'] / (r['B'] + r['N']):.0f} bytes per (B + N)")
    for r in records:
        if r["method"] == "fused kernel" and r["D"] == 256 and r.get("ms"):
            tf = 10.0 * r["B"] * r["N"] * r["D"] / (r["ms"] * 1e-3) / 1e12
            parts = [f"{tf:.0f} TFLOP/s"]
            if spec:
                parts.append(f"{100 * tf / spec:.0f}% of the {spec:.0f} TFLOP/s data-sheet dense bf16 rate")
            if rate:
                parts.append(f"{100 * tf / rate:.0f}% of the measured cuBLAS 8192³ rate ({rate:.0f} TFLOP/s)")
            lines.append(f"- D = 256, B = N = {r['B']}: " + ", ".join(parts) + " (target >= 50% of the dense rate)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
        args.tiny = True
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --tiny for a dry run", file=sys.stderr)
        return 2
    import triton

    mod, kt = load_kernels()
    dev = Device(args.device)
    gpu = torch.cuda.get_device_name() if dev.cuda else "cpu (Triton interpreter)"
    sms = torch.cuda.get_device_properties(0).multi_processor_count if dev.cuda else None
    print(f"device {gpu}, SMs {sms}, torch {torch.__version__}, triton {triton.__version__}", flush=True)

    corr_rows, corr_ok = ([], True) if args.skip_correctness else correctness(torch, mod, kt, dev, args.tiny)
    print(f"correctness: {'all ok' if corr_ok else 'FAILURES'} ({time.perf_counter() - start:.0f} s)", flush=True)
    rate = dense_rate_tflops(torch, dev, args.tiny)
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in gpu), None) if dev.cuda else None
    rows, records = timings(torch, mod, dev, args, start)

    corr_table = markdown_table(
        [
            "B", "M", "D", "dtype", "options", "reduction", "max error / max |ref| (loss, grads)", "bitwise repeatable",
            "result"
        ],
        corr_rows,
    )
    time_table = markdown_table(
        [
            "B", "N", "M", "D", "options", "method", "fwd+bwd ms", "TFLOP/s (10BND)", "peak extra MiB",
            "peak extra bytes / N", "vs eager", "vs compile"
        ],
        rows,
    )
    target_lines = targets(records, rate, spec)
    header = (
        f"Device: {gpu} ({sms} SMs); torch {torch.__version__}, triton {triton.__version__}; "
        f"measured cuBLAS bf16 8192³ GEMM: {f'{rate:.0f} TFLOP/s' if rate else 'n/a'}; "
        f"total run {time.perf_counter() - start:.0f} s.\n\n"
        f"Forward + backward of the mean loss, {'bf16' if dev.cuda else 'fp32'} inputs, temperature 0.05; "
        "median over repeats "
        "timed with CUDA events after warm-up. 'peak extra' = peak allocated during one step minus "
        "allocated before it (includes the gradients of q, k, extra). N = B + M candidates.\n"
    )
    md = (
        header + "\n## Correctness (float64 reference on the device)\n\n" + corr_table
        + "\n\n## Forward + backward\n\n" + time_table + "\n\n## Targets (issue 4)\n\n" + "\n".join(target_lines) + "\n"
    )
    print("\n" + md, flush=True)
    if not args.no_write:
        slug = "".join(ch if ch.isalnum() else "-" for ch in gpu).strip("-").lower()
        path = write_results(f"infonce-gpu-{slug}", md, {"device": gpu, "correctness": corr_rows, "timings": records,
                                                         "cublas_bf16_tflops": rate})
        print(f"wrote {path}")
        try:
            from benchmarks.gpu.plot_infonce import plot_infonce
        except ImportError as exc:  # matplotlib missing: the table is the result, the plot a convenience
            print(f"no plot ({exc})")
        else:
            print(f"wrote {plot_infonce(path.with_suffix('.json'))}")
    return 0 if corr_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
