"""End to end on CPU: load, train a fixed number of epochs, full evaluation, for twotower and for a
plain PyTorch pipeline in the style of the one it replaces (`benchmarks/e2e_reference.py`), on the
same data with the same model, loss and settings.

Datasets: MovieLens-100K (`../shared/data/ml-100k/u.data`, skipped when absent) and a generated one
of about one million interactions (written to a temporary CSV, so both pipelines read a file).
Settings shared by both: 64-d id embeddings with cosine scores, sampled softmax over the positive and
16 uniform negatives excluding the user's train items, temperature 0.1, AdamW lr 0.005, batch 1024
(twotower's row-sparse AdamW, `optim.sparse_embeddings`, is its default and part of what is timed).
The reference runs with 1 and with all torch threads and the faster run is its row; twotower runs
with its defaults (training step on all cores but one, the scorer on all).
twotower is also timed with its recommended loss (in-batch + 1024 shared negatives, "mixed").

    python -m benchmarks.bench_e2e            # table -> benchmarks/results/e2e.md (about 10 minutes)
    pytest benchmarks/bench_e2e.py --benchmark-only
"""

from __future__ import annotations

import os

# Both pipelines run with passive OpenMP waiting (as the twotower CLI sets it): spinning threads make
# every small op of either training loop several times slower whenever the other core is busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import torch

from benchmarks import e2e_reference as ref
from benchmarks.plot_e2e import plot_e2e
from benchmarks.runner import markdown_table, write_results
from twotower.data import build_dataset, generate
from twotower.evaluate import evaluate_model
from twotower.settings import TrainConfig
from twotower.training.loop import fit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEGATIVES, DIM, BATCH, LR, TEMPERATURE = 16, 64, 1024, 0.005, 0.1


def twotower_config(epochs: int, recommended: bool) -> TrainConfig:
    config = TrainConfig()
    config.model.embedding_dim = DIM
    config.optim = dataclasses.replace(config.optim, lr=LR, warmup_fraction=0.0, schedule="constant", clip_norm=0.0)
    config.train = dataclasses.replace(config.train, epochs=epochs, patience=0, eval_every=epochs, progress=False)
    if not recommended:
        config.batches = dataclasses.replace(config.batches, batch_size=BATCH, num_negatives=NEGATIVES,
                                             negative_kind="uniform", num_shared_negatives=0, log_q="none")
        config.loss = dataclasses.replace(
            config.loss, kind="sampled_softmax", temperature=TEMPERATURE, remove_accidental_hits=False
        )
    return config


def run_twotower(path: str, fmt: str, epochs: int, recommended: bool, out: Path) -> dict[str, float]:
    start = time.perf_counter()
    dataset = build_dataset(path, format=fmt)
    load = time.perf_counter() - start
    config = twotower_config(epochs, recommended)
    result = fit(config, out, dataset=dataset)
    train_seconds = sum(r["epoch_seconds"] for r in result.history)
    samples = sum(len(dataset.train.users) for _ in result.history)
    start = time.perf_counter()
    test = evaluate_model(result_model(out), dataset, split="test", ks=(10,), progress=False)
    eval_seconds = time.perf_counter() - start
    return {"load": load, "train": train_seconds, "samples_per_s": samples / train_seconds, "eval": eval_seconds,
            "users_per_s": test.num_users / eval_seconds, "total": load + train_seconds + eval_seconds,
            "ndcg@10": test.metrics["ndcg@10"], "recall@10": test.metrics["recall@10"]}


def result_model(out: Path):
    from twotower.model.model_dir import load_model_dir

    return load_model_dir(out / "model").model


def run_reference(path: str, delimiter: str, epochs: int) -> dict[str, float]:
    start = time.perf_counter()
    data = ref.read_and_split(path, delimiter)
    load = time.perf_counter() - start
    model, train_seconds, samples = ref.train(data, dim=DIM, epochs=epochs, batch_size=BATCH, num_negatives=NEGATIVES,
                                               lr=LR, temperature=TEMPERATURE)
    metrics, eval_seconds, users = ref.evaluate(model, data)
    return {"load": load, "train": train_seconds, "samples_per_s": samples / train_seconds, "eval": eval_seconds,
            "users_per_s": users / eval_seconds, "total": load + train_seconds + eval_seconds, **metrics}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median total time (the lower middle for an even count)."""
    return sorted(runs, key=lambda r: r["total"])[(len(runs) - 1) // 2]


def generated_csv(directory: Path, num_users: int = 20_000, num_items: int = 20_000, per_user: float = 50.0) -> Path:
    """About num_users * per_user interactions as `user,item,timestamp` with a header."""
    path = directory / "generated.csv"
    pacsv.write_csv(generate(num_users, num_items, interactions_per_user=per_user, seed=0), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of each MovieLens-100K pipeline, the median kept")
    parser.add_argument(
        "--big-repeats", type=int, default=3, help="the same for the 1M-row case (about 2.5 minutes per run)"
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = []
        if (DATA / "ml-100k" / "u.data").is_file():
            cases.append(
                ("MovieLens-100K", str(DATA / "ml-100k" / "u.data"), "ml-100k", "\t", args.epochs, args.repeats)
            )
        else:
            print(f"skipping MovieLens-100K: {DATA / 'ml-100k' / 'u.data'} not found", flush=True)
        big = generated_csv(tmp)
        cases.append((f"generated, {sum(1 for _ in open(big)) - 1:,} rows", str(big), "csv", ",", 1, args.big_repeats))
        for name, path, fmt, delimiter, epochs, repeats in cases:
            # Runs are interleaved (reference with 1 and with all torch threads, then twotower, then
            # again), so that the load of a shared machine falls alike on every pipeline; medians kept.
            thread_counts = sorted({1, os.cpu_count() or 1})
            reference_runs = {t: [] for t in thread_counts}
            same_runs, rec_runs = [], []
            for i in range(repeats):
                for threads in thread_counts:
                    print(
                        f"{name}: reference pipeline, {threads} torch thread(s), run {i + 1}/{repeats} ...", flush=True
                    )
                    torch.set_num_threads(threads)
                    reference_runs[threads].append(run_reference(path, delimiter, epochs))
                torch.set_num_threads(os.cpu_count() or 1)
                print(f"{name}: twotower, run {i + 1}/{repeats} ...", flush=True)
                same_runs.append(run_twotower(path, fmt, epochs, False, tmp / f"same-{fmt}-{i}"))
                rec_runs.append(run_twotower(path, fmt, epochs, True, tmp / f"rec-{fmt}-{i}"))
            per_threads = [median_run(reference_runs[t]) for t in thread_counts]
            base = min(per_threads, key=lambda r: r["total"])
            same, rec = median_run(same_runs), median_run(rec_runs)
            totals = " / ".join(f"{r['total']:.2f}" for r in per_threads)
            ratios = ", ".join(f"{base['total'] / r['total']:.1f}x" for r in same_runs)
            notes.append(f"{name}: median of {repeats} interleaved run(s) per pipeline; reference total with 1 / all "
                         f"torch threads: {totals} s, the faster kept; twotower (same settings) per run: {ratios}.")
            print(notes[-1], flush=True)
            for label, r in (("reference PyTorch pipeline", base), ("twotower, same settings", same),
                             ("twotower, mixed negatives", rec)):
                rows.append([name, epochs, label, f"{r['load']:.2f}", f"{r['train']:.1f}", f"{r['samples_per_s']:,.0f}",
                             f"{r['eval']:.2f}", f"{r['users_per_s']:,.0f}", f"{r['total']:.1f}",
                             f"{base['total'] / r['total']:.1f}x", f"{r['ndcg@10']:.4f}"])
            print(markdown_table(HEADER, rows[-3:]), flush=True)
    table = markdown_table(HEADER, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    path = write_results("e2e", table, {"rows": rows, "notes": notes})
    print(table)
    print(f"written to {path} and {plot_e2e(path.with_suffix('.json'))}")


HEADER = ["data", "epochs", "pipeline", "load s", "train s", "samples/s", "eval s", "users/s", "total s",
          "speed-up (total)", "test ndcg@10"]


@pytest.mark.skipif(not (DATA / "ml-100k" / "u.data").is_file(), reason="MovieLens-100K not present")
def test_e2e_twotower_ml100k(benchmark, tmp_path):
    path = str(DATA / "ml-100k" / "u.data")
    benchmark.pedantic(run_twotower, args=(path, "ml-100k", 1, False, tmp_path / "run"), rounds=1, warmup_rounds=0)


@pytest.mark.skipif(not (DATA / "ml-100k" / "u.data").is_file(), reason="MovieLens-100K not present")
def test_e2e_reference_ml100k(benchmark):
    path = str(DATA / "ml-100k" / "u.data")
    benchmark.pedantic(run_reference, args=(path, "\t", 1), rounds=1, warmup_rounds=0)


if __name__ == "__main__":
    main()
