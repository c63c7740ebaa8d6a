"""Distributed training (issue 18): what a step spends in collectives and how many bytes it moves.

For each global batch B (1024, 8192) and width D (64, 256), `world` ranks (Gloo on the CPU, NCCL on
CUDA; 2 by default, processes of this machine on 127.0.0.1) train the default model (cosine matrix
factorisation, the mixed loss: in-batch + 1024 shared negatives in all, logQ, the row-sparse
optimizer) on random pairs over a 20,000-item catalogue:

- step: the median wall time of a whole distributed step (forward, candidate all-gather, loss,
  backward with the gather's reduce-scatter, gradient averaging, optimizer) on rank 0;
- collectives: the step's collectives recorded once (op, shape, dtype, in order) and replayed alone
  with the same sizes, median time; share = collectives / step;
- bytes: what one rank sends per step under ring algorithms (as much arrives over the link's
  other direction);
- one process: the same global batch trained by one process (the baseline the ranks replace).

A projection to N GPUs follows from the bytes and the FLOPs of a step (see `projection`). On a
2-core machine two ranks share the cores the one process had, so they cannot be faster.

    python -m benchmarks.bench_distributed              # -> benchmarks/results/distributed.md
    python -m benchmarks.bench_distributed --quick      # tiny sizes: checks the script end to end
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runner import markdown_table, write_results

ITEMS, USERS, SHARED = 20_000, 20_000, 1024
SIZES = [(1024, 64), (1024, 256), (8192, 64), (8192, 256)]
QUICK = [(64, 16)]
# Projection constants, measured elsewhere or assumed (none measured by this script):
GPU_FLOPS = 414e12  # bf16 FLOP/s of the fused InfoNCE on an H200 at B = N = 65,536 (README, GPU checks)
GPU_SAMPLES_PER_S = 130e3  # a whole CUDA training step on an H200, host-bound (README, GPU checks)
LINKS = {"NVLink, 150 GB/s per GPU and direction": 150e9, "InfiniBand NDR, 50 GB/s per GPU and direction": 50e9}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder:
    """Wraps torch.distributed's collectives to list the ones a step calls (op, shape, dtype)."""

    def __init__(self) -> None:
        import torch.distributed as dist
        import torch.distributed._functional_collectives as functional

        self.calls: list[tuple[str, tuple[int, ...], str]] = []
        self.recording = False
        self._patch(dist, "all_gather", lambda args: ("all_gather", args[1]))
        self._patch(dist, "all_reduce", lambda args: ("all_reduce", args[0]))
        self._patch(functional, "all_gather_single_autograd", lambda args: ("all_gather_autograd", args[0]))

    def _patch(self, module: Any, name: str, describe: Callable) -> None:
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.recording:
                op, tensor = describe(args)
                self.calls.append((op, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")))
            return original(*args, **kwargs)

        setattr(module, name, wrapped)


def _bytes_sent(calls: list[tuple[str, tuple[int, ...], str]], world: int) -> int:
    """Bytes one rank sends for `calls` under ring algorithms (as many arrive): an all-gather sends
    (W - 1) times its input, an all-reduce 2 (W - 1) / W of it; the autograd gather counts twice
    (its backward is a reduce-scatter of the same size)."""
    import torch

    total = 0.0
    for op, shape, dtype in calls:
        size = int(np.prod(shape)) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
        if op == "all_reduce":
            total += 2 * (world - 1) / world * size
        else:
            total += (world - 1) * size * (2 if op == "all_gather_autograd" else 1)
    return int(total)


def _replay(calls: list[tuple[str, tuple[int, ...], str]], world: int, device: Any, repeats: int) -> float:
    """Median seconds of the recorded collectives replayed alone, in order, with the same sizes."""
    import torch
    import torch.distributed as dist
    import torch.distributed._functional_collectives as functional

    buffers = [torch.ones(shape, dtype=getattr(torch, dtype), device=device) for _, shape, dtype in calls]

    def once() -> None:
        for (op, _, _), x in zip(calls, buffers, strict=True):
            if op == "all_reduce":
                dist.all_reduce(x)
            elif op == "all_gather":
                dist.all_gather([torch.empty_like(x) for _ in range(world)], x)
            else:
                leaf = x.detach().requires_grad_()
                functional.all_gather_single_autograd(leaf, 0, dist.group.WORLD).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _median(once, repeats)


def _median(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _trainer(global_batch: int, dim: int, rank: int, world: int, device: Any) -> tuple[Any, Any]:
    """A distributed step (or, at world 1, the autograd step) and the batch iterator of rank `rank`."""
    import dataclasses

    import torch

    from twotower.losses import LossConfig, make_loss
    from twotower.model.two_tower import TwoTowerModel
    from twotower.settings import ModelConfig, OptimConfig
    from twotower.settings.batches import BatchConfig
    from twotower.training.batches import BatchIterator
    from twotower.training.distributed import Cluster, DistributedStep
    from twotower.training.optim import make_optimizer
    from twotower.training.step import AutogradStep

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, USERS, 400_000), (rng.zipf(1.2, 400_000) - 1) % ITEMS
    config = BatchConfig(batch_size=global_batch // world, num_shared_negatives=SHARED // world,
                         shared_negative_kind="uniform", log_q="static", prefetch=4)
    batches = BatchIterator(users, items, num_items=ITEMS, config=config, shard=(rank, world))
    torch.manual_seed(0)
    model = TwoTowerModel(ModelConfig(embedding_dim=dim, scoring="cosine"), num_users=USERS, num_items=ITEMS,
                          temperature=0.2).to(device)
    loss_fn = make_loss(dataclasses.replace(LossConfig(kind="mixed"), temperature=0.2)).to(device)
    optimizer = make_optimizer([model, loss_fn], OptimConfig())
    if world == 1:
        return AutogradStep(model, loss_fn, optimizer, device, 0.0), batches
    return DistributedStep(model, loss_fn, optimizer, device, 0.0, Cluster(rank, world, rank, world),
                           batches.global_rows), batches


def _time_steps(step: Any, batches: Any, repeats: int, recorder: _Recorder | None) -> float:
    """Median seconds of a step; the first (untimed) step is the one the recorder lists."""
    import torch

    epoch = batches.epoch(0)
    seconds = []
    for i in range(repeats + 1):
        batch = next(epoch)
        if recorder is not None:
            recorder.recording = i == 0
        start = time.perf_counter()
        loss = step.loss(batch)
        if hasattr(step, "value"):
            step.value(loss)
        step.update(loss)
        if loss.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            seconds.append(time.perf_counter() - start)
    if recorder is not None:
        recorder.recording = False
    epoch.close()
    return statistics.median(seconds)


def worker(rank: int, world: int, sizes: list[tuple[int, int]], repeats: int, device_name: str, out: Path) -> None:
    """One rank (or, at world 1, the one-process baseline): every size, rank 0's figures to `out`."""
    import datetime

    import torch
    import torch.distributed as dist

    from twotower.training.hardware import step_threads

    torch.set_num_threads(step_threads(0, torch.device(device_name), world))  # as `twotower train` would
    device = torch.device(device_name if device_name == "cpu" else f"cuda:{rank}")
    recorder = None
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=300))
        recorder = _Recorder()
    rows = []
    for global_batch, dim in sizes:
        step, batches = _trainer(global_batch, dim, rank, world, device)
        step_s = _time_steps(step, batches, repeats, recorder)
        row = {"batch": global_batch, "dim": dim, "step_s": step_s}
        if recorder is not None:
            calls, recorder.calls = recorder.calls, []
            row.update(collectives_s=_replay(calls, world, device, repeats), calls=len(calls),
                       bytes_sent=_bytes_sent(calls, world))
        rows.append(row)
    if rank == 0:
        out.write_text(json.dumps(rows))
    if world > 1:
        dist.barrier()  # no rank tears its Gloo pairs down while a peer still sends
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # The batch workers are daemon threads, and C++ threads torn down by the interpreter's exit have
    # aborted a rank ("terminate called without an active exception"): leave without that teardown.
    os._exit(0)


def _launch(world: int, sizes: list[tuple[int, int]], repeats: int, device: str, timeout: float) -> list[dict]:
    """Runs `world` ranks of this script's worker on 127.0.0.1; rank 0's figures."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world)}
        args = [sys.executable, "-m", "benchmarks.bench_distributed", "--worker", "--world", str(world),
                "--repeats", str(repeats), "--device", device, "--out", str(out),
                "--sizes", ",".join(f"{b}x{d}" for b, d in sizes)]
        procs = [subprocess.Popen([*args, "--rank", str(r)], env={**env, "RANK": str(r)}) for r in range(world)]
        try:
            for proc in procs:
                if proc.wait(timeout=timeout) != 0:
                    raise RuntimeError(f"bench_distributed: a rank exited with {proc.returncode}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return json.loads(out.read_text())


def projection(batch_per_rank: int, dim: int, gpus: int, bandwidth: float) -> tuple[float, float, float]:
    """(MB one GPU sends per step, communication ms, compute ms) of the mixed loss on `gpus` GPUs.

    Sent (ring algorithms; as much is received, over the other direction of the link): the
    candidates' all-gather and its backward reduce-scatter, (N - 1) (b + m) rows of D float32 each
    (m = 1024 / N shared negatives per rank); the row-sparse gradients' all-gather, (N - 1) times this
    rank's touched rows (at most 2 b + m) with their index; the dense gradients are a few numbers.
    Compute: a one-GPU step of b rows at `GPU_SAMPLES_PER_S`, plus the InfoNCE's growth from b + m
    to N (b + m) candidates (6 b D FLOPs per extra candidate, forward and backward) at `GPU_FLOPS`."""
    m = SHARED / gpus
    gather = 2 * (gpus - 1) * (batch_per_rank + m) * dim * 4
    rows = (gpus - 1) * (2 * batch_per_rank + m) * (dim * 4 + 8)
    extra_candidates = (gpus - 1) * (batch_per_rank + m)
    compute = batch_per_rank / GPU_SAMPLES_PER_S + 6 * batch_per_rank * extra_candidates * dim / GPU_FLOPS
    sent = gather + rows
    return sent / 1e6, sent / bandwidth * 1e3, compute * 1e3


def _report(two: list[dict], one: list[dict], world: int) -> str:
    rows = [[r["batch"], r["dim"], f"{r['step_s'] * 1e3:.1f}", f"{r['collectives_s'] * 1e3:.1f}",
             f"{r['collectives_s'] / r['step_s']:.0%}", f"{r['bytes_sent'] / 1e6:.2f}", r["calls"],
             f"{o['step_s'] * 1e3:.1f}"] for r, o in zip(two, one, strict=True)]
    measured = markdown_table(["global batch", "D", f"step, {world} ranks (ms)", "collectives (ms)", "share",
                               "MB sent per rank per step", "collectives per step", "step, 1 process (ms)"], rows)
    proj_rows = []
    for link, bandwidth in LINKS.items():
        for b, d in [(1024, 64), (1024, 256), (8192, 256)]:
            for n in (2, 8, 64):
                mb, comm, compute = projection(b, d, n, bandwidth)
                proj_rows.append([link, b, d, n, f"{mb:.1f}", f"{comm:.2f}", f"{compute:.2f}",
                                  f"{comm / (comm + compute):.0%}"])
    projected = markdown_table(["link", "batch per GPU", "D", "GPUs", "MB sent per GPU per step",
                                "communication (ms)", "compute (ms)", "share if not overlapped"], proj_rows)
    return (f"Measured: {world} Gloo ranks on this machine's CPU vs one process on the same global batch "
            f"(mixed loss, {SHARED} shared negatives in all, {ITEMS:,} items).\n\n{measured}\n\n"
            f"Projection to N GPUs (`projection`: a step of one H200 at {GPU_SAMPLES_PER_S / 1e3:.0f}k samples/s "
            f"plus the larger candidate set at the fused InfoNCE's {GPU_FLOPS / 1e12:.0f} TFLOP/s, both from the "
            f"README's GPU checks; the links' bandwidths are assumptions):\n\n{projected}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, results not written")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a launch may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        worker(args.rank, args.world, sizes, args.repeats, args.device, args.out)
        return
    sizes = QUICK if args.quick else SIZES
    two = _launch(args.world, sizes, args.repeats, args.device, args.timeout)
    one = _launch(1, sizes, args.repeats, args.device, args.timeout)
    report = _report(two, one, args.world)
    print(report)
    if not args.quick:
        print(write_results("distributed", report, {"ranks": two, "one_process": one}))


if __name__ == "__main__":
    main()
