"""Small, fast training settings shared by the trainer and CLI tests."""

from __future__ import annotations

import dataclasses

import pytest

from twotower.settings import TrainConfig


def tiny_config(**train: object) -> TrainConfig:
    """~6k interactions, 2 epochs of a small model: a few seconds on 2 cores."""
    config = TrainConfig()
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


@pytest.fixture
def tiny() -> TrainConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def cpu_loss_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on CPU uses the PyTorch InfoNCE, as it does for users; the Triton interpreter (which
    the kernel tests turn on) would only make these tests slow."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
