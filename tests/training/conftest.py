"""Small, fast training settings shared by the trainer and CLI tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from twotower.settings import TrainConfig


def tiny_config(**train: object) -> TrainConfig:
    """~6k interactions, 2 epochs of a small model: a few seconds on 2 cores. The towers alone (the
    graph filter's blend, on by default, has its own tests: test_graph_blend.py)."""
    config = TrainConfig()
    config.model.graph_filter = False
    config.data.synthetic_users = 300
    config.data.synthetic_items = 200
    config.data.synthetic_interactions_per_user = 20
    config.model.embedding_dim = 16
    config.batches = dataclasses.replace(config.batches, batch_size=256, num_shared_negatives=128, prefetch=2)
    config.train.epochs = 2
    config.train.progress = False
    config.train.num_threads = 1
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def straight_and_resumed(config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """(an uninterrupted run, a run stopped at batch 3 of epoch 3 and resumed) of `config`, which
    must train 3 epochs with a checkpoint each: the stop stands for a kill after epoch 2's checkpoint."""
    import twotower.training.step as step_module
    from twotower.training.loop import fit

    straight = fit(config, tmp_path / "straight")
    real = step_module.batch_loss

    def interrupted(model, loss_fn, batch, device, known=None):  # noqa: ANN001, ANN202 - batch_loss's signature
        if (batch.epoch, batch.index) == (2, 3):
            raise KeyboardInterrupt
        return real(model, loss_fn, batch, device, known)

    monkeypatch.setattr(step_module, "batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "resumed")
    monkeypatch.setattr(step_module, "batch_loss", real)
    return straight, fit(config, tmp_path / "resumed", resume=True)


@pytest.fixture
def tiny() -> TrainConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def cpu_loss_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on CPU uses the PyTorch InfoNCE, as it does for users; the Triton interpreter (which
    the kernel tests turn on) would only make these tests slow."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
