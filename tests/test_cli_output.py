"""What the CLI writes when its output goes to a file or a pipe (here: pytest's capture, not a
terminal): lines, not progress bars redrawn into it."""

from __future__ import annotations

import re
import sys

import pytest


@pytest.fixture(autouse=True)
def cpu_loss_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PyTorch InfoNCE, as users get on a CPU (the Triton interpreter would only be slow)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.slow  # a training and an evaluation through the CLI: CI only
def test_train_and_evaluate_into_files_write_lines_and_no_bars(tmp_path, capsys) -> None:
    from twotower.cli import main

    assert not sys.stderr.isatty()
    out = str(tmp_path / "run")
    assert main(["train", "--data.synthetic_users", "200", "--data.synthetic_items", "150", "--train.epochs", "2",
                 "--model.embedding_dim", "8", "--train.num_threads", "1", "--out", out]) == 0
    train = capsys.readouterr()
    assert "\r" not in train.err and "it/s" not in train.err
    epoch_lines = [line for line in train.out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]

    assert main(["evaluate", f"{out}/model"]) == 0
    evaluate = capsys.readouterr()
    assert evaluate.err == "" and re.search(r"^model( \+ graph filter)?, test", evaluate.out, re.MULTILINE)
