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


def split_half(run: Path, splits: int = 10, seed: int = 0) -> dict[str, Any]:
    """Judges the two choice rules on validation alone: the validation users are halved at random
    `splits` times; each rule chooses on one half and is scored on the other (both ways). The
    two-step rule (training's: the time on the filter alone, then the weight on the blend) against
    the joint one (the best (time, weight) pair of the blend). One scoring pass of validation."""
    import numpy as np

    from twotower.data.csr import csr_pair
    from twotower.evaluate import evaluate_targets, ranking_width, split_targets
    from twotower.model.graph_filter import GraphFilter
    from twotower.model.model_dir import load_model_dir, trained_dataset
    from twotower.retrieval.graph_rank import ALONE, GraphSweep
    from twotower.settings import TrainConfig
    from twotower.training.graph_blend import two_step_choice

    trained = load_model_dir(run / "model")
    dataset = trained_dataset(trained)
    config = TrainConfig.from_dict(trained.config["train_config"])
    settings = type(config.model)()
    metric, ks = config.train.select_metric, config.train.ks
    times = sorted(settings.graph_filter_sharpening)
    weights = sorted({0.0, *settings.graph_filter_weights})
    history = csr_pair(dataset.train_history)
    graph = GraphFilter.fit(*history, dataset.num_items, rank=settings.graph_filter_rank,
                            ideal_weight=settings.graph_filter_ideal_weight, seed=config.train.seed)
    targets = split_targets(dataset, "valid", config.eval)
    sweep = GraphSweep(trained.model.user_search_vectors(), trained.model.item_search_vectors(), graph, history,
                       ranking_width(ks, dataset.num_items), weights, {"valid": targets.exclude}, sharpenings=times,
                       alone=("valid",))
    pairs = [(times[0], 0.0), *[(t, w) for t in times for w in weights if w > 0]]
    with_targets = np.flatnonzero(np.diff(targets.relevant[0]) > 0)
    rng = np.random.default_rng(seed)
    held_out: dict[str, list[float]] = {"two_step": [], "joint": []}
    differ = 0
    for _ in range(splits):
        order = rng.permutation(with_targets)
        halves = [order[: len(order) // 2], order[len(order) // 2:]]
        scores = []
        for half in halves:
            part = _restricted(targets, half, dataset.num_users)

            def score(weight: float, time: float, part: Any = part) -> float:
                return evaluate_targets(sweep.ranker(weight, "valid", time), part, num_items=dataset.num_items,
                                        ks=ks, progress=False, desc="split half")[metric]

            scores.append(({t: score(ALONE, t) for t in times}, {(t, w): score(w, t) for t, w in pairs}))
        for chosen_on, scored_on in ((0, 1), (1, 0)):
            alone, blended = scores[chosen_on]
            two_step = two_step_choice(alone, blended)
            two_step = (two_step[0] if two_step[1] else times[0], two_step[1])
            joint = max(blended, key=lambda pair: (blended[pair], -pair[1], -pair[0]))
            differ += two_step != joint
            held_out["two_step"].append(scores[scored_on][1][two_step])
            held_out["joint"].append(scores[scored_on][1][joint])
    return {f"split_half_{rule}": statistics.fmean(values) for rule, values in held_out.items()} | {
        "split_half_differ": f"{differ}/{2 * splits}"}


def _restricted(targets: Any, users: Any, num_users: int) -> Any:
    """`targets` with only `users`' relevant items (the others have none, so they are skipped)."""
    import numpy as np

    keep = np.zeros(num_users, dtype=bool)
    keep[users] = True
    indptr, indices = targets.relevant
    counts = np.diff(indptr) * keep
    return dataclasses.replace(targets, relevant=(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                                                  indices[np.repeat(keep, np.diff(indptr))]),
                               unreachable=targets.unreachable * keep, unreachable_users=0)


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
    parser.add_argument("--split-half", type=int, default=0, metavar="SPLITS",
                        help="also judge the choice rules on validation alone: choose on one random half of the "
                        "validation users, score on the other, SPLITS times (the defaults' candidates)")
    args = parser.parse_args(argv)
    runs = [run for run in args.runs if (run / "model").is_dir()]
    for run in sorted(set(args.runs) - set(runs)):
        print(f"{run}: no model directory (RUN/model); skipped")
    if not runs:
        return 0
    rows = []
    for run in runs:
        row = blend_run(run, args.weights, args.sharpening, args.rank)
        if args.split_half:
            row.update(split_half(run, args.split_half))
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
    halves = ["split_half_two_step", "split_half_joint"] if all("split_half_joint" in row for row in rows) else []
    header = ["run", "sharpening", "weight", *[key.replace("_", " ") + f"@{k}" for key in keys],
              *(["joint choice (time, weight)", *[key.replace("_", " ") + f"@{k}" for key in joint]] if joint else []),
              *([f"held-out half of valid {metric}: two-step", "joint", "choices differ"] if halves else []),
              "filter, choice and test (s)"]
    table_rows = [[Path(row["run"]).name, row["sharpening"], row["weight"], *[f"{row[key]:.4f}" for key in keys],
                   *([f"({row['joint_sharpening']}, {row['joint_weight']})", *[f"{row[key]:.4f}" for key in joint]]
                     if joint else []),
                   *([*[f"{row[key]:.5f}" for key in halves], row["split_half_differ"]] if halves else []),
                   row["fit_and_choose_seconds"]] for row in rows]
    table_rows.append(["mean ± spread", "", "", *[_mean(rows, key) for key in keys],
                       *(["", *[_mean(rows, key) for key in joint]] if joint else []),
                       *([*[_mean(rows, key) for key in halves], ""] if halves else []), ""])
    command = "python -m benchmarks.graph_filter " + " ".join(sys.argv[1:] if argv is None else argv)
    table = f"`{command}`\n\n" + markdown_table(header, table_rows)
    path = write_results(f"graph-filter-{args.name}", table, {"rows": rows})
    print(table)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
