"""train.refit: after selection on validation, a second model trained on train + valid for the
selected number of epochs, on the selected run's learning-rate schedule, into OUT/refit."""

from __future__ import annotations

import dataclasses
import json

import pytest
from safetensors.numpy import load_file

from .conftest import tiny_config


class Stop(Exception):
    pass


def scripted_selection(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """Validation scores by epoch, so that the best epoch is known in advance."""
    calls = iter(scores)
    monkeypatch.setattr("twotower.training.loop._select", lambda result, metric: next(calls))


def weights(path) -> dict:
    return load_file(str(path / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_refit_trains_the_selected_epochs_on_train_plus_valid(tmp_path, monkeypatch) -> None:
    from twotower.training.loop import fit

    scripted_selection(monkeypatch, [0.1, 0.3, 0.2, 0.1])  # epoch 2 is the best of 4
    result = fit(tiny_config(epochs=4, patience=0, refit=True), tmp_path, echo=lambda line: None)
    assert result.best_epoch == 2 and result.refit is not None
    refit_epochs = [json.loads(line) for line in (tmp_path / "refit" / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in refit_epochs] == [1, 2]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["refit"]["epochs"] == 2 and results["refit"]["model_dir"] == "refit/model"
    refit_results = json.loads((tmp_path / "refit" / "results.json").read_text())
    assert refit_results["data"]["train"] == results["data"]["train"] + results["data"]["valid"]
    assert refit_results["data"]["valid"] == 0
    assert results["refit"]["test"]["metrics"] == result.refit.test.to_dict()["metrics"]
    assert not same_weights(weights(tmp_path / "model"), weights(tmp_path / "refit" / "model"))


@pytest.mark.slow  # two trainings: CI only
def test_refit_retraces_the_selected_runs_schedule(tmp_path, monkeypatch) -> None:
    """The refit stops after the best epoch of a 4-epoch cosine schedule: its weights are those of
    a 4-epoch run on train + valid at epoch 2, not of a 2-epoch schedule."""
    from twotower.data import with_valid_in_train
    from twotower.datasets import load_dataset
    from twotower.training.loop import fit, training_loss

    config = tiny_config(epochs=4, patience=0, refit=True, keep_checkpoints=4)
    scripted_selection(monkeypatch, [0.1, 0.3, 0.2, 0.1])
    fit(config, tmp_path / "run", echo=lambda line: None)

    dataset = load_dataset(config.data)
    merged = dataclasses.replace(config, loss=training_loss(config, dataset),
                                 train=dataclasses.replace(config.train, refit=False))

    def stop(record: dict) -> None:
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(merged, tmp_path / "long", dataset=with_valid_in_train(dataset), echo=lambda line: None, on_epoch=stop)
    at_two = weights(tmp_path / "long" / "checkpoints" / "epoch-0002")
    assert same_weights(weights(tmp_path / "run" / "refit" / "model"), at_two)

    short = dataclasses.replace(merged, train=dataclasses.replace(merged.train, epochs=2))
    fit(short, tmp_path / "short", dataset=with_valid_in_train(dataset), echo=lambda line: None)
    assert not same_weights(weights(tmp_path / "short" / "model"), at_two)  # the test can tell the schedules apart


@pytest.mark.slow  # two trainings: CI only
def test_a_refit_interrupted_midway_resumes_to_the_same_model(tmp_path, monkeypatch) -> None:
    import twotower.training.loop as train

    config = tiny_config(epochs=3, patience=0, refit=True)
    train.fit(config, tmp_path / "whole", echo=lambda line: None)

    lines = []
    real_line = train.epoch_line

    def interrupt_in_refit(record, *args):
        lines.append(record["epoch"])
        if len(lines) == 4:  # 3 selection epochs, then the refit's first
            raise Stop
        return real_line(record, *args)

    monkeypatch.setattr(train, "epoch_line", interrupt_in_refit)
    with pytest.raises(Stop):
        train.fit(config, tmp_path / "cut", echo=lambda line: None)
    assert not (tmp_path / "cut" / "refit" / "model").exists()
    monkeypatch.setattr(train, "epoch_line", real_line)
    said: list[str] = []
    result = train.fit(config, tmp_path / "cut", resume=True, echo=said.append)
    refit_lines = [line for line in said if line.startswith("refit epoch")]
    assert [line.split("/")[0] for line in refit_lines] == ["refit epoch 2", "refit epoch 3"]
    assert same_weights(weights(tmp_path / "cut" / "refit" / "model"), weights(tmp_path / "whole" / "refit" / "model"))
    assert result.refit is not None and result.refit.best_epoch == 3


def test_refit_needs_a_validation_split(tmp_path) -> None:
    from twotower.training.loop import fit

    config = tiny_config(refit=True)
    config.data.options = dataclasses.replace(config.data.options, ratios=[0.8, 0.2])
    with pytest.raises(ValueError, match="train.refit needs a validation split"):
        fit(config, tmp_path, echo=lambda line: None)


@pytest.mark.slow  # two trainings: CI only
def test_a_fresh_run_removes_an_earlier_runs_refit(tmp_path) -> None:
    from twotower.training.loop import fit

    fit(tiny_config(refit=True), tmp_path, echo=lambda line: None)
    assert (tmp_path / "refit" / "model").is_dir()
    fit(tiny_config(), tmp_path, echo=lambda line: None)
    assert not (tmp_path / "refit").exists()
    assert "refit" not in json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow  # two trainings: CI only
def test_a_finished_run_resumed_with_refit_adds_the_refit(tmp_path) -> None:
    from twotower.training.loop import fit

    fit(tiny_config(), tmp_path, echo=lambda line: None)
    said: list[str] = []
    result = fit(tiny_config(refit=True), tmp_path, resume=True, echo=said.append)
    assert not any(line.startswith("epoch ") for line in said)  # the selection run is not trained again
    assert result.refit is not None and (tmp_path / "refit" / "model").is_dir()
