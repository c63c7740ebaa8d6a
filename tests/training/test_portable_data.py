"""A saved model names its data by absolute path: `twotower evaluate MODEL` works from any working
directory; when the data moved, the error says so and names --data, and --data with the training
file's new place finds its validation and test files next to it."""

from __future__ import annotations

import re
import shutil

import pytest

from twotower.cli import main

from .test_cli import TINY, _given_split


def train_from(folder, capsys):
    paths = _given_split(folder)
    rel = {name: path.relative_to(folder) for name, path in paths.items()}
    assert main(["train", "--out", "run", "--data.path", str(rel["train"]), "--data.valid", str(rel["valid"]),
                 "--data.test", str(rel["test"]), "--quiet", "--model.embedding_dim", "8", *TINY[9:13],
                 "--train.epochs", "1", "--train.num_threads", "1"]) == 0
    capsys.readouterr()


def test_evaluate_finds_the_data_from_another_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    train_from(tmp_path / "work", capsys)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "work/run/model", "--quiet"]) == 0
    assert re.search(r"model( \+ graph filter)?, test", capsys.readouterr().out)


@pytest.mark.slow  # trainings through the CLI: CI only
def test_moved_data_is_named_with_the_hint_and_found_again_with_data(tmp_path, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    train_from(tmp_path / "work", capsys)
    (tmp_path / "moved").mkdir()
    for name in ("train.csv", "valid.csv", "test.csv"):
        shutil.move(tmp_path / "work" / name, tmp_path / "moved" / name)
    assert main(["evaluate", "run/model", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.csv does not exist" in err and "pass its training file with --data FILE" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["evaluate", "run/model", "--quiet", "--data", str(tmp_path / "moved" / "train.csv")]) == 0
    assert re.search(r"model( \+ graph filter)?, test", capsys.readouterr().out)
