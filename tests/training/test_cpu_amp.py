"""`train.cpu_amp`: bf16 autocast on the CPU trains through bfloat16 GEMMs to a float32 run's quality."""

from __future__ import annotations

import logging

import pytest
import torch

import twotower.training.hardware as hardware
from twotower.kernels import infonce_cpu
from twotower.model.model_dir import load_model_dir
from twotower.training.loop import fit

from .conftest import tiny_config


@pytest.mark.slow
def test_cpu_amp_trains_through_bfloat16_gemms_to_the_float32_runs_quality(tmp_path, monkeypatch):
    gemm_dtypes = []
    real = infonce_cpu.infonce_blocked

    def recording(q, k, **kwargs):
        gemm_dtypes.append(q.dtype)
        return real(q, k, **kwargs)

    monkeypatch.setattr("twotower.kernels.infonce.infonce_blocked", recording)
    results = {}
    for amp in (False, True):
        gemm_dtypes.clear()
        results[amp] = fit(tiny_config(epochs=6, cpu_amp=amp), tmp_path / str(amp))
        assert set(gemm_dtypes) == {torch.bfloat16 if amp else torch.float32}
    fp32, bf16 = results[False].valid.metrics["ndcg@10"], results[True].valid.metrics["ndcg@10"]
    assert bf16 > 1.5 * results[True].popularity_valid.metrics["ndcg@10"]
    assert bf16 == pytest.approx(fp32, rel=0.05)
    weights = [load_model_dir(tmp_path / str(amp) / "model").model.state_dict() for amp in (False, True)]
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_cpu_amp_on_a_cpu_without_bf16_arithmetic_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="twotower.training"):
        fit(tiny_config(epochs=1, cpu_amp=True), tmp_path)
    assert any("train.cpu_amp" in r.getMessage() and "no bf16" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="twotower.training"):
        fit(tiny_config(epochs=1, cpu_amp=True), tmp_path / "native")
    assert not any("train.cpu_amp" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("combine", ["gate", "concat"])
def test_cpu_amp_trains_history_pooling_towers_as_float32_does(tmp_path, combine):
    """The towers' layers run in bfloat16 under autocast and meet float32 tables (the gate's blend,
    the concatenation) and the other tower's float32 vectors: they train to the float32 run's
    validation score."""
    scores = []
    for amp in (False, True):
        config = tiny_config(epochs=2, cpu_amp=amp)
        config.model.user_history, config.model.history_combine = True, combine
        scores.append(fit(config, tmp_path / str(amp)).valid.metrics["ndcg@10"])
    assert scores[1] == pytest.approx(scores[0], rel=0.03)
