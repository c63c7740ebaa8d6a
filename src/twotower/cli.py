"""The `twotower` command: train, tune, evaluate, index, recommend, serve, data stats.

Every failure a person can act on (a missing file, a wrong column, a bad option value, a model
directory that does not match) ends with one line `twotower: error: ...` and exit code 2.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting lose badly when a core is shared (a 10x slower training step
# was measured on a loaded 2-core machine); waiting passively costs little. Must precede torch's import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twotower import __version__  # noqa: E402
from twotower.settings import TrainConfig  # noqa: E402
from twotower.settings.cli import _key_value, add_config_flags, merge, overrides_from_args  # noqa: E402
from twotower.settings.eval import PRESET_HELP, PRESETS, preset  # noqa: E402

EXIT_USAGE = 2


class UserError(Exception):
    """An error message for the person at the terminal."""


# -- train ------------------------------------------------------------------------------------------
def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig().to_dict()
    if args.config:
        base = TrainConfig.from_toml(args.config).to_dict()
    elif getattr(args, "resume", False):
        base = _resumed_settings(Path(args.out)) or base
    if args.protocol:
        base["eval"] = dataclasses.asdict(preset(args.protocol))
    config = TrainConfig.from_dict(merge(base, overrides_from_args(args)))
    config.data = config.data.resolved(Path.cwd())  # flags name files from here (the file's are absolute)
    return config


def _resumed_settings(out: Path) -> dict[str, Any] | None:
    """`--resume` without `--config`: the settings stored in the run's newest intact checkpoint, so
    `twotower train --resume --out DIR` alone continues a run started from a file and flags (flags
    given with it still override, and `fit` names any that differ)."""
    from twotower.atomic import read_json_object
    from twotower.training.checkpoint import resumable_checkpoint

    last, _ = resumable_checkpoint(out / "checkpoints")
    if last is None:
        return None  # fit says there is nothing to resume, and why
    return read_json_object(last / "config.json").get("train_config")


def _metrics_table(rows: list[tuple[str, dict[str, float]]], names: Sequence[str]) -> str:
    width = max(22, *(len(label) + 1 for label, _ in rows))
    header = f"{'':<{width}}" + "".join(f"{n:>13}" for n in names)
    lines = [header]
    for label, metrics in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{metrics.get(n, float('nan')):>13.4f}" for n in names))
    return "\n".join(lines)


def _bars(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: not when told to be quiet, and not when stderr is a file or a
    pipe (a bar redrawn there piles up as partial lines; the per-epoch lines say the same)."""
    return not (getattr(args, "quiet", False) or getattr(args, "silent", False)) and sys.stderr.isatty()


def _say(silent: bool) -> Callable[[str], None]:
    """Where a command's lines go: stdout, flushed line by line (a log file shows progress as it
    happens), or nowhere under --silent and on the ranks other than 0 of a distributed run."""
    quiet = silent or int(os.environ.get("RANK", "0") or 0) > 0
    return (lambda line: None) if quiet else (lambda line: print(line, flush=True))


def _rank() -> str:
    """" (rank R of W)" in a process of a distributed run (torchrun's environment), else ""."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world not in ("", "1") else ""


def _inputs(config: TrainConfig, config_file: str | None) -> str:
    """Every input file of a run, named by its role."""
    data = config.data
    if not data.path:
        return (f"built-in synthetic dataset ({data.synthetic_users} users, {data.synthetic_items} items)"
                + (f"; config {config_file}" if config_file else ""))
    roles = (("config", config_file), ("train", data.path), ("valid", data.valid), ("test", data.test),
             ("user features", data.user_features), ("item features", data.item_features))
    return ", ".join(f"{role} {path}" for role, path in roles if path)


def _unknown_note(protocol: Any) -> str:
    if protocol.unknown_targets == "keep":
        return "eval.unknown_targets keep: counted as targets never hit"
    return "eval.unknown_targets drop: not in the metrics"


def _targets_line(split: str, targets: dict[str, Any]) -> str:
    """What the protocol did with one split's rows, e.g. "test: 217,242 rows, ranked without each
    user's train+valid items; 21 with an item and 0 with a user unknown to training
    (eval.unknown_targets drop); 0 repeat targets (eval.repeat_targets exclude)"."""
    return (f"{split}: {targets['rows']:,} rows, ranked without each user's {targets['exclude']} items; "
            f"{targets['unknown_item_rows']:,} with an item and {targets['unknown_user_rows']:,} with a user unknown "
            f"to training (eval.unknown_targets {targets['unknown_targets']}); {targets['repeat_target_count']:,} "
            f"repeat targets, items the user already has (eval.repeat_targets {targets['repeat_targets']})")


def cmd_train(args: argparse.Namespace) -> int:
    from twotower.data import split_summary
    from twotower.datasets import load_dataset
    from twotower.training.loop import fit

    config = _config_from_args(args)
    if not _bars(args):
        config.train.progress = False
    if args.silent:
        logging.getLogger("twotower").setLevel(logging.ERROR)
    config.validate()
    say = _say(args.silent)
    out = Path(args.out)
    say(f"twotower {__version__}: training -> {out}")
    say(f"  inputs: {_inputs(config, args.config)}")
    dataset = load_dataset(config.data)
    for line in split_summary(dataset, _unknown_note(config.eval)):
        say(f"  {line}")
    result = fit(config, out, resume=args.resume, dataset=dataset, echo=None if config.train.progress else say)
    ks = config.train.ks
    names = [f"{m}@{k}" for k in ks[:2] for m in ("recall", "ndcg", "mrr")]
    say("")
    model = "model" + _blended(result.model_dir)  # as `twotower evaluate` labels it
    rows = [(f"{model}, valid", result.valid.metrics), ("most-popular, valid", result.popularity_valid.metrics),
            (f"{model}, test", result.test.metrics), ("most-popular, test", result.popularity_test.metrics)]
    if result.refit is not None:
        rows.insert(3, (f"refit{_blended(result.refit.model_dir)} on train + valid, test", result.refit.test.metrics))
    say(_metrics_table(rows, names))
    say("")
    for split, evaluated in (("valid", result.valid), ("test", result.test)):
        say(_targets_line(split, evaluated.targets))
    say(f"\nbest epoch {result.best_epoch} (by valid {config.train.select_metric}); model saved to {result.model_dir}")
    graph_line = _graph_filter_line(out / "results.json")
    if graph_line:
        say(graph_line)
    if result.refit is not None:
        say(f"refit on train + valid for {result.refit.best_epoch} epochs; model saved to {result.refit.model_dir} "
            "(serve this one)")
    say(f"metrics per epoch: {out / 'metrics.jsonl'}, plot: {out / 'training.png'}")
    say(f"run directory: {result.disk_bytes / 1e6:.1f} MB on disk ({out}; hard-linked weights counted once)")
    return 0


_BLEND_LABEL = " + graph filter"  # after "model" in train's and evaluate's tables when the model ranks by a blend


def _blended(model_dir: Path) -> str:
    """`_BLEND_LABEL` when the model directory ranks by a blend, else ""."""
    from twotower.model.graph_filter import GRAPH_FILTER_FILE

    return _BLEND_LABEL if (Path(model_dir) / GRAPH_FILTER_FILE).is_file() else ""


def _graph_filter_line(results_path: Path) -> str:
    """What `model.graph_filter` chose, from results.json ("" when the run has no blend)."""
    from twotower.atomic import read_json_object

    section = read_json_object(results_path).get("graph_filter") if results_path.is_file() else None
    if not section:
        return ""
    metric, weight, sharpening = section["select_metric"], section["weight"], section.get("sharpening", 0.0)
    towers = section["towers"]["valid"]["metrics"][metric]
    chosen = [entry["score"] for entry in section.get("valid_by_choice", [])
              if entry["weight"] == weight and (weight == 0 or entry["sharpening"] == sharpening)]
    alone = [entry["score"] for entry in section.get("valid_alone_by_sharpening", [])
             if entry["sharpening"] == sharpening]
    time_how = f"the filter alone {alone[0]:.4f}; " if alone else ""
    how = (f"chosen on valid {metric} ({time_how}{towers:.4f} for the towers alone, {chosen[0]:.4f} blended)"
           if chosen else "as set")
    rows = "the rows above marked + graph filter are the blend" if weight > 0 else "the towers rank alone"
    return (f"graph filter: weight {weight}, sharpening {sharpening} {how}; {rows} "
            f"({section['seconds']} s to fit, choose and rank test)")


# -- tune -------------------------------------------------------------------------------------------
def cmd_tune(args: argparse.Namespace) -> int:
    try:
        import optuna
    except ImportError:
        raise UserError("twotower tune needs Optuna: pip install 'twotower[tune]' (or pip install optuna)") from None
    from twotower.settings.tune import TuneConfig, read_tune
    from twotower.tune import format_trials, tune

    config = _config_from_args(args)
    settings = read_tune(args.config, config) if args.config else TuneConfig.from_dict({}, config)
    flags = {name: getattr(args, name) for name in ("trials", "timeout") if getattr(args, name) is not None}
    settings = dataclasses.replace(settings, **flags)
    settings.validate()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is printed here instead
    out = Path(args.out)
    print(f"twotower {__version__}: tuning {len(settings.space)} settings by valid {settings.metric} "
          f"({', '.join(settings.space)}) -> {out}", flush=True)
    result = tune(config, settings, out, report=lambda line: print(line, flush=True))
    print()
    print(format_trials(result.rows, settings.metric))
    if result.best is None:
        print(f"\nno trial completed yet; run the same command again to continue the study in {out}")
        return 0
    print(f"\nbest: trial {result.best.number}, valid {settings.metric} {result.best.value:.4f}; "
          f"model {result.best_model}")
    print(f"best configuration: {result.best_toml} (twotower train --config {result.best_toml})")
    print(f"all trials: {out / 'trials.csv'}, plot: {out / 'trials.png'}")
    return 0


# -- evaluate ---------------------------------------------------------------------------------------
def _protocol_for(trained: Any, args: argparse.Namespace) -> Any:
    """The protocol of an evaluation: the one the model trained with, replaced by --protocol,
    then changed by --eval.* flags."""
    saved = TrainConfig.from_dict(trained.config["train_config"]).to_dict()
    if args.protocol:
        saved["eval"] = dataclasses.asdict(preset(args.protocol))
    protocol = TrainConfig.from_dict(merge(saved, overrides_from_args(args))).eval
    protocol.validate()
    return protocol


def cmd_evaluate(args: argparse.Namespace) -> int:
    from twotower.evaluate import evaluate_ann, evaluate_model, evaluate_popularity, ranking_width, split_targets
    from twotower.model.model_dir import load_model_dir, trained_dataset

    trained = load_model_dir(args.model_dir)
    protocol = _protocol_for(trained, args)
    dataset = trained_dataset(trained, args.data)
    ks = args.k or TrainConfig.from_dict(trained.config["train_config"]).train.ks
    rows, counts = [], []
    for split in ("valid", "test"):
        result = evaluate_model(trained.model, dataset, split=split, ks=ks, progress=_bars(args), protocol=protocol,
                                graph=trained.graph)
        rows.append((f"model{_BLEND_LABEL if trained.graph is not None else ''}, {split}", result.metrics))
        popular = evaluate_popularity(dataset, split=split, ks=ks, progress=False, protocol=protocol)
        rows.append((f"most-popular, {split}", popular.metrics))
        counts.append(_targets_line(split, result.targets))
    names = [f"{m}@{k}" for k in ks[:2] for m in ("recall", "ndcg", "mrr")]
    print(_metrics_table(rows, names))
    print()
    print("\n".join(counts))
    if args.ann:
        index = _load_or_build_index(trained, args)
        targets = split_targets(dataset, "test", protocol)
        users = trained.model.user_search_vectors()
        items = trained.model.item_search_vectors()
        ann = evaluate_ann(index, users, items, targets.relevant, exclude=targets.exclude, ks=ks,
                           progress=_bars(args), unreachable=targets.unreachable,
                           unreachable_users=targets.unreachable_users, graph=trained.graph,
                           history=dataset.train_history)
        k = ranking_width(ks, trained.model.num_items)
        if trained.graph is not None:
            print("\nWith the graph filter: the index's and the filter's candidates re-ranked by the blend, against "
                  "the exact blend.")
        print(f"\nHNSW (test): ndcg@{ks[0]} {ann.metrics[f'ndcg@{ks[0]}']:.4f} "
              f"vs exact {ann.extra[f'exact/ndcg@{ks[0]}']:.4f}; "
              f"recall of ANN top-{k} vs exact top-{k}: {ann.extra[f'ann_recall@{k}']:.4f}; "
              f"queries/s: ANN {ann.extra['ann_qps']:.0f}, exact {ann.extra['exact_qps']:.0f}")
    return 0


# -- index ------------------------------------------------------------------------------------------
def _load_or_build_index(trained: Any, args: argparse.Namespace) -> Any:
    from twotower.retrieval.recommend import build_index, has_index, load_index

    if has_index(trained):
        return load_index(trained)
    return build_index(trained, M=getattr(args, "M", 16), ef_construction=getattr(args, "ef_construction", 200),
                       ef=getattr(args, "ef", 100))


def cmd_index(args: argparse.Namespace) -> int:
    from twotower.model.model_dir import load_model_dir
    from twotower.retrieval.recommend import Recommender, build_index, save_index

    trained = load_model_dir(args.model_dir)
    if args.action == "build":
        index = build_index(trained, M=args.M, ef_construction=args.ef_construction, ef=args.ef)
        path = save_index(index, trained)
        print(f"HNSW index over {len(index)} items (M={args.M}, ef_construction={args.ef_construction}, "
              f"ef={args.ef}) saved to {path}")
        return 0
    if not args.user:
        raise UserError("index query needs --user ID (one or more)")
    _print_recommendations(Recommender(trained, ann=True, ef=args.ef), args.user, args.k, as_json=args.json)
    return 0


# -- recommend --------------------------------------------------------------------------------------
def _print_recommendations(recommender: Any, users: list[str], k: int, *, as_json: bool) -> None:
    from twotower.retrieval.recommend import UnknownIdError

    try:
        answers = recommender.recommend(users, k)
    except UnknownIdError as err:
        raise UserError(f"unknown user id(s) {err.ids[:5]}: not in the training data of {recommender.path}") from None
    out = [{"user": answer.query, "items": [_plain(i) for i in answer.items],
            "scores": [round(float(s), 6) for s in answer.scores]} for answer in answers]
    if as_json:
        print(json.dumps(out if len(out) > 1 else out[0]))
        return
    for entry in out:
        print(f"user {entry['user']}: top {len(entry['items'])} (seen items filtered)")
        for rank, (item, score) in enumerate(zip(entry["items"], entry["scores"], strict=True), 1):
            print(f"  {rank:>3}. {item}  ({score:.4f})")


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def cmd_recommend(args: argparse.Namespace) -> int:
    from twotower.retrieval.recommend import Recommender

    _print_recommendations(Recommender.load(args.model_dir, ann=args.ann), args.user, args.k, as_json=args.json)
    return 0


# -- serve ------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from twotower.serve import require_extra
    from twotower.serve.options import ServeOptions, check_host, token_from_environment

    token = token_from_environment(args.admin_token)
    check_host(args.host, token)
    options = ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, batching=not args.no_batching,
                           admin_token=token, max_k=args.max_k, workers=args.workers, search_threads=args.threads)
    try:
        require_extra()
    except ImportError as err:
        raise UserError(str(err)) from None
    from twotower.serve.run import serve

    _log_to_stderr(logging.INFO)  # what the service says of its model and its errors (uvicorn logs its own)
    serve(args.model_dir, host=args.host, port=args.port, ann=args.ann, options=options)
    return 0


def _log_to_stderr(level: int) -> None:
    """The "twotower" logger's records at `level` and above on stderr, once."""
    logger = logging.getLogger("twotower")
    logger.setLevel(level)
    if not any(getattr(handler, "_twotower_stderr", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        handler._twotower_stderr = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


# -- data stats -------------------------------------------------------------------------------------
def cmd_data_stats(args: argparse.Namespace) -> int:
    from twotower.data import describe, format_stats

    options: dict[str, Any] = {"format": args.format, "encoding": args.encoding, "strict": args.strict}
    if args.columns:
        options["columns"] = dict(args.columns)  # ROLE=COLUMN, a number meaning a position, as for train
    for name in ("names", "delimiter", "header", "feedback"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.threshold is not None:
        if options.setdefault("feedback", "rating") != "rating":
            raise UserError(f"--threshold applies to --feedback rating, not {options['feedback']}")
        options["threshold"] = args.threshold
    if not Path(args.file).exists():
        raise UserError(f"file {args.file} does not exist")
    stats = describe(args.file, **options)
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0


# -- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twotower",
        description="Train, evaluate and serve two-tower retrieval models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"twotower {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a model (no arguments: the built-in synthetic dataset)",
        description="Train a two-tower model end to end: data -> towers -> loss -> evaluation -> saved model. "
        "Every setting below can also be given in a TOML file (--config), one table per section; flags override it.",
    )
    train.add_argument("--config", metavar="FILE", help="TOML file of settings (sections as below)")
    train.add_argument("--out", default="twotower-runs/latest", help="output directory (default: %(default)s)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars: one line per epoch (loss, "
                       "validation metric, seconds, estimated time left)")
    train.add_argument("--silent", action="store_true", help="print nothing but errors (results.json has the numbers)")
    _add_protocol_flag(train)
    add_config_flags(train)
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser(
        "tune",
        help="hyper-parameter search on validation (Optuna; needs the tune extra)",
        description="Search settings on validation with Optuna (TPE sampler, median pruner). The search space is "
        "the [tune] table of --config (see README: Tuning); the rest of the file and the flags below are the base "
        "settings of every trial. Running the same command again continues the study in --out.",
    )
    tune.add_argument("--config", metavar="FILE", help="TOML file: base settings and a [tune] table")
    tune.add_argument("--out", default="twotower-runs/tune", help="study directory (default: %(default)s)")
    tune.add_argument("--trials", type=int, help="finished trials the study should hold (default: tune.trials)")
    tune.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="start no trial after this long (default: tune.timeout)"
    )
    _add_protocol_flag(tune)
    add_config_flags(tune)
    tune.set_defaults(func=cmd_tune)

    evaluate = sub.add_parser("evaluate", help="full-ranking metrics of a saved model (valid and test)",
                              description="Full-ranking metrics of a saved model on its validation and test "
                              "splits, next to most-popular, under the protocol it trained with, a preset "
                              "(--protocol) or single rules (--eval.*; they override the preset).")
    evaluate.add_argument("model_dir", help="a model directory written by `twotower train` (OUT/model)")
    evaluate.add_argument("--data", help="interaction file, when it moved since training (must be the same data)")
    evaluate.add_argument(
        "--ann", action="store_true", help="also evaluate through the HNSW index (recall vs exact, queries/s)"
    )
    evaluate.add_argument("-k", type=int, nargs="+", help="cut-offs K (default: those of training)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_protocol_flag(evaluate)
    add_config_flags(evaluate, sections=("eval",))
    evaluate.set_defaults(func=cmd_evaluate)

    index = sub.add_parser("index", help="build or query the HNSW index of a saved model")
    index.add_argument("action", choices=["build", "query"])
    index.add_argument("model_dir")
    index.add_argument("--M", type=int, default=16, help="graph degree (default: %(default)s)")
    index.add_argument(
        "--ef-construction", type=int, default=200, help="build-time candidate list (default: %(default)s)"
    )
    index.add_argument(
        "--ef", type=int, default=None,
        help="search-time candidate list (default: 100 at build, the saved value at query)"
    )
    index.add_argument("--user", nargs="+", help="external user id(s) to query")
    index.add_argument("-k", type=int, default=10, help="results per user (default: %(default)s)")
    index.add_argument("--json", action="store_true", help="print JSON")
    index.set_defaults(func=cmd_index)

    recommend = sub.add_parser("recommend", help="top-k items for users (external ids in and out, seen items filtered)")
    recommend.add_argument("model_dir")
    recommend.add_argument("--user", nargs="+", required=True, help="external user id(s)")
    recommend.add_argument("-k", type=int, default=10, help="results per user (default: %(default)s)")
    recommend.add_argument("--ann", action="store_true", help="use the saved HNSW index instead of the exact scorer")
    recommend.add_argument("--json", action="store_true", help="print JSON")
    recommend.set_defaults(func=cmd_recommend)

    _add_serve_parser(sub)

    data = sub.add_parser("data", help="inspect interaction files")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    stats = data_sub.add_parser("stats", help="counts, sparsity, popularity skew of an interaction file")
    stats.add_argument("file")
    stats.add_argument("--format", default="auto", help="file format (default: detect)")
    stats.add_argument("--columns", nargs="+", type=_key_value, metavar="ROLE=COLUMN",
                       help="e.g. user=userId item=movieId rating=rating (a number is a 0-based position)")
    stats.add_argument("--names", nargs="+", metavar="NAME", help="column names of a file without a header row")
    stats.add_argument("--delimiter", help="field separator, e.g. ';' or '::' (default: from the format)")
    stats.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                       help="whether the first row names the columns (default: detect)")
    stats.add_argument("--encoding", default="utf8", help="text encoding, e.g. latin-1")
    stats.add_argument("--strict", action="store_true", help="fail at the first malformed row instead of skipping it")
    stats.add_argument("--feedback", choices=["all", "label", "rating"], help="which rows are positives")
    stats.add_argument("--threshold", type=float, help="rating threshold (implies --feedback rating)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=cmd_data_stats)
    return parser


def _add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="an HTTP retrieval service for a saved model (needs the serve extra)",
                           description="Serve MODEL_DIR over HTTP (FastAPI + uvicorn; API at /docs). "
                           "See README: Serving.")
    serve.add_argument("model_dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; any other "
                       "than loopback needs an admin token)")
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve.add_argument("--ann", action="store_true", help="search the saved HNSW index instead of every item")
    serve.add_argument("--workers", type=int, default=1, help="server processes (default: %(default)s; item "
                       "updates and reload need 1)")
    serve.add_argument("--max-batch", type=int, default=64, help="most queries per search call (default: %(default)s)")
    serve.add_argument("--max-wait-ms", type=float, default=2.0,
                       help="longest wait for a batch to fill while requests arrive together (default: %(default)s)")
    serve.add_argument("--no-batching", action="store_true", help="one search call per request")
    serve.add_argument("--threads", type=int, help="threads of one search call (default: all cores)")
    serve.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask (default: %(default)s)")
    serve.add_argument("--admin-token", help="bearer token of item updates and reload (default: "
                       "$TWOTOWER_ADMIN_TOKEN; without one they are off)")
    serve.set_defaults(func=cmd_serve)


def _add_protocol_flag(parser: argparse.ArgumentParser) -> None:
    presets = "; ".join(f"{name} = {text}" for name, text in PRESET_HELP.items())
    parser.add_argument("--protocol", choices=list(PRESETS), metavar="NAME",
                        help=f"an evaluation protocol preset, which sets every [eval] rule; --eval.* flags "
                        f"override it. {presets}")


try:
    from safetensors import SafetensorError as _SafetensorError  # noqa: E402
except ImportError:  # older safetensors: the error class lives in the Rust module only
    from safetensors.safetensors_rust import SafetensorError as _SafetensorError  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "ef", 0) is None and args.command == "index" and args.action == "build":
        args.ef = 100
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`twotower data stats FILE | head`): what was printed is what it
        # wanted; stdout is pointed at devnull so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train" and not getattr(args, "resume", False):
            hint = "; the same command with --resume continues from the newest checkpoint"
        elif args.command == "train":
            hint = "; run it again to continue from the newest checkpoint"
        print(f"twotower: interrupted{_rank()}{hint}", file=sys.stderr)
        return 130
    except KeyError as err:  # a JSON/config file without an entry the command needs
        print(f"twotower: error: a file of {getattr(args, 'model_dir', 'the input')} lacks the entry {err}; "
              "is it complete and written by this version?", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, OSError, LookupError, ValueError, TypeError, RuntimeError, _SafetensorError) as err:
        # OSError: unreadable, compressed-but-corrupt or wrong-kind paths; LookupError: an unknown
        # encoding; SafetensorError: a truncated or corrupt weights file.
        print(f"twotower: error{_rank()}: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        # Frames of a failed read can hold a pyarrow reader whose worker threads, if only reaped at
        # interpreter shutdown next to torch's, abort the process (exit 134 instead of 2).
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
