"""A model's files: `save_model` / `load_model` (config.json + model.safetensors, no pickle) and
the weights checksum that `load_model` and `--resume` verify.

config.json holds `{"twotower_version", "model": TwoTowerModel.describe(), **extra, "weights_sha256"}`;
model.safetensors the state dict (weights and the data-sized feature / history buffers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from twotower.atomic import atomic_write, file_sha256, read_json_object, write_json_atomic
from twotower.model.two_tower import TwoTowerModel

__all__ = ["CONFIG_FILE", "WEIGHTS_CHECKSUM", "WEIGHTS_FILE", "check_weights", "load_model", "save_model"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_CHECKSUM = "weights_sha256"  # config.json entry: the weights file's SHA-256 when it was saved


def save_model(directory: str | os.PathLike[str], model: TwoTowerModel, extra: dict[str, Any] | None = None) -> Path:
    """Writes `model.safetensors` (weights + feature/history buffers) and `config.json`.

    `config.json` holds `{"twotower_version", "model": model.describe(), **extra}`; a trainer can
    write its own config.json with the same "model" key and `load_model` still reads it. Each file is
    written to a temporary name and renamed, so a crash leaves either the old file or the new one.

    Args:
        directory: created if missing.
        model: the model to save.
        extra: more JSON-ready top-level entries (training settings, data fingerprint...).

    Returns:
        The directory path.
    """
    from twotower import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config = {"twotower_version": __version__, "model": model.describe(), **(extra or {}),
              WEIGHTS_CHECKSUM: file_sha256(directory / WEIGHTS_FILE)}
    write_json_atomic(directory / CONFIG_FILE, config)
    return directory


def check_weights(config_path: Path, weights_path: Path, config: dict[str, Any]) -> None:
    """Raises ValueError when the weights file's bytes differ from the checksum its config.json
    recorded at saving (a flipped bit would otherwise load and serve silently wrong scores). A
    config written before checksums existed has none: nothing to compare."""
    expected = config.get(WEIGHTS_CHECKSUM)
    if expected is None:
        return
    actual = file_sha256(weights_path)
    if actual != expected:
        raise ValueError(f"{weights_path} does not match the checksum recorded in {config_path} (sha256 "
                         f"{actual[:16]}... vs {expected[:16]}...): the file changed or was damaged after it was "
                         "saved; restore it from a copy or train again")


def load_model(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> TwoTowerModel:
    """Rebuilds a model saved by `save_model` (or any directory with the same two files).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: config.json is not valid or does not describe a model, or the weights do not
            match the described structure.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {directory} a twotower model directory?")
    config = read_json_object(config_path)
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{config_path} has no 'model' section: not a twotower model directory")
    try:
        model = TwoTowerModel.from_description(config["model"])
    except (ValueError, TypeError) as err:  # a hand-edited description: name the file with the setting
        raise ValueError(f"{config_path}: {err}") from None
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # safetensors' error for a truncated or corrupt file
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err}): save the model again") from None
    check_weights(config_path, weights_path, config)  # readable, but are these the bytes that were saved?
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights_path} does not match the model described in {config_path}: {err}") from None
    return model.to(device).eval()
