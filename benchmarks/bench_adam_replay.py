"""The replay of skipped Adam steps (`optim.replay_skipped_steps`) at the sizes of the Gowalla example:
what it costs per training step, against the lazy step alone and against a dense AdamW step.

- `replay_rows` (Numba) vs `replay_rows_eager` (torch), the rows of one batch, each row's last touch
  drawn from the epoch's earlier steps (gaps from 1 to the epoch length);
- one table's optimizer step, lazy `sparse_adam` + replay vs `sparse_adam` alone vs
  `torch.optim.AdamW` over the whole table (what `--no-optim.sparse_embeddings` does).

    python -m benchmarks.bench_adam_replay          # table -> benchmarks/results/adam-replay.md
    python -m benchmarks.bench_adam_replay --quick  # small sizes, a smoke run
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.bench_training_kernels import dense_adamw_step
from benchmarks.runner import PAIR_HEADER, markdown_table, pair_row, write_results
from twotower.kernels.adam_replay import StepLog, replay_rows
from twotower.kernels.adam_replay_eager import replay_rows_eager
from twotower.kernels.sparse_adam import sparse_adam


class Table:
    """A table mid-epoch: `steps` steps logged, every row last touched at a random earlier step."""

    def __init__(self, rows: int, dim: int, steps: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(rows, dim, generator=g)
        self.exp_avg = torch.randn(rows, dim, generator=g) * 1e-3
        self.exp_avg_sq = torch.rand(rows, dim, generator=g) * 1e-6
        self.log = StepLog(0.9, 0.999)
        for step in range(1, steps + 1):
            self.log.record(step, 0.005)
        self.steps = steps
        self.last = torch.randint(0, steps, (rows,), generator=g)

    def replay(self, rows: torch.Tensor, impl) -> None:
        last = self.last.clone()  # every call replays the same gaps
        impl(self.weight, self.exp_avg, self.exp_avg_sq, rows, last, self.log, through=self.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows_n, dim, batch, steps = (4_000, 32, 256, 50) if args.quick else (40_981, 256, 1024, 700)
    repeats = 3 if args.quick else 21
    table = Table(rows_n, dim, steps, seed=0)
    touched = torch.randperm(rows_n, generator=torch.Generator().manual_seed(1))[:batch]
    grads = torch.randn(batch, dim) * 1e-3
    results = []

    def add(name: str, ours, reference, reference_name: str) -> None:
        results.append(pair_row(name, ours, reference, reference_name, repeats))

    add(f"replay_rows, {batch:,} rows", lambda: table.replay(touched, replay_rows),
        lambda: table.replay(touched, replay_rows_eager), "replay_rows_eager (torch)")
    slots = np.full(rows_n, -1, dtype=np.int64)

    def lazy() -> None:
        sparse_adam(table.weight, table.exp_avg, table.exp_avg_sq, touched, grads, step=steps, lr=0.005, slots=slots)

    def lazy_with_replay() -> None:
        table.replay(touched, replay_rows)
        lazy()

    dense_step = dense_adamw_step(table.weight, touched, grads, lr=0.005, weight_decay=0.0)
    add(f"sparse_adam + replay, {batch:,} of {rows_n:,} rows", lazy_with_replay, lazy, "sparse_adam alone")
    add(f"sparse_adam + replay, {batch:,} of {rows_n:,} rows", lazy_with_replay, dense_step,
        "torch.optim.AdamW, whole table")
    note = (f"\n\nOne thread, float32, D = {dim}, median of {repeats} calls of each taken in turns after 2 "
            f"warm-ups; rows last touched uniformly over the {steps} earlier steps of the epoch (a gap beyond "
            f"the replay's horizon of {table.log.horizon} steps costs what the horizon costs). A ratio below 1 "
            f"means the baseline is faster.")
    print(markdown_table(PAIR_HEADER, results) + note)
    if not args.quick:
        write_results("adam-replay", markdown_table(PAIR_HEADER, results) + note,
                      {"rows": results, "header": PAIR_HEADER})


if __name__ == "__main__":
    main()
