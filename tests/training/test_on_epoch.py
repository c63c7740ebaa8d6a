"""`fit(on_epoch=...)`: the hook sees every epoch's logged record, and an exception from it stops the
run after a complete epoch, leaving a directory that resumes to the uninterrupted result."""

from __future__ import annotations

import json

import pytest

from twotower.training.checkpoint import latest_checkpoint
from twotower.training.loop import fit

from .conftest import tiny_config


class Stop(Exception):
    pass


def test_on_epoch_sees_each_logged_record(tmp_path):
    seen = []
    result = fit(tiny_config(epochs=3), tmp_path, on_epoch=seen.append)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert seen == logged == result.history
    assert all("ndcg@10" in r["valid"] for r in seen)


@pytest.mark.slow  # two trainings: CI only
def test_an_exception_from_on_epoch_stops_cleanly_and_the_run_resumes(tmp_path):
    straight = fit(tiny_config(epochs=3), tmp_path / "straight")

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Stop

    stopped = tmp_path / "stopped"
    with pytest.raises(Stop):
        fit(tiny_config(epochs=3), stopped, on_epoch=stop_after_two)
    assert latest_checkpoint(stopped / "checkpoints").name == "epoch-0002"  # the epoch it stopped at is saved
    assert len((stopped / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (stopped / "model").exists()
    resumed = fit(tiny_config(epochs=3), stopped, resume=True)
    assert resumed.valid.metrics == pytest.approx(straight.valid.metrics, rel=1e-6)
    assert resumed.best_epoch == straight.best_epoch
