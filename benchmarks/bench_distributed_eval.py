"""Validation across ranks: sharded by users (`train.distributed_eval = "sharded"`) against rank 0
alone ("rank0"), timed inside real `torchrun` runs of `twotower train`.

Each launch trains 2 Gloo ranks on generated data for a few epochs and records each validation's
wall time (`valid_seconds` in metrics.jsonl); the modes take turns launch by launch, so a change in
the load of a shared machine falls on both alike. The table gives the median validation time of
each mode and their ratio, with the validation metric of both (equal up to float summation order).

    python -m benchmarks.bench_distributed_eval [--users 40000 --items 40000 --launches 2]
        # -> benchmarks/results/distributed-eval.md
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
from pathlib import Path

from benchmarks.runner import markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, mode: str, args: argparse.Namespace) -> list[dict]:
    """One 2-rank `twotower train` run; its metrics.jsonl records."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks),
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "--rdzv_id", "bench",
               "-m", "twotower", "train", "--out", str(out), "--quiet",
               "--data.synthetic_users", str(args.users), "--data.synthetic_items", str(args.items),
               "--data.synthetic_interactions_per_user", "12", "--model.embedding_dim", str(args.dim),
               "--train.epochs", str(args.epochs), "--train.patience", "0", "--train.ks", "20",
               "--train.select_metric", "ndcg@20", "--train.distributed_eval", mode,
               "--train.distributed_timeout", "600"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"torchrun failed ({mode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--launches", type=int, default=2, help="runs of each mode, taken in turns")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"sharded": [], "rank0": []}
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.launches):
            for mode in seconds:
                records = launch(Path(tmp) / f"{mode}-{i}", mode, args)
                seconds[mode] += [r["valid_seconds"] for r in records]
                scores[mode] = records[-1]["valid"]["ndcg@20"]
                print(f"{mode}: {[round(r['valid_seconds'], 2) for r in records]} s", flush=True)
    sharded, alone = statistics.median(seconds["sharded"]), statistics.median(seconds["rank0"])
    rows = [[mode, f"{statistics.median(seconds[mode]):.2f}", len(seconds[mode]), f"{scores[mode]:.6f}"]
            for mode in seconds]
    header = ["train.distributed_eval", "validation, median s", "validations", "valid NDCG@20, last epoch"]
    note = (f"\n\nSharded / rank 0 alone: {alone / sharded:.2f}x faster. {args.ranks} Gloo ranks on this machine "
            f"(one torch thread each, `OMP_NUM_THREADS=1`); generated data, {args.users:,} users x {args.items:,} "
            f"items, 12 interactions per user, {args.dim}-d, the defaults otherwise; {args.epochs} epochs per run, "
            f"{args.launches} runs per mode taken in turns. Sharded, every rank encodes the catalogue and ranks "
            "every world-th user, the metric sums all-reduced; rank 0 alone ranks every user while the others wait "
            "(its scorer on OMP_NUM_THREADS threads: 1 here, torchrun's default for several processes per machine).")
    print(markdown_table(header, rows) + note)
    write_results("distributed-eval", markdown_table(header, rows) + note,
                  {"header": header, "rows": rows, "seconds": seconds})


if __name__ == "__main__":
    main()
