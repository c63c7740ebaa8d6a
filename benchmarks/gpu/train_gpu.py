"""Issue 19's benchmark: a CUDA training epoch with batches built on the GPU (`batches.on_device`)
against the CPU-fed CUDA path, in one run, on the issue's cases:

- "per-row": the generated 1M-row data set (20,000 users x 20,000 items x 50), id towers, per-row
  sampled softmax with 16 uniform negatives, batch 8192 (target >= 3,000,000 samples/s);
- "mixed": the same data, in-batch + 8192 shared uniform negatives with logQ, batch 8192, D = 128
  (target >= 2,000,000 samples/s);
- "gowalla": `examples/gowalla.toml` on `../shared/data/gowalla` when present (target: an epoch with
  its validation under 2 s, the CPU run's test quality within seed noise).

Each run is `twotower train` through `fit` with bf16 autocast; samples/s = training rows / the mean
epoch time after the first, "epoch + valid" adds the validation's time. Then a profile of 20 steps
of each case (after 10 warm-up steps) gives the GPU's share of the step's wall time: the summed time
of the CUDA kernels over the wall time (target >= 70% at batch 8192).

    python -m benchmarks.gpu.train_gpu --write            # on a GPU: benchmarks/results/train-gpu-<card>.md
    python -m benchmarks.gpu.train_gpu --device cpu --tiny  # dry run without a GPU (tiny sizes)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.runner import RESULTS_DIR, machine_info, markdown_table
from twotower.data import build_dataset, generate
from twotower.settings import TrainConfig
from twotower.training import loop

ROOT = Path(__file__).resolve().parents[2]
GOWALLA = ROOT / "examples" / "gowalla.toml"
TARGETS = {"per-row": 3_000_000, "mixed": 2_000_000}


def case_config(case: str, device: str, on_device: bool, tiny: bool, epochs: int) -> TrainConfig:
    """The settings of one case and mode (data paths aside)."""
    if case == "gowalla":
        config = TrainConfig.from_toml(GOWALLA)
    else:
        config = TrainConfig()
        config.model.embedding_dim = 16 if tiny else 128
        batch, extra = (256, 128) if tiny else (8192, 8192)
        if case == "per-row":
            config.loss = dataclasses.replace(config.loss, kind="sampled_softmax")
            config.batches = dataclasses.replace(config.batches, batch_size=batch, num_negatives=16,
                                                 negative_kind="uniform", num_shared_negatives=0, log_q="static")
        else:
            config.batches = dataclasses.replace(config.batches, batch_size=batch, num_shared_negatives=extra,
                                                 shared_negative_kind="uniform", log_q="static")
    config.batches = dataclasses.replace(config.batches, on_device=on_device)
    config.train = dataclasses.replace(config.train, device=device, amp=device == "cuda", epochs=epochs, patience=0,
                                       progress=False, keep_checkpoints=1)
    return config


def generated(tiny: bool) -> Any:
    users, items, per_user = (1000, 800, 20.0) if tiny else (20_000, 20_000, 50.0)
    return build_dataset(generate(users, items, interactions_per_user=per_user, seed=0),
                         config=TrainConfig().data.options)


def run_case(case: str, dataset: Any, device: str, on_device: bool, tiny: bool, epochs: int) -> dict[str, Any]:
    config = case_config(case, device, on_device, tiny, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        result = loop.fit(config, tmp, dataset=dataset)
    later = result.history[1:] or result.history
    epoch_s = statistics.mean(r["epoch_seconds"] for r in later)
    valid_s = statistics.mean(r.get("valid_seconds", 0.0) for r in later)
    metric = config.train.select_metric
    return {"case": case, "batches": "on device" if on_device else "CPU-fed", "epochs": len(result.history),
            "epoch_s": epoch_s, "epoch_with_valid_s": epoch_s + valid_s,
            "samples_per_s": len(dataset.train.users) / epoch_s, "metric": metric,
            "test": result.test.metrics[metric], "gpu_share": profile_share(config, dataset, device)}


def profile_share(config: TrainConfig, dataset: Any, device: str, warmup: int = 10, steps: int = 20) -> float | None:
    """The CUDA kernels' summed time over the wall time of `steps` training steps (None on the CPU)."""
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        run = loop._build_run(config, Path(tmp), torch.device(device), dataset, lambda line: None, None)
        batches = iter(run.batches.epoch(0))

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = run.train_step.loss(next(batches))
            run.train_step.update(loss)

        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
    kernels = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return kernels / 1e6 / wall


def report(records: list[dict[str, Any]], device: str) -> str:
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["case"], r["batches"], "FAILED: " + r["error"].splitlines()[-1]] + [""] * 6)
            continue
        share = "-" if r["gpu_share"] is None else f"{r['gpu_share']:.0%}"
        rows.append([r["case"], r["batches"], r["epochs"], f"{r['epoch_s']:.2f}", f"{r['epoch_with_valid_s']:.2f}",
                     f"{r['samples_per_s']:,.0f}", f"{r['test']:.4f} ({r['metric']})", share,
                     f"{TARGETS[r['case']]:,}" if r["case"] in TARGETS else "epoch + valid < 2 s"])
    table = markdown_table(["case", "batches", "epochs", "epoch s", "epoch + valid s", "samples/s", "test",
                            "GPU share of the step", "target"], rows)
    return f"Device: {device}; torch {torch.__version__}.\n\n{table}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU dry run)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cases", default="per-row,mixed,gowalla")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/train-gpu-<card>.md / .json")
    parser.add_argument("--out", type=Path, help="also write them here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu --tiny for a dry run")
        return 2
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)"
    records: list[dict[str, Any]] = []
    data = None
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if case == "gowalla" and not (ROOT.parent / "shared" / "data" / "gowalla").is_dir():
            print("gowalla: ../shared/data/gowalla not found, skipped")
            continue
        dataset = None
        if case != "gowalla":
            data = data if data is not None else generated(args.tiny)
            dataset = data
        else:
            from twotower.datasets import load_dataset

            dataset = load_dataset(case_config(case, "cpu", False, args.tiny, 1).data)
        for on_device in (False, True):
            try:
                record = run_case(case, dataset, args.device, on_device, args.tiny, args.epochs)
            except Exception as err:  # a failing mode is a result; the others still run
                traceback.print_exc()
                record = {"case": case, "batches": "on device" if on_device else "CPU-fed",
                          "error": f"{type(err).__name__}: {err}"}
            records.append(record)
            print(json.dumps(record), flush=True)
    text = report(records, device)
    print(text)
    slug = "".join(ch if ch.isalnum() else "-" for ch in device).strip("-").lower()
    targets = ([RESULTS_DIR / f"train-gpu-{slug}"] if args.write and args.device == "cuda" else []) + (
        [args.out / f"train-gpu-{slug}"] if args.out else [])
    for base in targets:
        base.parent.mkdir(parents=True, exist_ok=True)
        info = machine_info()
        base.with_suffix(".md").write_text(f"# train-gpu\n\nMachine: {info['cpu']}, {info['cores']} cores\n\n{text}")
        base.with_suffix(".json").write_text(json.dumps({"machine": info, "device": device, "runs": records},
                                                        indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
