"""Checkpoints carry every RNG a resumed run draws from: the CPU generator always, and the CUDA
generators (dropout on a GPU draws from them) when they were in use. The CUDA part is checked here
with torch.cuda's RNG functions stood in for, so that it runs on machines without a GPU; the real
thing ran in benchmarks/gpu/check_cuda.sh's resume-after-SIGKILL test."""

from __future__ import annotations

import pytest
import torch

from twotower.datasets import load_dataset
from twotower.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from twotower.training.loop import build_model

from .conftest import tiny_config


class FakeCuda:
    """Two 'devices' whose RNG states are plain byte tensors; records what was restored."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, saved: list[torch.Tensor], devices: int) -> None:
        self.restored: list[torch.Tensor] | None = None
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in saved])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.restore)

    def restore(self, states: list[torch.Tensor]) -> None:
        self.restored = [s.clone() for s in states]


@pytest.fixture
def model():
    config = tiny_config()
    return build_model(config, load_dataset(config.data))


def cuda_states() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(0, 256, (816,), dtype=torch.uint8, generator=generator) for _ in range(2)]


@pytest.mark.parametrize("devices_at_resume, restored", [(2, True), (1, False)])
def test_cuda_rng_states_are_saved_and_restored_on_as_many_devices(tmp_path, monkeypatch, model, devices_at_resume,
                                                                    restored):
    states = cuda_states()
    FakeCuda(monkeypatch, states, devices=2)
    torch.manual_seed(11)
    cpu_state = torch.get_rng_state()
    save_checkpoint(tmp_path, "epoch-0001", model=model, config={}, trainer_state={"epoch": 0})
    torch.rand(100)  # moves the CPU generator on

    fake = FakeCuda(monkeypatch, [torch.zeros(816, dtype=torch.uint8)] * 2, devices=devices_at_resume)
    load_checkpoint(latest_checkpoint(tmp_path), model=model)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    if restored:
        assert fake.restored is not None and len(fake.restored) == 2
        for got, want in zip(fake.restored, states, strict=True):
            assert torch.equal(got, want)
    else:  # resumed on another machine: its CUDA draws start afresh instead of failing
        assert fake.restored is None


def test_no_cuda_state_is_written_when_cuda_was_never_used(tmp_path, monkeypatch, model):
    fake = FakeCuda(monkeypatch, cuda_states(), devices=2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    save_checkpoint(tmp_path, "epoch-0001", model=model, config={}, trainer_state={"epoch": 0})
    load_checkpoint(latest_checkpoint(tmp_path), model=model)
    assert fake.restored is None
