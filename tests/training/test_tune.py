"""`twotower tune` on a tiny data set: trials run and are reported, pruning stops bad trials, an
interrupted study (Ctrl-C or SIGKILL) resumes without re-running finished trials, and best.toml
trains the best trial again."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

import twotower.tune as tune_module  # noqa: E402
from twotower.cli import main  # noqa: E402
from twotower.settings import TrainConfig  # noqa: E402
from twotower.settings.tune import read_tune  # noqa: E402
from twotower.tune import STUDY_NAME, tune  # noqa: E402

BASE = """
[data]
synthetic_users = 300
synthetic_items = 200
synthetic_interactions_per_user = 20
[model]
embedding_dim = 16
[batches]
batch_size = 256
num_shared_negatives = 128
prefetch = 2
[train]
epochs = 3
num_threads = 1
progress = false
"""
SPACE = """
[tune.space]
"optim.lr" = { low = 1e-3, high = 3e-2, log = true }
"loss.temperature" = { low = 0.05, high = 0.5, log = true }
"model.embedding_dim" = { choices = [8, 16] }
"""


def write_config(tmp_path: Path, tune_table: str, base: str = BASE) -> Path:
    path = tmp_path / "tune.toml"
    path.write_text(base + tune_table)
    return path


def load(path: Path) -> tuple[TrainConfig, object]:
    base = TrainConfig.from_toml(path)
    return base, read_tune(path, base)


def study_of(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{run_dir / 'study.db'}")


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # a whole study: CI only
def test_a_study_reports_its_trials_and_best_toml_trains_the_best_trial_again(tmp_path, capsys):
    config = write_config(tmp_path, "[tune]\ntrials = 4\n" + SPACE)
    run = tmp_path / "run"
    assert main(["tune", "--config", str(config), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if re.match(r"trial +\d+ ", line)]
    assert len(progress) == 4 and all("COMPLETE" in line and "optim.lr=" in line for line in progress), out
    rows = csv_rows(run)
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    best = max(rows, key=lambda r: float(r["value"]))
    assert rows[0] == best  # the table is sorted, best first
    assert f"best: trial {best['trial']}, valid ndcg@10 {float(best['value']):.4f}" in out
    assert (run / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    written = tomllib.loads((run / "best.toml").read_text())
    assert set(written) == {"data", "model", "loss", "batches", "optim", "train", "eval"}  # complete, no [tune]
    assert written["optim"]["lr"] == float(best["optim.lr"])
    assert written["loss"]["temperature"] == float(best["loss.temperature"])
    assert written["model"]["embedding_dim"] == int(best["model.embedding_dim"])
    assert written["batches"]["num_shared_negatives"] == 128  # the base settings carry over

    for number in range(4):  # disk economy: no checkpoints, a model for the best trial only
        trial = run / "trials" / f"{number:04d}"
        assert (trial / "metrics.jsonl").is_file()
        assert not (trial / "checkpoints").exists() and not (trial / "best").exists()
        assert (trial / "model").is_dir() == (number == int(best["trial"]))

    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "best.toml"), "--out", str(again), "--quiet"]) == 0
    retrained = json.loads((again / "results.json").read_text())["valid"]["metrics"]["ndcg@10"]
    assert retrained == pytest.approx(float(best["value"]), rel=1e-6)


@pytest.mark.slow  # a whole study: CI only
def test_trials_that_trail_the_median_are_pruned(tmp_path):
    """lr 1e-6 leaves the model at its initialisation; once a trial with a working lr completed, a
    1e-6 trial is below the median after its first epoch and must stop there."""
    config = write_config(tmp_path, """
[tune]
trials = 6
startup_trials = 6
prune_startup_trials = 1
prune_from_epoch = 1
[tune.space]
"optim.lr" = { choices = [1e-6, 3e-2] }
""")
    run = tmp_path / "run"
    result = tune(*load(config), run)
    states = {r.number: (r.state, r.params["optim.lr"], r.epochs) for r in result.rows}
    first_good = min(n for n, (state, lr, _) in states.items() if lr == 3e-2 and state == "COMPLETE")
    late_bad = [n for n, (_, lr, _) in states.items() if lr == 1e-6 and n > first_good]
    assert late_bad, f"the sampler drew no bad trial after a good one: {states}"
    for number in late_bad:
        assert states[number] == ("PRUNED", 1e-6, 1), states
        assert not (run / "trials" / f"{number:04d}" / "model").exists()
    assert all(state == "COMPLETE" for state, lr, _ in states.values() if lr == 3e-2)
    pruned = [t for t in study_of(run).trials if t.state == optuna.trial.TrialState.PRUNED]
    assert [sorted(t.intermediate_values) for t in pruned] == [[1]] * len(late_bad)


@pytest.mark.slow  # a whole study: CI only
def test_a_study_continues_where_it_stopped(tmp_path):
    # One epoch a trial is enough to tell a resumed trial from a rerun one.
    one_epoch = BASE.replace("epochs = 3", "epochs = 1")
    config = write_config(tmp_path, "[tune]\ntrials = 2\n" + SPACE, base=one_epoch)
    base, settings = load(config)
    run = tmp_path / "run"
    tune(base, settings, run)
    first = {t.number: (t.datetime_start, t.params) for t in study_of(run).trials}
    stamps = {n: (run / "trials" / f"{n:04d}" / "metrics.jsonl").stat().st_mtime_ns for n in first}
    result = tune(base, dataclasses.replace(settings, trials=4), run)
    trials = study_of(run).trials
    assert [t.number for t in trials] == [0, 1, 2, 3] and len(result.rows) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for number, (started, params) in first.items():  # not run again
        assert (trials[number].datetime_start, trials[number].params) == (started, params)
        assert (run / "trials" / f"{number:04d}" / "metrics.jsonl").stat().st_mtime_ns == stamps[number]
    # The resumed sampler must not replay the first trials' draws.
    assert {t.params["optim.lr"] for t in trials[2:]}.isdisjoint(p["optim.lr"] for _, p in first.values())
    assert len(tune(base, dataclasses.replace(settings, trials=4), run).rows) == 4  # already complete: nothing runs
    other = write_config(tmp_path, "[tune]\ntrials = 4\n" + SPACE.replace("0.05", "0.06"), base=one_epoch)
    with pytest.raises(ValueError, match="holds a study of other settings"):
        tune(*load(other), run)


@pytest.mark.slow  # a whole study: CI only
def test_a_trial_interrupted_by_ctrl_c_runs_again_on_resume(tmp_path, monkeypatch):
    config = write_config(tmp_path, "[tune]\ntrials = 3\n" + SPACE)
    base, settings = load(config)
    run = tmp_path / "run"
    real_fit = tune_module.fit

    def interrupted_fit(config, out_dir, **kwargs):
        if Path(out_dir).name == "0001":
            def stop(record):
                raise KeyboardInterrupt
            kwargs["on_epoch"] = stop
        return real_fit(config, out_dir, **kwargs)

    monkeypatch.setattr(tune_module, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        tune(base, settings, run)
    assert [(r["trial"], r["state"]) for r in csv_rows(run)] == [  # written on the way out
        ("0", "COMPLETE"), ("1", "FAIL")
    ]
    assert (run / "best.toml").is_file()
    monkeypatch.setattr(tune_module, "fit", real_fit)
    lines: list[str] = []
    result = tune(base, settings, run, report=lines.append)
    assert lines[0] == "trial 1 was interrupted: its settings run again"
    trials = study_of(run).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    assert not (run / "trials" / "0001").exists()
    notes = {r.number: r.note for r in result.rows}
    assert (notes[1], notes[2]) == ("interrupted", "rerun of trial 1")


def test_trials_whose_settings_cannot_train_are_failed_and_counted(tmp_path, capsys):
    config = write_config(tmp_path,
                          "[tune]\ntrials = 2\n[tune.space]\n\"batches.batch_size\" = { choices = [100000] }\n",
                          base=BASE.replace("prefetch = 2", "prefetch = 2\ndrop_last = true"))
    run = tmp_path / "run"
    assert main(["tune", "--config", str(config), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no trial completed yet" in out
    rows = csv_rows(run)
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]
    assert all("leaves no batch" in r["note"] for r in rows)
    assert not (run / "best.toml").exists()


@pytest.mark.slow  # a study through the CLI: CI only
def test_no_trial_starts_after_the_timeout(tmp_path):
    config = write_config(tmp_path, "[tune]\ntrials = 5\n" + SPACE)
    run = tmp_path / "run"
    assert main(["tune", "--config", str(config), "--out", str(run), "--timeout", "0.01", "--train.epochs", "1"]) == 0
    assert len(csv_rows(run)) == 1  # the first trial starts, none after it


def test_a_run_directory_in_use_is_refused(tmp_path):
    base, settings = load(write_config(tmp_path, "[tune]\ntrials = 1\n" + SPACE))
    run = tmp_path / "run"
    run.mkdir()
    with tune_module._owned(run), pytest.raises(ValueError, match="in use by another twotower tune"):
        tune(base, settings, run)


def test_without_optuna_tune_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(["tune", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("twotower: error: twotower tune needs Optuna: pip install 'twotower[tune]' "
                           "(or pip install optuna)")


def test_help_does_not_import_optuna():
    code = ("import sys\nfrom twotower.cli import main\n"
            "for argv in (['--help'], ['tune', '--help'], ['train', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('optuna' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_a_sigkilled_study_resumes_and_reruns_the_trial_it_was_running(tmp_path):
    """The process is killed by SIGKILL while trial 1 trains (after its first epoch is logged): the
    study is left with trial 1 RUNNING. The same command again marks it failed, runs its settings
    again, and does not run trial 0 again."""
    slower = BASE.replace("synthetic_users = 300", "synthetic_users = 1500").replace(
        "batch_size = 256", "batch_size = 128"
    )
    config = write_config(
        tmp_path, "[tune]\ntrials = 3\npruner = \"none\"\n" + SPACE, base=slower.replace("epochs = 3", "epochs = 4")
    )
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "twotower.cli", "tune", "--config", str(config), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # progress decides when to kill, not the clock
            if line.startswith("trial    0 "):
                break
        else:
            pytest.fail(f"no trial finished: {proc.stderr.read()}")
        assert "COMPLETE" in line, line
        log = run / "trials" / "0001" / "metrics.jsonl"
        while not (log.is_file() and log.read_text().strip()):
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = study_of(run).trials
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"], "the kill came too late to test resuming"
    assert main(["tune", "--config", str(config), "--out", str(run)]) == 0
    trials = study_of(run).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].datetime_start == killed[0].datetime_start
    assert trials[0].datetime_complete == killed[0].datetime_complete
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    assert not (run / "trials" / "0001").exists()
    assert {r["trial"]: r["note"] for r in csv_rows(run)} == {
        "0": "", "1": "interrupted", "2": "rerun of trial 1", "3": ""
    }
