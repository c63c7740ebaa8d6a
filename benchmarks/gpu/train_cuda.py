"""The trainer on one CUDA GPU: the same config trained with bf16 autocast (`train.amp`), with bf16 and
batches built on the GPU (`batches.on_device`, against the CPU-fed batches of the other modes), in
fp32 on the GPU and on the CPU (and the CPU with device-built batches), on the built-in synthetic
dataset and on a generated one of about one million interactions; epoch time, samples/s and
validation / test NDCG@10 and Recall@10 per run.

What it shows: whether AMP keeps the quality of the fp32 run within the spread between seeds, and
what a training epoch costs on the GPU against the CPU of the same machine.

Every run uses `TrainConfig()`'s defaults (cosine towers of width 128, "mixed" loss = in-batch +
1024 shared uniform negatives with logQ, temperature 0.2, batch 1024, row-sparse AdamW), a fixed
number of epochs (no early stopping; validation only after the last epoch, so the metrics are those
of the last epoch) and the same seeds in every mode. On CUDA the loss runs through the fused Triton
InfoNCE (the script counts its forward calls and records the input dtype it saw).

From the repository root, with twotower installed (or importable):

    python -m benchmarks.gpu.train_cuda --out /tmp/out --write   # about 3 minutes on an H200
    python -m benchmarks.gpu.train_cuda --device cpu --tiny      # dry run without a GPU

`--write` writes benchmarks/results/train-cuda-<card>.md (and .json; <card> from
torch.cuda.get_device_name, e.g. nvidia-h200); `--out DIR` writes the same two files into DIR after
every run (a run cut short keeps what finished).
No new run starts after `--budget-s` seconds, and the CPU run of the large dataset is skipped when
its estimate (from the CPU run of the small one) does not fit the budget left.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the twotower CLI sets it, before torch

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.runner import RESULTS_DIR, machine_info, markdown_table  # noqa: E402
from twotower.data import build_dataset, generate  # noqa: E402
from twotower.settings import TrainConfig  # noqa: E402
from twotower.training.loop import fit  # noqa: E402

MODES = {  # name -> (train.device, train.amp, batches.on_device)
    "cuda+amp on-device": ("cuda", True, True),
    "cuda+amp": ("cuda", True, False),
    "cuda fp32": ("cuda", False, False),
    "cpu": ("cpu", False, False),
    "cpu on-device": ("cpu", False, True),
}


@dataclasses.dataclass
class Case:
    name: str
    users: int
    items: int
    per_user: float
    epochs: int
    seeds: tuple[int, ...]


def cases(tiny: bool, small_epochs: int, big_epochs: int) -> list[Case]:
    if tiny:
        return [Case("synthetic (tiny)", 300, 200, 20.0, 2, (0, 1)), Case("generated (tiny)", 1000, 800, 20.0, 1, (0,))]
    return [
        Case("built-in synthetic", 2000, 1000, 25.0, small_epochs, (0, 1)),
        Case("generated 1M", 20_000, 20_000, 50.0, big_epochs, (0,)),
    ]


def config_for(mode: str, epochs: int, seed: int, tiny: bool) -> TrainConfig:
    device, amp, on_device = MODES[mode]
    config = TrainConfig()
    config.train = dataclasses.replace(config.train, epochs=epochs, patience=0, eval_every=epochs, progress=False,
                                       device=device, amp=amp, seed=seed, keep_checkpoints=1)
    config.batches = dataclasses.replace(config.batches, on_device=on_device)
    if tiny:
        config.model.embedding_dim = 16
        config.batches = dataclasses.replace(config.batches, batch_size=256, num_shared_negatives=128)
    return config


class KernelCounter:
    """Counts the fused InfoNCE's forward launches and the dtypes it saw (wraps kt.forward_lse)."""

    def __init__(self) -> None:
        self.calls, self.dtypes = 0, set()
        try:
            from twotower.kernels import infonce_triton as kt
        except Exception:  # no triton: the reference runs everywhere
            self.kt = None
            return
        self.kt, real = kt, kt.forward_lse

        def counted(q, *args, **kwargs):
            self.calls += 1
            self.dtypes.add(str(q.dtype).replace("torch.", ""))
            return real(q, *args, **kwargs)

        kt.forward_lse = counted

    def reset(self) -> None:
        self.calls, self.dtypes = 0, set()


def run_one(case: Case, dataset: Any, mode: str, seed: int, tiny: bool, counter: KernelCounter) -> dict[str, Any]:
    config = config_for(mode, case.epochs, seed, tiny)
    counter.reset()
    cuda = MODES[mode][0] == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit(config, tmp, dataset=dataset)
        wall = time.perf_counter() - start
    epochs = [r["epoch_seconds"] for r in result.history]
    later = epochs[1:] or epochs
    samples = len(dataset.train.users)
    return {
        "dataset": case.name, "mode": mode, "seed": seed, "epochs": len(epochs),
        "first_epoch_s": epochs[0], "epoch_s": statistics.mean(later),
        "samples_per_s": samples / statistics.mean(later),
        "train_loss": result.history[-1]["train_loss"], "fit_wall_s": wall,
        "valid_ndcg@10": result.valid.metrics["ndcg@10"], "valid_recall@10": result.valid.metrics["recall@10"],
        "test_ndcg@10": result.test.metrics["ndcg@10"], "test_recall@10": result.test.metrics["recall@10"],
        "pop_test_ndcg@10": result.popularity_test.metrics["ndcg@10"],
        "fused_kernel_calls": counter.calls, "kernel_dtypes": ",".join(sorted(counter.dtypes)) or "-",
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def table(records: list[dict[str, Any]]) -> str:
    header = ["dataset", "mode", "seed", "epochs", "first epoch s", "epoch s (later)", "samples/s", "final train loss",
              "valid NDCG@10", "valid Recall@10", "test NDCG@10", "test Recall@10", "fused InfoNCE fwd calls (dtype)",
              "peak GPU MiB", "fit wall s"]
    rows = []
    for r in records:
        if "error" in r:
            failed = [r["dataset"], r["mode"], r["seed"], "FAILED: " + r["error"].splitlines()[-1]]
            rows.append(failed + [""] * (len(header) - 4))
            continue
        rows.append([
            r["dataset"], r["mode"], r["seed"], r["epochs"], f"{r['first_epoch_s']:.2f}", f"{r['epoch_s']:.2f}",
            f"{r['samples_per_s']:,.0f}", f"{r['train_loss']:.4f}", f"{r['valid_ndcg@10']:.4f}",
            f"{r['valid_recall@10']:.4f}", f"{r['test_ndcg@10']:.4f}", f"{r['test_recall@10']:.4f}",
            f"{r['fused_kernel_calls']} ({r['kernel_dtypes']})",
            "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}", f"{r['fit_wall_s']:.1f}",
        ])
    return markdown_table(header, rows)


def summary(records: list[dict[str, Any]]) -> str:
    """Per dataset and mode: mean test NDCG@10 / Recall@10 over seeds, and the speed-up against the CPU."""
    lines = []
    ok = [r for r in records if "error" not in r]
    for name in dict.fromkeys(r["dataset"] for r in ok):
        by_mode = {m: [r for r in ok if r["dataset"] == name and r["mode"] == m] for m in MODES}
        cpu = by_mode["cpu"][0]["epoch_s"] if by_mode["cpu"] else None
        parts = []
        for mode, runs in by_mode.items():
            if not runs:
                continue
            ndcg = [r["test_ndcg@10"] for r in runs]
            recall = [r["test_recall@10"] for r in runs]
            spread = f" (seeds {min(ndcg):.4f}-{max(ndcg):.4f})" if len(ndcg) > 1 else ""
            speed = ""
            if cpu and mode != "cpu":
                speed = f", epoch {cpu / statistics.mean(r['epoch_s'] for r in runs):.1f}x the CPU's speed"
            parts.append(f"{mode}: test NDCG@10 {statistics.mean(ndcg):.4f}{spread}, "
                         f"Recall@10 {statistics.mean(recall):.4f}{speed}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def markdown(records: list[dict[str, Any]], header: dict[str, Any], notes: list[str]) -> str:
    text = [
        f"Device: {header['device']}; torch {torch.__version__}, triton {header.get('triton')}; "
        f"CPU runs: {header['cpu_threads']} torch threads for the training step on {os.cpu_count()} cores; "
        f"total run {header['total_s']:.0f} s.",
        "",
        "Same `TrainConfig()` defaults in every mode (cosine towers, width 128, \"mixed\" loss: in-batch + 1024 "
        "shared uniform negatives with logQ, temperature 0.2, batch 1024, row-sparse AdamW, lr 0.005 cosine schedule), "
        "a fixed number of epochs, metrics of the last epoch. 'epoch s (later)' is the mean of the epochs after the "
        "first (the first includes CUDA / Triton warm-up); samples/s = training interactions / that time. "
        "Evaluation (full catalogue, train items excluded) runs on the CPU scorer in every mode.",
        "",
        table(records),
        "",
        summary(records),
    ]
    if notes:
        text += ["", *[f"- {n}" for n in notes]]
    return "\n".join(text) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: run only the CPU mode (dry run without a GPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny datasets and model (a dry run)")
    parser.add_argument("--small-epochs", type=int, default=15)
    parser.add_argument("--big-epochs", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--budget-s", type=float, default=170.0, help="no run starts after this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="write train-cuda.md / .json here after every run")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/train-cuda-<card>.md and .json")
    args = parser.parse_args()

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {list(MODES)}")
    if args.device == "cpu":
        modes = [m for m in modes if MODES[m][0] == "cpu"]
    elif not torch.cuda.is_available():
        print("no CUDA device: use --device cpu for a dry run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)"
    slug = "".join(ch if ch.isalnum() else "-" for ch in device).strip("-").lower()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    print(f"device {device}, torch {torch.__version__}, triton {triton_version}, modes {modes}", flush=True)
    counter = KernelCounter()
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    cpu_threads = max(1, (os.cpu_count() or 1) - 1)

    def save() -> None:
        header = {
            "device": device, "triton": triton_version, "cpu_threads": cpu_threads,
            "total_s": time.perf_counter() - started
        }
        md = markdown(records, header, notes)
        payload = {"machine": machine_info(), **header, "runs": records, "notes": notes}
        targets = []
        name = f"train-cuda-{slug}" if args.device == "cuda" else "train-cuda-dry-run"
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            targets.append(args.out / name)
        if args.write and args.device == "cuda":
            targets.append(RESULTS_DIR / name)
        for base in targets:
            info = payload["machine"]
            title = f"# {base.name}\n\nMachine: {info['cpu']}, {info['cores']} cores; Python {info['python']}\n\n"
            for path, text in (
                (base.with_suffix(".md"), title + md), (base.with_suffix(".json"), json.dumps(payload, indent=2))
            ):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text)
                os.replace(tmp, path)

    datasets: dict[str, Any] = {}

    def dataset_for(case: Case) -> Any:
        if case.name not in datasets:
            t0 = time.perf_counter()
            table_ = generate(case.users, case.items, interactions_per_user=case.per_user, seed=0)
            ds = build_dataset(table_, config=TrainConfig().data.options)
            print(f"{case.name}: {table_.num_rows:,} interactions, {ds.num_users:,} users, {ds.num_items:,} items, "
                  f"train {len(ds.train.users):,} (generated + split in {time.perf_counter() - t0:.1f} s)", flush=True)
            notes.append(f"{case.name}: {table_.num_rows:,} interactions "
                         f"({ds.num_users:,} users x {ds.num_items:,} items), "
                         f"split {len(ds.train.users):,} / {len(ds.valid.users):,} / {len(ds.test.users):,} "
                         "train / valid / test")
            datasets[case.name] = ds
        return datasets[case.name]

    # Every case's first seed first (small, then large), the further seeds of the small case last:
    # they only measure the spread between seeds, and are the first thing a tight budget drops.
    all_cases = cases(args.tiny, args.small_epochs, args.big_epochs)
    plan = [(c, c.seeds[0]) for c in all_cases] + [(c, s) for c in all_cases for s in c.seeds[1:]]
    for case, seed in plan:
        for mode in modes:
            left = args.budget_s - (time.perf_counter() - started)
            if left <= 0:
                notes.append(f"{case.name} {mode} seed {seed}: not run (budget of {args.budget_s:.0f} s spent)")
                continue
            dataset = dataset_for(case)
            if mode == "cpu":
                earlier = [r for r in records if r["mode"] == "cpu" and "error" not in r and r["dataset"] != case.name]
                if earlier:
                    # per-interaction CPU cost measured on a smaller case, x2 for the larger item table + eval
                    estimate = 2.0 * len(dataset.train.users) * case.epochs / earlier[0]["samples_per_s"]
                    if estimate > left:
                        notes.append(
                            f"{case.name} cpu seed {seed}: skipped (estimated {estimate:.0f} s > {left:.0f} s left)"
                        )
                        print(notes[-1], flush=True)
                        continue
            try:
                record = run_one(case, dataset, mode, seed, args.tiny, counter)
            except Exception as err:  # a failing mode is a result; the others still run
                traceback.print_exc()
                record = {"dataset": case.name, "mode": mode, "seed": seed, "error": f"{type(err).__name__}: {err}"}
            records.append(record)
            print(json.dumps(record), flush=True)
            save()
    save()
    print(markdown(records, {"device": device, "triton": triton_version, "cpu_threads": cpu_threads,
                             "total_s": time.perf_counter() - started}, notes), flush=True)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
