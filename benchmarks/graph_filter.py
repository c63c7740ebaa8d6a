"""The graph filter's blend (`model.graph_filter`) on already trained runs, valid and test.

For each run directory (what `twotower train --out RUN` wrote), fits the filter on the run's training
split, chooses the sharpening time and the blend weight on validation exactly as training does with
`model.graph_filter` on (`twotower.training.graph_blend`; the candidates: the settings' defaults, or
as given), and reports the towers alone against the blend on valid and test, per run and as mean
and spread, with the time the filter took; next to it, the pair the blend's validation score alone
would choose (the rule before the two-step choice) and its test figures:

    python -m benchmarks.graph_filter RUN [RUN ...] --name gowalla-example

Writes benchmarks/results/graph-filter-<name>.md and .json (the CPU named). A run trained with the
setting on already carries its blend in results.json; this re-derives it from the towers, so the
same command compares runs trained before the setting existed. A run directory that is missing
is named and skipped (exit 0 when none is left).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.runner import markdown_table, write_results


def blend_run(run: Path, weights: list[float] | None, sharpening: list[float] | None = None,
              rank: int | None = None) -> dict[str, Any]:
    """Towers and blend metrics of one run (its select metric's @k, recall at the same k)."""
    from twotower.evaluate import evaluate_model
    from twotower.model.model_dir import load_model_dir, trained_dataset
    from twotower.settings import TrainConfig
    from twotower.training.graph_blend import choose_graph_blend

    trained = load_model_dir(run / "model")
    dataset = trained_dataset(trained)
    config = TrainConfig.from_dict(trained.config["train_config"])
    defaults = type(config.model)()  # a run trained before a setting existed carries the setting's default
    model_settings = dataclasses.replace(
        config.model, graph_filter=True, graph_filter_weights=weights or defaults.graph_filter_weights,
        graph_filter_sharpening=sharpening or defaults.graph_filter_sharpening,
        graph_filter_rank=defaults.graph_filter_rank if rank is None else rank)
    config = dataclasses.replace(config, model=model_settings)
    metric = config.train.select_metric
    recall = "recall@" + metric.split("@")[1]
    started = time.perf_counter()
    blend = choose_graph_blend(config, trained.model, dataset)
    described = blend.describe()
    row: dict[str, Any] = {"run": str(run), "metric": metric, "weight": blend.graph.weight,
                           "sharpening": blend.graph.sharpening, "rank": blend.graph.rank,
                           "valid_alone_by_sharpening": described["valid_alone_by_sharpening"],
                           "valid_by_choice": described["valid_by_choice"]}
    for split in ("valid", "test"):
        towers = evaluate_model(trained.model, dataset, split=split, ks=config.train.ks, progress=False,
                                protocol=config.eval)
        mixed = getattr(blend, split) or evaluate_model(trained.model, dataset, split=split, ks=config.train.ks,
                                                        progress=False, protocol=config.eval, graph=blend.graph)
        for name, result in (("towers", towers), ("blend", mixed)):
            row[f"{split}_{name}_{recall.split('@')[0]}"] = result[recall]
            row[f"{split}_{name}_{metric.split('@')[0]}"] = result[metric]
    row["seconds"] = round(time.perf_counter() - started, 1)
    row.update(_joint_choice(blend, trained, dataset, config, recall, metric, row))
    row["fit_and_choose_seconds"] = round(blend.seconds, 1)
    return row


def _joint_choice(blend: Any, trained: Any, dataset: Any, config: Any, recall: str, metric: str,
                  row: dict[str, Any]) -> dict[str, Any]:
    """For comparison with training's two-step choice: the (time, weight) pair the blend's
    validation score alone would choose (ties: smaller weight, then shorter time) and its test
    figures (re-ranked only when it differs from the chosen pair)."""
    from twotower.evaluate import evaluate_model

    if not blend.valid_by_choice:
        return {}
    time, weight = max(blend.valid_by_choice, key=lambda pair: (blend.valid_by_choice[pair], -pair[1], -pair[0]))
    same = weight == blend.graph.weight and (weight == 0 or time == blend.graph.sharpening)
    if same:
        test = {recall: row[f"test_blend_{recall.split('@')[0]}"], metric: row[f"test_blend_{metric.split('@')[0]}"]}
    else:
        test = evaluate_model(trained.model, dataset, split="test", ks=config.train.ks, progress=False,
                              protocol=config.eval, graph=blend.graph.with_weight(weight, time)).metrics
    return {"joint_sharpening": time, "joint_weight": weight, f"joint_test_{recall.split('@')[0]}": test[recall],
            f"joint_test_{metric.split('@')[0]}": test[metric]}


def _mean(rows: list[dict[str, Any]], key: str) -> str:
    values = [row[key] for row in rows]
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories written by `twotower train --out`")
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/graph-filter-NAME.md")
    parser.add_argument("--weights", type=float, nargs="+", help="candidate weights (default: the setting's default)")
    parser.add_argument("--sharpening", type=float, nargs="+", help="candidate sharpening times (default: the "
                        "setting's default)")
    parser.add_argument("--rank", type=int, help="the low-pass term's rank (default: the setting's default)")
    args = parser.parse_args(argv)
    runs = [run for run in args.runs if (run / "model").is_dir()]
    for run in sorted(set(args.runs) - set(runs)):
        print(f"{run}: no model directory (RUN/model); skipped")
    if not runs:
        return 0
    rows = []
    for run in runs:
        row = blend_run(run, args.weights, args.sharpening, args.rank)
        rows.append(row)
        figures = ", ".join(f"{key} {value:.4f}" for key, value in row.items()
                            if isinstance(value, float) and key.startswith(("valid_", "test_")))
        choices = ", ".join(f"{c['sharpening']}/{c['weight']}: {c['score']:.4f}" for c in row["valid_by_choice"])
        print(f"{run}: weight {row['weight']}, sharpening {row['sharpening']}, validation by sharpening/weight "
              f"{choices}; {figures}", flush=True)
    metric = rows[0]["metric"]
    name, k = metric.split("@")
    keys = [f"{split}_{kind}_{m}" for split in ("valid", "test") for kind in ("towers", "blend")
            for m in ("recall", name)]
    joint = [f"joint_test_{m}" for m in ("recall", name)] if all("joint_weight" in row for row in rows) else []
    header = ["run", "sharpening", "weight", *[key.replace("_", " ") + f"@{k}" for key in keys],
              *(["joint choice (time, weight)", *[key.replace("_", " ") + f"@{k}" for key in joint]] if joint else []),
              "filter, choice and test (s)"]
    table_rows = [[Path(row["run"]).name, row["sharpening"], row["weight"], *[f"{row[key]:.4f}" for key in keys],
                   *([f"({row['joint_sharpening']}, {row['joint_weight']})", *[f"{row[key]:.4f}" for key in joint]]
                     if joint else []),
                  row["fit_and_choose_seconds"]] for row in rows]
    table_rows.append(["mean ± spread", "", "", *[_mean(rows, key) for key in keys],
                       *(["", *[_mean(rows, key) for key in joint]] if joint else []), ""])
    command = "python -m benchmarks.graph_filter " + " ".join(sys.argv[1:] if argv is None else argv)
    table = f"`{command}`\n\n" + markdown_table(header, table_rows)
    path = write_results(f"graph-filter-{args.name}", table, {"rows": rows})
    print(table)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
