"""--resume goes on from the newest intact checkpoint: a damaged newest one (truncated weights, a
missing trainer.json) is skipped with a notice naming it and why, and an empty LATEST hides nothing."""

from __future__ import annotations

import json

import pytest

from twotower.training.checkpoint import resumable_checkpoint, safetensors_problem

from .conftest import tiny_config


class Stop(Exception):
    pass


def interrupted_run(tmp_path, epochs: int = 4, stop_after: int = 3):
    from twotower.training.loop import fit

    config = tiny_config(epochs=epochs, keep_checkpoints=3)

    def stop(record: dict) -> None:
        if record["epoch"] == stop_after:
            raise Stop

    with pytest.raises(Stop):
        fit(config, tmp_path, echo=lambda line: None, on_epoch=stop)
    return config


def truncate(file, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_newest_checkpoint_is_skipped_and_named(tmp_path) -> None:
    from twotower.training.loop import fit

    config = interrupted_run(tmp_path)
    root = tmp_path / "checkpoints"
    truncate(root / "epoch-0003" / "model.safetensors")
    (root / "LATEST").write_text("")  # an emptied pointer must not hide epoch-0002
    lines: list[str] = []
    fit(config, tmp_path, resume=True, echo=lines.append)
    assert any(line.startswith("notice: --resume skips epoch-0003: model.safetensors is truncated") for line in lines)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]  # epoch 3 trained again from epoch-0002


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path) -> None:
    from twotower.training.loop import fit

    config = interrupted_run(tmp_path, epochs=3, stop_after=2)
    root = tmp_path / "checkpoints"
    for path in root.glob("epoch-*"):
        (path / "trainer.json").unlink()
    with pytest.raises(ValueError, match=r"no intact checkpoint in .*checkpoints \(2 damaged: see above\)"):
        fit(config, tmp_path, resume=True, echo=lambda line: None)
    found, skipped = resumable_checkpoint(root)
    assert found is None and [(p.name, why) for p, why in skipped] == [
        ("epoch-0002", "trainer.json is missing"), ("epoch-0001", "trainer.json is missing")]


@pytest.mark.parametrize("cut", [0.0, 0.001, 0.5, 0.999])
def test_a_safetensors_file_cut_anywhere_is_found(tmp_path, cut: float) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    file = tmp_path / "w.safetensors"
    save_file({"a": np.random.default_rng().normal(size=(50, 8)).astype(np.float32), "b": np.arange(7)}, str(file))
    assert safetensors_problem(file) is None
    truncate(file, cut)
    assert "truncated" in (safetensors_problem(file) or "") or safetensors_problem(file) == "has a corrupt header"


@pytest.mark.slow  # two trainings through the CLI: CI only
def test_resume_with_the_out_directory_alone_takes_the_stored_settings(tmp_path, capsys) -> None:
    from twotower.cli import main

    interrupted_run(tmp_path)  # tiny_config's settings, far from the defaults
    assert main(["train", "--out", str(tmp_path), "--resume", "--quiet"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    interrupted_run(tmp_path / "again")
    assert main(["train", "--out", str(tmp_path / "again"), "--resume", "--quiet", "--optim.lr", "0.1"]) == 2
    assert "other settings: optim.lr: 0.005 -> 0.1" in capsys.readouterr().err  # a flag still overrides, named


def test_a_config_json_that_is_no_object_marks_the_checkpoint_damaged(tmp_path) -> None:
    interrupted_run(tmp_path, epochs=3, stop_after=2)
    (tmp_path / "checkpoints" / "epoch-0002" / "config.json").write_text("[1, 2]")
    found, skipped = resumable_checkpoint(tmp_path / "checkpoints")
    assert found.name == "epoch-0001" and [(p.name, why) for p, why in skipped] == [
        ("epoch-0002", "config.json is not a JSON object")]


def test_a_checkpoint_whose_optimizer_state_changed_is_skipped_and_named(tmp_path) -> None:
    """A well-formed file with other bytes (its header intact): only the manifest's checksum tells."""
    from twotower.training import fit

    config = interrupted_run(tmp_path)
    optimizer = tmp_path / "checkpoints" / "epoch-0003" / "optimizer.safetensors"
    data = bytearray(optimizer.read_bytes())
    data[-5] ^= 0x40
    optimizer.write_bytes(bytes(data))
    assert safetensors_problem(optimizer) is None
    lines: list[str] = []
    fit(config, tmp_path, resume=True, echo=lines.append)
    assert any(line.startswith("notice: --resume skips epoch-0003: optimizer.safetensors does not match its "
                               "SHA-256 in manifest.json") for line in lines)


def test_a_finished_run_keeps_a_checkpoint_that_verifies_without_its_optimizer_state(tmp_path) -> None:
    from twotower.training import fit

    config = interrupted_run(tmp_path, epochs=3, stop_after=2)
    fit(config, tmp_path, resume=True, echo=lambda line: None)
    newest, skipped = resumable_checkpoint(tmp_path / "checkpoints")
    assert newest is not None and newest.name == "epoch-0003" and skipped == []
    assert not (newest / "optimizer.safetensors").exists()
