"""Where the fused InfoNCE step spends its time on one CUDA GPU: each pass (forward, dQ row pass, dK
column pass) timed alone, the host (CPU) cost of one step against its GPU time, the ops a step
launches (torch.profiler), and optionally a tile sweep of every pass through Triton's autotuner.

From the repository root (installs nothing, like run_infonce):

    python -m benchmarks.gpu.profile_infonce                       # passes + host cost
    python -m benchmarks.gpu.profile_infonce --sweep 16384x256     # + tile sweep at B = N = 16384, D = 256

FLOPs per pass (B = N, no extra): forward 2·B·N·D, dQ pass 4·B·N·D, dK pass 4·B·N·D.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from benchmarks.gpu.run_infonce import Device, fwd_bwd, load_kernels, make_inputs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passes", default="8192x128,16384x128,65536x128,16384x256,65536x256",
                   help="B x D shapes (B = N, bf16) whose passes are timed alone")
    p.add_argument("--host", default="4096x128,8192x128", help="B x D shapes whose host cost is measured")
    p.add_argument("--sweep", default="", help="B x D shapes to tile-sweep (autotuner, GPU only)")
    return p.parse_args(argv)


def shapes(spec: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.split("x")) for item in spec.split(",") if item]


PASS_UNITS = {"fwd": 2, "dq": 4, "dk": 4}  # FLOPs of each pass in units of B·N·D


def issue_ms(dev: Device, step: Callable[[], object], reps: int) -> float:
    """Median CPU milliseconds to issue `step` (the GPU idle before each call, not waited for)."""
    samples = []
    for _ in range(reps):
        dev.sync()
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
    dev.sync()
    return statistics.median(samples)


def time_passes(torch, kt, dev: Device, B: int, D: int) -> None:
    """Milliseconds and TFLOP/s of forward_lse, backward_dq and backward_dc alone, with the split
    heuristic and, where it splits, without splitting."""
    leaves, _ = make_inputs(torch, B, 0, D, torch.bfloat16, "cuda", seed=3, options=False)
    q, k = leaves["q"].detach(), leaves["k"].detach()
    temp = torch.full((), 0.05, device="cuda")
    side = kt.Side()
    lse, _ = kt.forward_lse(q, k, temp, side)
    g = torch.full((B,), 1.0 / B, device="cuda")

    def passes(splits: int | None) -> dict[str, Callable[[], object]]:
        return {
            "fwd": lambda: kt.forward_lse(q, k, temp, side, splits=splits),
            "dq": lambda: kt.backward_dq(q, k, temp, side, lse, None, g, compute_dtau=False, splits=splits),
            "dk": lambda: kt.backward_dc(q, k, temp, side, lse, None, g, is_extra=False, splits=splits),
        }

    parts = []
    for name, fn in passes(None).items():
        ms = dev.time_ms(fn, warmup=2, min_reps=5, budget_s=0.5)
        rate = PASS_UNITS[name] * B * B * D / (ms * 1e-3) / 1e12
        parts.append(f"{name} {ms:.3f} ms {rate:.0f} TF/s (host {issue_ms(dev, fn, 10):.3f} ms)")
    splits = kt.choose_splits(B, B, q.device)
    print(f"passes B=N={B} D={D} (splits {splits}): " + " | ".join(parts), flush=True)
    if splits > 1:  # what the split-column path buys at this size
        ms = {name: dev.time_ms(fn, warmup=2, min_reps=5, budget_s=0.3) for name, fn in passes(1).items()}
        print(f"passes B=N={B} D={D} (splits 1): " + " | ".join(f"{n} {v:.3f} ms" for n, v in ms.items()), flush=True)


def host_cost(torch, mod, dev: Device, B: int, D: int) -> None:
    """CPU time to issue one fwd+bwd step (no sync) vs its GPU time, and the top ops by CPU time."""
    leaves, opts = make_inputs(torch, B, 0, D, torch.bfloat16, "cuda", seed=4, options=False)
    step = fwd_bwd(mod.infonce, leaves, opts, 0.05)
    gpu_ms = dev.time_ms(step, warmup=3, min_reps=10, budget_s=0.3)
    print(f"host B=N={B} D={D}: step (events) {gpu_ms:.3f} ms, CPU issue time {issue_ms(dev, step, 20):.3f} ms",
          flush=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        dev.sync()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)


def sweep(torch, kt, B: int, D: int) -> None:
    """Every pass through Triton's autotuner over a tile grid; prints each config's time."""
    import triton

    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm in (64, 128)
        for bn in (32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
        if not (bm == 128 and bn == 128)
    ]
    os.environ["TWOTOWER_INFONCE_AUTOTUNE"] = "1"
    import importlib

    tiles = importlib.import_module(f"{kt.__package__}.infonce_triton_tiles")  # where _tuned_kernels looks them up
    tiles._tune_configs = lambda: configs
    kt._tuned_kernels.cache_clear()
    leaves, _ = make_inputs(torch, B, 0, D, torch.bfloat16, "cuda", seed=5, options=False)
    q, k = leaves["q"].detach(), leaves["k"].detach()
    temp = torch.full((), 0.05, device="cuda")
    side = kt.Side()
    g = torch.full((B,), 1.0 / B, device="cuda")
    t0 = time.perf_counter()
    lse, _ = kt.forward_lse(q, k, temp, side, splits=1)
    kt.backward_dq(q, k, temp, side, lse, None, g, compute_dtau=False, splits=1)
    kt.backward_dc(q, k, temp, side, lse, None, g, is_extra=False, splits=1)
    torch.cuda.synchronize()
    print(f"sweep B=N={B} D={D}: {len(configs)} configs per pass, {time.perf_counter() - t0:.0f} s", flush=True)
    for (name, units), kernel in zip(PASS_UNITS.items(), kt._tuned_kernels(), strict=True):
        timings = getattr(kernel, "configs_timings", None) or {}
        ranked = sorted(((t[0] if isinstance(t, (list, tuple)) else t), str(c)) for c, t in timings.items())
        for ms, cfg in ranked[:6]:
            print(f"  {name} {ms:.3f} ms {units * B * B * D / (ms * 1e-3) / 1e12:.0f} TF/s  {cfg}", flush=True)
        print(f"  {name} best: {getattr(kernel, 'best_config', None)}", flush=True)
    os.environ["TWOTOWER_INFONCE_AUTOTUNE"] = "0"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    mod, kt = load_kernels()
    dev = Device("cuda")
    print(f"device {torch.cuda.get_device_name()}", flush=True)
    for B, D in shapes(args.passes):
        time_passes(torch, kt, dev, B, D)
    for B, D in shapes(args.host):
        host_cost(torch, mod, dev, B, D)
    for B, D in shapes(args.sweep):
        sweep(torch, kt, B, D)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
