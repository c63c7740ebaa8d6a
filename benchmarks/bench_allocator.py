"""The training step with and without `train.tune_allocator` (glibc's mmap and trim thresholds set so
that the step's large temporaries stay in the heap between steps).

The setting is process-wide, so each measurement runs in a child process of its own: untuned and
tuned children take turns (plain, tuned, plain, ...), each timing the median of its steps after a
warm-up; the table gives the median over the children of each kind and their ratio.

Model: the Gowalla example's (`examples/gowalla.toml`: 256-d cosine towers, the user's history gated
with the user id, in-batch + 1024 shared uniform negatives, batch 1024) on Gowalla's training split
when `../shared/data/gowalla` is there, else on generated data of its size (the table names which),
in float32 and with `train.cpu_amp` (bfloat16 GEMMs).

    python -m benchmarks.bench_allocator [--rounds 3]   # -> benchmarks/results/allocator.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.runner import markdown_table, write_results

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gowalla.toml"
USERS, ITEMS, PER_USER, D = 29_858, 40_981, 24, 256
WARMUP, STEPS = 10, 40


def child(tuned: bool, amp: bool) -> tuple[float, str]:
    """Median milliseconds of a training step in this process, after tuning the allocator or not,
    and the data it trained on (Gowalla's train.txt when present, else generated data of its size)."""
    import dataclasses
    import time

    from twotower.datasets import load_dataset
    from twotower.losses import make_loss
    from twotower.settings import DataSource, TrainConfig
    from twotower.training.batches import BatchIterator
    from twotower.training.hardware import tune_allocator
    from twotower.training.loop import build_model
    from twotower.training.optim import make_optimizer
    from twotower.training.step import make_train_step

    if tuned and not tune_allocator():
        raise SystemExit("this system has no glibc mallopt: nothing to compare")
    torch.set_num_threads(1)
    config = TrainConfig.from_toml(EXAMPLE)
    data = "Gowalla's train.txt (../shared/data/gowalla)"
    if not config.data.path or not Path(config.data.path).exists():
        config.data = DataSource(synthetic_users=USERS, synthetic_items=ITEMS,
                                 synthetic_interactions_per_user=PER_USER)
        data = f"generated data of Gowalla's size ({USERS:,} users, {ITEMS:,} items, ~{PER_USER} per user)"
    config.model = dataclasses.replace(config.model, embedding_dim=D)
    dataset = load_dataset(config.data)
    torch.manual_seed(0)
    model = build_model(config, dataset)
    loss_fn = make_loss(config.loss)
    optimizer = make_optimizer([model, loss_fn], config.optim)
    step = make_train_step(config, model, loss_fn, optimizer, torch.device("cpu"))
    iterator = BatchIterator(dataset.train.users, dataset.train.items, num_items=dataset.num_items,
                             config=config.batches, history=dataset.train_history)
    samples = []
    with iterator.epoch(0) as batches:
        for i, batch in zip(range(WARMUP + STEPS), batches, strict=False):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = step.loss(batch)
            step.update(loss)
            if i >= WARMUP:
                samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3, data


def run_child(tuned: bool, amp: bool) -> tuple[float, str]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_allocator", "--child",
                           "tuned" if tuned else "plain", *(["--amp"] if amp else [])],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["ms"], answer["data"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="children of each kind per precision")
    parser.add_argument("--child", choices=["plain", "tuned"], help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ms, data = child(args.child == "tuned", args.amp)
        print(json.dumps({"ms": ms, "data": data}))
        return
    rows = []
    for amp in (False, True):
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for tuned in (False, True):
                ms, data = run_child(tuned, amp)
                times[tuned].append(ms)
                print(f"{'bf16' if amp else 'fp32'} {'tuned' if tuned else 'plain'}: {times[tuned][-1]:.1f} ms",
                      flush=True)
        plain, tuned = statistics.median(times[False]), statistics.median(times[True])
        rows.append(["bfloat16 GEMMs (train.cpu_amp)" if amp else "float32", f"{plain:.1f}", f"{tuned:.1f}",
                     f"{plain / tuned:.2f}x", ", ".join(f"{t:.1f}" for t in times[False]),
                     ", ".join(f"{t:.1f}" for t in times[True])])
    header = ["step", "glibc defaults ms", "tuned ms", "speed-up", "defaults, each child", "tuned, each child"]
    note = (f"\n\nOne torch thread; median of {STEPS} steps after {WARMUP} in each child process, children taken "
            f"in turns, {args.rounds} of each kind; the example's model (256-d, history gate, in-batch + 1024 "
            f"shared negatives, batch 1024) on {data}.")
    print(markdown_table(header, rows) + note)
    write_results("allocator", markdown_table(header, rows) + note, {"header": header, "rows": rows})


if __name__ == "__main__":
    main()
