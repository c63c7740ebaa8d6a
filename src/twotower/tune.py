"""`twotower tune`: hyper-parameter search on validation with Optuna (TPE sampler, median pruner).

A study lives in its run directory:

    RUN_DIR/study.db        the Optuna study (SQLite): every trial, its settings, its per-epoch values
    RUN_DIR/trials/NNNN/    trial NNNN, a `twotower.training.loop.fit` run (metrics.jsonl; the best trial's model/)
    RUN_DIR/best.toml       the best trial's complete configuration, for `twotower train --config`
    RUN_DIR/trials.csv      one row per trial, RUN_DIR/trials.png the values over the trials

Each trial trains the base configuration with the sampled settings (`twotower.settings.tune`) and
the base seeds, so `twotower train --config RUN_DIR/best.toml` trains the best trial again. After
every evaluated epoch the trial reports its best validation value so far; the median pruner stops
a trial that trails the completed ones at that epoch. Running the same command again continues an
interrupted study: finished trials stay, a trial that was running when the process died is marked
failed and its settings run again, and `trials` counts the finished ones. One process owns a run
directory at a time (a lock file), which is what makes a trial still marked running a dead one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from twotower.atomic import write_text_atomic
from twotower.data import SplitDataset
from twotower.datasets import fingerprint, load_dataset
from twotower.settings import TrainConfig
from twotower.settings.tune import Param, TuneConfig, trial_config
from twotower.training.loop import TrainingDiverged, fit
from twotower.training.resume_rules import semantic_settings

__all__ = ["TrialRow", "TuneResult", "format_trials", "tune"]

STUDY_NAME = "twotower-tune"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_HEAVY = ("checkpoints", "best")  # what a finished trial no longer needs (its model/ is kept apart)


@dataclass
class TrialRow:
    """One trial as reported: `value` is the final validation value of a completed trial, the best
    one reached before being stopped of a pruned one, None for a failed one."""

    number: int
    state: str
    value: float | None
    epochs: int
    seconds: float | None
    params: dict[str, Any]
    note: str = ""


@dataclass
class TuneResult:
    """What a study produced: its trials (best first) and, once a trial completed, the best one."""

    rows: list[TrialRow]
    best: TrialRow | None
    best_toml: Path | None
    best_model: Path | None
    metric: str


def tune(base: TrainConfig, settings: TuneConfig, run_dir: str | Path, *,
         report: Callable[[str], None] | None = None) -> TuneResult:
    """Runs (or continues) the study in `run_dir` until it holds `settings.trials` finished trials or
    `settings.timeout` seconds have passed, then writes best.toml, trials.csv and trials.png.

    Args:
        base: the configuration every trial starts from (validated here).
        settings: the search (`twotower.settings.tune.read_tune`).
        run_dir: the study's directory (created); the same directory continues the same study.
        report: called with one line per finished trial (e.g. `print`).

    Raises:
        ValueError: settings that cannot train, data without a validation split, a directory in use
            by another process, or a study there that was started with other settings or data.
    """
    run_dir = Path(run_dir)
    base.validate()
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"the output directory {run_dir} is a file; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    with _owned(run_dir):
        dataset = load_dataset(base.data)
        if len(dataset.valid.users) == 0:
            raise ValueError("twotower tune compares trials on validation: the data has no validation split")
        study = _open_study(run_dir, base, settings, fingerprint(dataset))
        _requeue_interrupted(study, run_dir, report)
        try:
            _run_trials(study, base, settings, dataset, run_dir, report)
        except KeyboardInterrupt:  # what the finished trials found is still worth having
            _tidy(study, run_dir, settings.keep_models)
            _write_outputs(study, base, settings, run_dir)
            raise
        _tidy(study, run_dir, settings.keep_models)
        return _write_outputs(study, base, settings, run_dir)


def _run_trials(study: optuna.Study, base: TrainConfig, settings: TuneConfig, dataset: SplitDataset, run_dir: Path,
                report: Callable[[str], None] | None) -> None:
    """Runs trials until the study holds `settings.trials` finished ones or the timeout has passed."""
    remaining = settings.trials - _finished_count(study)
    if remaining <= 0:
        return

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        _tidy(study, run_dir, settings.keep_models)
        if report is not None:
            report(format_trial(_row(trial), settings.metric))

    study.optimize(_objective(base, settings, dataset, run_dir), n_trials=remaining, timeout=settings.timeout,
                   callbacks=[after_trial], catch=(TrainingDiverged, ValueError))


def _objective(
    base: TrainConfig, settings: TuneConfig, dataset: SplitDataset, run_dir: Path
) -> Callable[[optuna.Trial], float]:
    """One trial: sample the space, train in trials/NNNN, report each evaluated epoch, prune."""
    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, param) for name, param in settings.space.items()}
        try:
            config = trial_config(base, params, settings.metric)
            # A trial is judged on validation: train.refit would only double its cost (refit the winner).
            quiet = dataclasses.replace(config, train=dataclasses.replace(config.train, progress=False, refit=False))
            result = fit(
                quiet, _trial_dir(run_dir, trial.number), dataset=dataset, on_epoch=_reporter(trial, settings.metric)
            )
        except (TrainingDiverged, ValueError) as err:  # the settings' fault: the trial counts as failed
            trial.set_user_attr("error", str(err).splitlines()[0])
            raise
        trial.set_user_attr("epochs", len(result.history))
        return float(result.valid.metrics[settings.metric])

    return objective


def _reporter(trial: optuna.Trial, metric: str) -> Callable[[dict[str, Any]], None]:
    """The `fit` hook of a trial. It reports the best value so far, not the epoch's own: the trial's
    result is its best epoch, and a pruning decision should not turn on one noisy epoch."""
    best = -math.inf

    def on_epoch(record: dict[str, Any]) -> None:
        nonlocal best
        if "valid" not in record:
            return
        best = max(best, float(record["valid"][metric]))
        trial.report(best, record["epoch"])
        trial.set_user_attr("epochs", record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

    return on_epoch


def _suggest(trial: optuna.Trial, param: Param) -> Any:
    if param.choices is not None:
        return trial.suggest_categorical(param.name, list(param.choices))
    if param.integer:
        return trial.suggest_int(param.name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)


# -- the study and its directory --------------------------------------------------------------------
@contextmanager
def _owned(run_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on `run_dir` (released by the OS if the process dies)."""
    import fcntl

    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{run_dir} is in use by another twotower tune; wait for it or choose another --out"
            ) from None
        yield


def _open_study(run_dir: Path, base: TrainConfig, settings: TuneConfig, data_fingerprint: str) -> optuna.Study:
    """The study in run_dir/study.db, created on the first run; refused if it searched something else."""
    storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True)
    identity = json.dumps({"base": semantic_settings(json.loads(json.dumps(base.to_dict()))), "data": data_fingerprint,
                           "metric": settings.metric,
                           "space": {name: p.as_toml() for name, p in settings.space.items()}}, sort_keys=True)
    if "identity" not in study.user_attrs:
        study.set_user_attr("identity", identity)
    elif study.user_attrs["identity"] != identity:
        raise ValueError(f"{run_dir / 'study.db'} holds a study of other settings, data or search space; continue it "
                         "with the same config, or choose another --out")
    # Seeded by the trials already there: a resumed study must not draw its first trials' settings again.
    study.sampler = optuna.samplers.TPESampler(
        seed=settings.seed + len(study.trials), n_startup_trials=settings.startup_trials
    )
    study.pruner = (optuna.pruners.NopPruner() if settings.pruner == "none" else optuna.pruners.MedianPruner(
        n_startup_trials=settings.prune_startup_trials, n_warmup_steps=settings.prune_from_epoch))
    return study


def _requeue_interrupted(study: optuna.Study, run_dir: Path, report: Callable[[str], None] | None) -> None:
    """A trial still RUNNING belongs to a process that died (this one holds the lock), and a failed
    trial without a recorded error was stopped by Ctrl-C or a crash rather than by its settings.
    Each such trial is marked failed, its partial directory removed and its settings queued to run
    again, once. (Optuna's heartbeat would fail a dead trial only after a grace period.)"""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for trial in trials:
        if _interrupted(trial) and trial.number not in retried:
            shutil.rmtree(_trial_dir(run_dir, trial.number), ignore_errors=True)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            if report is not None:
                report(f"trial {trial.number} was interrupted: its settings run again")


def _interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs


def _finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=_FINISHED) if not _interrupted(t))


def _trial_dir(run_dir: Path, number: int) -> Path:
    return run_dir / "trials" / f"{number:04d}"


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _tidy(study: optuna.Study, run_dir: Path, keep_models: str) -> None:
    """Disk economy (a trial on a large data set holds hundreds of MB): finished trials lose their
    checkpoints; only the best trial (or, with keep_models "all", every completed one) keeps its model."""
    best = _best_trial(study)
    for trial in study.get_trials(deepcopy=False, states=_FINISHED):
        directory = _trial_dir(run_dir, trial.number)
        keep_model = trial.state == TrialState.COMPLETE and (keep_models == "all" or trial.number == best.number)
        for name in _HEAVY if keep_model else (*_HEAVY, "model"):
            shutil.rmtree(directory / name, ignore_errors=True)


# -- reporting --------------------------------------------------------------------------------------
def _row(trial: FrozenTrial) -> TrialRow:
    if trial.state == TrialState.COMPLETE:
        value = trial.value
    else:  # pruned: the best value it reached; failed: none
        value = (max(trial.intermediate_values.values())
                 if trial.state == TrialState.PRUNED and trial.intermediate_values else None)
    seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
               if trial.datetime_complete and trial.datetime_start else None)
    attrs = trial.user_attrs
    note = "interrupted" if _interrupted(trial) else attrs.get("error", "")
    if "retry_of" in attrs:
        note = f"rerun of trial {attrs['retry_of']}" + (f"; {note}" if note else "")
    return TrialRow(
        trial.number, trial.state.name, value, int(attrs.get("epochs", 0)), seconds, dict(trial.params), note
    )


def _ranked(rows: list[TrialRow]) -> list[TrialRow]:
    """Completed trials best first, then pruned ones by the value they reached, then failed ones."""
    order = {"COMPLETE": 0, "PRUNED": 1}
    return sorted(
        rows, key=lambda r: (order.get(r.state, 2), -(r.value if r.value is not None else -math.inf), r.number)
    )


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_trial(row: TrialRow, metric: str) -> str:
    """One progress line: number, state, value, epochs, seconds, the sampled settings."""
    value = f"{row.value:.4f}" if row.value is not None else "-"
    seconds = f"{row.seconds:.1f} s" if row.seconds is not None else "-"
    params = " ".join(f"{k}={_value(v)}" for k, v in row.params.items())
    note = f"  ({row.note})" if row.note else ""
    return (f"trial {row.number:>4} {row.state:<8} {metric} {value}  epochs {row.epochs:>3}  {seconds:>8}  "
            f"{params}{note}")


def format_trials(rows: list[TrialRow], metric: str) -> str:
    """The table of trials, best first, one column per searched setting."""
    names = list(dict.fromkeys(name for row in rows for name in row.params))
    widths = [max(len(n), 10) for n in names]
    header = f"{'trial':>5}  {'state':<8}  {metric:>10}  {'epochs':>6}  {'seconds':>8}  " + "  ".join(
        f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
    lines = [header]
    for row in _ranked(rows):
        value = f"{row.value:.4f}" if row.value is not None else "-"
        seconds = f"{row.seconds:.1f}" if row.seconds is not None else "-"
        cells = "  ".join(f"{_value(row.params.get(n, '')):>{w}}" for n, w in zip(names, widths, strict=True))
        lines.append(f"{row.number:>5}  {row.state:<8}  {value:>10}  {row.epochs:>6}  {seconds:>8}  {cells}")
    return "\n".join(lines)


def _csv(rows: list[TrialRow]) -> str:
    names = list(dict.fromkeys(name for row in rows for name in row.params))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "state", "value", "epochs", "seconds", *names, "note"])
    for row in _ranked(rows):
        writer.writerow([row.number, row.state, "" if row.value is None else repr(row.value), row.epochs,
                         "" if row.seconds is None else f"{row.seconds:.2f}", *(row.params.get(n, "") for n in names),
                         row.note])
    return out.getvalue()


def _write_outputs(study: optuna.Study, base: TrainConfig, settings: TuneConfig, run_dir: Path) -> TuneResult:
    """trials.csv, trials.png and best.toml (once a trial completed), each written atomically."""
    from twotower.plots import plot_trials

    rows = [_row(t) for t in study.get_trials(deepcopy=False) if t.state in _FINISHED]
    write_text_atomic(run_dir / "trials.csv", _csv(rows))
    plot_trials([(r.number, r.state, r.value) for r in rows], run_dir / "trials.png", metric=settings.metric)
    best = _best_trial(study)
    if best is None:
        return TuneResult(_ranked(rows), None, None, None, settings.metric)
    config = trial_config(base, best.params, settings.metric)
    config.data = config.data.resolved(Path.cwd())  # the file's paths are read relative to run_dir
    header = (f"# twotower tune: trial {best.number} of {run_dir}, valid {settings.metric} {best.value:.6f}, "
              f"the best of {len(rows)} finished trials.\n"
              f"# Train it again: twotower train --config {run_dir / 'best.toml'}\n\n")
    best_toml = write_text_atomic(run_dir / "best.toml", header + config.to_toml())
    best_row = next(r for r in rows if r.number == best.number)
    return TuneResult(_ranked(rows), best_row, best_toml, _trial_dir(run_dir, best.number) / "model", settings.metric)
