"""Where a training step's time goes on one CUDA GPU: a prepared check for a device session.

The first CUDA run of the trainer (benchmarks/results/train-cuda-nvidia-h200.md) reached ~130k
samples/s on an H200 with and without bf16 autocast: ~7.8 ms per batch of 1024, which points at
work on the host rather than on the GPU. This script splits one step into its phases and names the
operators that cost the most host time, so that a session with a GPU can fix the right thing:

1. the batch iterator alone (batches per second from the CPU sampler, no model);
2. steps as the trainer runs them (one host sync per step, for the loss value): ms per step;
3. the same steps with a device sync after each phase (forward + loss, backward, clipping,
   optimizer step), so each phase's share is attributable;
4. torch.profiler over a few steps: the top operators by self host time and by device time.

It uses `TrainConfig()`'s defaults (as `twotower train`), on the generated 1M-interaction dataset
(or a tiny one), on prefetched batches for phases 2-4.

    python -m benchmarks.gpu.profile_train                   # ~1 minute on an H200
    python -m benchmarks.gpu.profile_train --device cpu --tiny   # dry run without a GPU
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the twotower CLI sets it, before torch

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import nullcontext  # noqa: E402

import torch  # noqa: E402

from twotower.data import build_dataset, generate  # noqa: E402
from twotower.losses import make_loss  # noqa: E402
from twotower.settings import TrainConfig  # noqa: E402
from twotower.training.batches import BatchIterator  # noqa: E402
from twotower.training.loop import build_model  # noqa: E402
from twotower.training.optim import clip_grad_norm, make_optimizer  # noqa: E402
from twotower.training.step import batch_loss  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast (CUDA)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per phase table")
    parser.add_argument("--tiny", action="store_true", help="a small dataset: a dry run of the code paths")
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda" and not args.no_amp

    users, items, per_user = (300, 200, 20.0) if args.tiny else (20_000, 20_000, 50.0)
    dataset = build_dataset(generate(users, items, interactions_per_user=per_user, seed=0))
    config = TrainConfig()
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"amp {amp}, torch {torch.__version__}, {len(dataset.train.users):,} training rows, batch "
          f"{config.batches.batch_size}, loss {config.loss.kind}, optimizer {config.optim.optimizer}, "
          f"sparse embeddings {config.optim.sparse_embeddings}, clip {config.optim.clip_norm}", flush=True)

    torch.manual_seed(0)
    model = build_model(config, dataset).to(device)
    loss_fn = make_loss(config.loss).to(device)
    optimizer = make_optimizer([model, loss_fn], config.optim)
    iterator = BatchIterator(dataset.train.users, dataset.train.items, num_items=dataset.num_items,
                             config=config.batches,
                             history=(dataset.train_history.indptr, dataset.train_history.indices))

    # 1. The sampler alone.
    started = time.perf_counter()
    with iterator.epoch(0) as epoch:
        batches = list(epoch)
    seconds = time.perf_counter() - started
    print(f"\n1. batch iterator alone: {len(batches)} batches in {seconds:.2f} s = "
          f"{seconds / len(batches) * 1e3:.2f} ms per batch", flush=True)
    need = 10 + 3 * args.steps + 5
    batches = (batches * (need // len(batches) + 1))[:need]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    clip = config.optim.clip_norm
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step(batch, mark: Callable[[str], None] | None = None) -> None:
        with autocast:
            loss = batch_loss(model, loss_fn, batch, device)
        if mark:
            mark("forward + loss")
        float(loss.detach())  # the trainer's one host sync per step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if mark:
            mark("backward")
        if clip > 0:
            clip_grad_norm(params, clip)
            if mark:
                mark("clip")
        optimizer.step()
        if mark:
            mark("optimizer step")

    for batch in batches[:10]:  # warm-up: kernels compiled, caches filled
        step(batch)
    sync(device)

    # 2. As the trainer runs them.
    timed = batches[10:10 + args.steps]
    started = time.perf_counter()
    for batch in timed:
        step(batch)
    sync(device)
    per_step = (time.perf_counter() - started) / len(timed)
    print(f"\n2. steps as the trainer runs them: {per_step * 1e3:.2f} ms per step = "
          f"{config.batches.batch_size / per_step:,.0f} samples/s", flush=True)

    # 3. Each phase, with a device sync after it.
    phases: dict[str, list[float]] = {}
    for batch in batches[10 + args.steps:10 + 2 * args.steps]:
        sync(device)
        last = [time.perf_counter()]

        def mark(name: str, last: list[float] = last) -> None:
            sync(device)
            now = time.perf_counter()
            phases.setdefault(name, []).append(now - last[0])
            last[0] = now

        step(batch, mark)
    total = sum(median_ms(v) for v in phases.values())
    print(f"\n3. phases (device synced after each; medians of {args.steps} steps, sum {total:.2f} ms):")
    for name, samples in phases.items():
        print(f"   {name:16s} {median_ms(samples):7.2f} ms")

    # 4. The operators that cost the most.
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for batch in batches[10 + 2 * args.steps:10 + 2 * args.steps + 5]:
            step(batch)
        sync(device)
    averages = prof.key_averages()
    print("\n4a. top operators by self host time (5 steps):")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25))
    if device.type == "cuda":
        print("\n4b. top operators by device time (5 steps):")
        print(averages.table(sort_by="self_cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
