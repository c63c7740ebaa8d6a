"""One trained model under every evaluation protocol: the same rankings scored by each combination
of the three rules of `twotower.settings.eval` (what the test ranking leaves out, what becomes of
targets unknown to training, whether a target the user already has can be hit), each named after
the paper preset it matches.

    python -m benchmarks.eval_protocols                      # trains examples/movielens-100k.toml, scores it
    python -m benchmarks.eval_protocols runs/gowalla/model   # and saved model directories after it
    python -m benchmarks.eval_protocols --no-training runs/gowalla/model

Writes benchmarks/results/eval-protocols.md (and .json) with the CPU that ran it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.runner import markdown_table, write_results
from twotower.evaluate import evaluate_model, evaluate_popularity
from twotower.model.model_dir import load_model_dir, trained_dataset
from twotower.settings import TrainConfig
from twotower.settings.eval import EXCLUDE, PRESETS, REPEAT_TARGETS, UNKNOWN_TARGETS, EvalConfig
from twotower.training.loop import fit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "movielens-100k.toml"
HEADER = ["data", "preset", "test leaves out", "unknown targets", "repeat targets", "users", "recall@10",
          "ndcg@10", "recall@20", "ndcg@20", "most-popular ndcg@20"]


def every_protocol() -> list[tuple[str, EvalConfig]]:
    """Each combination of the rules, named by the presets it equals ("" for none)."""
    out = []
    for exclude, unknown, repeat in itertools.product(EXCLUDE, UNKNOWN_TARGETS, REPEAT_TARGETS):
        protocol = EvalConfig(exclude=exclude, unknown_targets=unknown, repeat_targets=repeat)
        out.append((", ".join(name for name, p in PRESETS.items() if p == protocol), protocol))
    return out


def protocol_rows(model_dir: Path, label: str) -> tuple[list[list[Any]], dict[str, Any]]:
    """Table rows of one saved model under every protocol, and the counts of its test split."""
    trained = load_model_dir(model_dir)
    dataset = trained_dataset(trained)
    rows, counts = [], {}
    for name, protocol in every_protocol():
        model = evaluate_model(trained.model, dataset, split="test", ks=(10, 20), progress=False, protocol=protocol)
        popular = evaluate_popularity(dataset, split="test", ks=(20,), progress=False, protocol=protocol)
        m = model.metrics
        rows.append([label, name or "-", protocol.exclude, protocol.unknown_targets, protocol.repeat_targets,
                     f"{model.num_users:,}", f"{m['recall@10']:.4f}", f"{m['ndcg@10']:.4f}", f"{m['recall@20']:.4f}",
                     f"{m['ndcg@20']:.4f}", f"{popular.metrics['ndcg@20']:.4f}"])
        counts = {key: value for key, value in model.targets.items() if key.endswith(("rows", "count"))}
    return rows, counts


def train_example(out: Path, epochs: int | None, threads: int) -> tuple[Path, float]:
    """Trains examples/movielens-100k.toml into `out`; returns the model directory and the seconds."""
    config = TrainConfig.from_toml(EXAMPLE)
    config.data.path = str((EXAMPLE.parents[1] / config.data.path).resolve())  # the example is relative to the root
    config.train = dataclasses.replace(config.train, progress=False, num_threads=threads,
                                       epochs=epochs or config.train.epochs)
    started = time.perf_counter()
    result = fit(config, out)
    return result.model_dir, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="*", type=Path, help="saved model directories to score as well")
    parser.add_argument("--no-training", action="store_true", help="score the given model directories only")
    parser.add_argument("--epochs", type=int, help="epochs of the ML-100K training (default: the example's)")
    parser.add_argument("--threads", type=int, default=1, help="training threads (default: %(default)s)")
    args = parser.parse_args()
    notes, rows, counts = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        models = [(path, path.parent.name or str(path)) for path in args.model_dirs]
        if not args.no_training:
            model_dir, seconds = train_example(Path(tmp) / "ml-100k", args.epochs, args.threads)
            models.insert(0, (model_dir, "MovieLens-100K"))
            notes.append(f"MovieLens-100K model: `{EXAMPLE.relative_to(EXAMPLE.parents[1])}`, "
                         f"trained in {seconds:.0f} s with {args.threads} training thread(s).")
        for model_dir, label in models:
            started = time.perf_counter()
            table_rows, counts[label] = protocol_rows(model_dir, label)
            rows += table_rows
            notes.append(f"{label}: test split {counts[label]}; {len(table_rows)} protocols scored in "
                         f"{time.perf_counter() - started:.1f} s.")
            print(markdown_table(HEADER, table_rows), flush=True)
    table = markdown_table(HEADER, rows) + "\n\n" + "\n".join(f"- {note}" for note in notes)
    print(write_results("eval-protocols", table, {"rows": rows, "counts": counts, "notes": notes}))


if __name__ == "__main__":
    main()
