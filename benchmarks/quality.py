"""Retrieval quality on a public benchmark, under its paper protocol, next to the published numbers.

Trains a configuration (the library's defaults, or a TOML such as `examples/gowalla.toml`) once per
seed on the data set's train split, selects the epoch on its validation split, and reports test
Recall@20 / NDCG@20 with the mean and spread over seeds, the time per epoch and in total, next to
most-popular and the published results the data set's README gives.

    python -m benchmarks.quality --data gowalla                                 # the defaults, 3 seeds
    python -m benchmarks.quality --data gowalla --config examples/gowalla.toml --name tuned
    python -m benchmarks.quality --data gowalla --config examples/gowalla.toml --refit   # + a refit on train + valid
    python -m benchmarks.quality --data gowalla --seeds 0 --epochs 2            # a quick look

Each named configuration's runs go to benchmarks/results/quality-<data>.json (rows of other names, and
runs of other seeds of the same configuration, are kept), and the whole table to quality-<data>.md,
with the CPU that ran it. The data stays in
../shared/data; a data set that is not there is skipped with a message (exit 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.runner import RESULTS_DIR, markdown_table, write_results

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"

# Published test results on each split, as its README gives them (trained on train + valid, selected on test).
DATASETS: dict[str, dict[str, Any]] = {
    "gowalla": {
        "files": ("train.txt", "valid.txt", "test.txt"),
        "metric": "ndcg@20",
        "published": [("MF-BPR (LightGCN paper)", 0.1291, 0.1109), ("NGCF", 0.1570, 0.1327),
                      ("LightGCN", 0.1830, 0.1554), ("SimpleX", 0.1872, 0.1557)],
    },
}


def run_config(data: str, config_path: str | None, seed: int, epochs: int | None, threads: int,
               refit: bool = False) -> dict[str, Any]:
    """One training run (and its refit on train + valid with `refit`); returns its metrics and times."""
    from twotower.settings import TrainConfig
    from twotower.training import fit

    spec = DATASETS[data]
    config = TrainConfig.from_toml(config_path) if config_path else TrainConfig()
    config.train.refit = config.train.refit or refit
    train, valid, test = (str(DATA_ROOT / data / name) for name in spec["files"])
    config.data.path, config.data.valid, config.data.test = train, valid, test
    config.train.select_metric, config.train.ks = spec["metric"], [20]
    config.train.seed, config.batches = seed, dataclasses.replace(config.batches, seed=seed)
    config.train.num_threads, config.train.progress = threads, False
    if epochs is not None:
        config.train.epochs = epochs
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="twotower-quality-") as out:
        result = fit(config, out, echo=lambda line: print(f"  seed {seed}: {line}", flush=True))
    seconds = time.perf_counter() - started
    epoch_seconds = [record["epoch_seconds"] for record in result.history]
    run = {"seed": seed, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
           "valid": {k: result.valid.metrics[k] for k in ("recall@20", "ndcg@20")},
           "test": {k: result.test.metrics[k] for k in ("recall@20", "ndcg@20")},
           "popularity_test": {k: result.popularity_test.metrics[k] for k in ("recall@20", "ndcg@20")},
           "seconds_per_epoch": statistics.median(epoch_seconds), "total_seconds": seconds}
    if result.refit is not None:
        run["refit_test"] = {k: result.refit.test.metrics[k] for k in ("recall@20", "ndcg@20")}
        run["refit_seconds"] = sum(record["epoch_seconds"] for record in result.refit.history)
    return run


def merge_runs(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A configuration's entry after new runs: the earlier runs of other seeds stay when they trained
    the same configuration (a seed run again replaces its old run), so seeds can be run one at a
    time; a changed configuration (another file, or the same file with other settings) starts the
    entry afresh."""
    same = ("config", "settings", "epochs_override")
    new = json.loads(json.dumps(new))  # as stored: tuples become lists, or a stored entry never compares equal
    if old is None or any(old.get(key) != new.get(key) for key in same):
        return new
    seeds = {run["seed"] for run in new["runs"]}
    kept = [run for run in old["runs"] if run["seed"] not in seeds]
    return {**new, "runs": sorted(kept + new["runs"], key=lambda run: run["seed"])}


def _settings(config_path: str | None, refit: bool = False) -> dict[str, Any]:
    """Every setting the runs trained with (the TOML's, over the defaults), but the seeds and paths
    that `run_config` sets itself: what decides whether stored runs of other seeds still count."""
    from twotower.settings import TrainConfig

    config = TrainConfig.from_toml(config_path) if config_path else TrainConfig()
    config.train.refit = config.train.refit or refit
    settings = config.to_dict()
    settings.pop("data", None)
    settings["train"].pop("seed", None)
    settings["batches"].pop("seed", None)
    return settings


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def table(data: str, runs: dict[str, dict[str, Any]]) -> str:
    """The markdown table: published rows, then each configuration's test mean ± standard deviation."""
    rows = [[name, "published", f"{r:.4f}", f"{n:.4f}", "", ""] for name, r, n in DATASETS[data]["published"]]
    for name, entry in runs.items():
        runs_ = entry["runs"]
        test_r = [run["test"]["recall@20"] for run in runs_]
        test_n = [run["test"]["ndcg@20"] for run in runs_]
        valid_n = [run["valid"]["ndcg@20"] for run in runs_]
        times = f"{statistics.fmean(r['seconds_per_epoch'] for r in runs_):.0f} s/epoch, " \
                f"{statistics.fmean(r['total_seconds'] for r in runs_) / 60:.1f} min"
        seeds = ", ".join(str(r["seed"]) for r in runs_)
        label = f"twotower, {name}" + (f" (`{entry['config']}`)" if entry["config"] else "")
        rows.append([label, f"seeds {seeds}", _spread(test_r),
                     _spread(test_n), _spread(valid_n), times])
        refits = [run["refit_test"] for run in runs_ if "refit_test" in run]
        if refits:
            refit_seeds = ", ".join(str(r["seed"]) for r in runs_ if "refit_test" in r)
            epochs = ", ".join(str(r["best_epoch"]) for r in runs_ if "refit_test" in r)
            rows.append([f"{label}, refit on train + valid ({epochs} epochs)", f"seeds {refit_seeds}",
                         _spread([r["recall@20"] for r in refits]), _spread([r["ndcg@20"] for r in refits]), "",
                         "in the time above"])
        pop = runs_[0]["popularity_test"]
    if runs:
        rows.append(["most-popular", "", f"{pop['recall@20']:.4f}", f"{pop['ndcg@20']:.4f}", "", ""])
    header = ["model", "runs", "test Recall@20", "test NDCG@20", "valid NDCG@20", "time (train + eval)"]
    return markdown_table(header, rows)


def _write(data: str, stored: dict[str, Any]) -> None:
    text = table(data, stored) + (
        "\n\nTest figures are means ± standard deviations over the seeds (train.seed and batches.seed); "
        "every setting and the epoch were chosen on the validation split; the published rows trained on "
        "train + valid and selected on test (see ../shared/data/" + data + "/README.md). A refit row is the "
        "same run's second model (`train.refit`), trained on train + valid for the epochs chosen on validation, "
        "as the data set's README allows, reported next to the train-only figure. "
        "Times: median epoch (training and its validation), and the whole run (a refit included).")
    print(text)
    write_results(f"quality-{data}", text, {"runs": stored})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATASETS), default="gowalla")
    parser.add_argument("--config", help="TOML configuration (default: the library's defaults)")
    parser.add_argument("--name", default=None, help="row name (default: 'defaults' or the TOML's stem)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override train.epochs (for a quick look; not for the table)")
    parser.add_argument("--refit", action="store_true",
                        help="also refit each run on train + valid for its selected epochs (train.refit)")
    parser.add_argument("--threads", type=int, default=0, help="train.num_threads (0: the trainer's default)")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from the stored runs")
    args = parser.parse_args(argv)
    stored_path = RESULTS_DIR / f"quality-{args.data}.json"
    stored = json.loads(stored_path.read_text())["runs"] if stored_path.is_file() else {}
    if args.table:
        _write(args.data, stored)
        return 0
    folder = DATA_ROOT / args.data
    if not all((folder / name).is_file() for name in DATASETS[args.data]["files"]):
        print(f"{folder} is not here (it lives in ../shared/data next to the repository): skipped")
        return 0
    name = args.name or (Path(args.config).stem if args.config else "defaults") + ("-refit" if args.refit else "")
    runs = []
    for seed in args.seeds:
        print(f"{args.data}, {name}, seed {seed}", flush=True)
        runs.append(run_config(args.data, args.config, seed, args.epochs, args.threads, args.refit))
        print(f"  test recall@20 {runs[-1]['test']['recall@20']:.4f}, ndcg@20 {runs[-1]['test']['ndcg@20']:.4f}")
        if "refit_test" in runs[-1]:
            print(f"  refit: test recall@20 {runs[-1]['refit_test']['recall@20']:.4f}, "
                  f"ndcg@20 {runs[-1]['refit_test']['ndcg@20']:.4f}")
    settings = _settings(args.config, args.refit)
    # Seeds run as parallel processes finish together: read, merge and write under one lock, so
    # that no process writes over runs another stored meanwhile.
    with open(stored_path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = json.loads(stored_path.read_text())["runs"] if stored_path.is_file() else {}
        stored[name] = merge_runs(stored.get(name), {"config": args.config, "settings": settings,
                                                     "epochs_override": args.epochs, "runs": runs})
        _write(args.data, stored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
