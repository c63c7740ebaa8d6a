"""Checkpoint and model directories that a crash can never leave half-written, loaded without pickle.

A checkpoint directory holds:

    config.json            every setting, the library version, the data fingerprint, the model description
    model.safetensors      model weights (through `twotower.model.io.save_model`)
    loss.safetensors       the loss module's state (a learned temperature), when it has one
    optimizer.safetensors  optimizer tensors; optimizer.json holds the rest of its state dict (both
                           deleted from a finished run's checkpoint unless train.keep_optimizer_state)
    state.safetensors      torch RNG state and other arrays of the loop (sampler state, mined candidates)
    trainer.json           epoch, step, best metric, early-stopping counter, metric history
    user_vocab.parquet, item_vocab.parquet   the vocabularies (external id <-> code)
    manifest.json          the SHA-256 of every other file but the weights (config.json holds theirs);
                           a checkpoint whose files do not match is skipped by `--resume`, named

It is written under a temporary name inside its parent and renamed into place; a `LATEST` file
(replaced atomically) names the newest complete one, so `--resume` never reads a partial write.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from twotower.atomic import (
    atomic_write,
    drop_from_manifest,
    manifest_problem,
    read_json_object,
    write_dir_atomic,
    write_json_atomic,
    write_manifest,
    write_text_atomic,
)
from twotower.model.io import WEIGHTS_FILE, check_weights, save_model
from twotower.model.two_tower import TwoTowerModel

LATEST = "LATEST"


def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Splits an optimizer state dict into tensors (for safetensors) and JSON for everything else."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for param_id, entries in state["state"].items():
        plain_entries = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_entries[name] = value
        plain["state"][str(param_id)] = plain_entries
    return tensors, plain


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(entries) for pid, entries in plain["state"].items()}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    root: Path,
    name: str,
    *,
    model: TwoTowerModel,
    config: Mapping[str, Any],
    loss_fn: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    extra_files: Mapping[str, Callable[[Path], None]] | None = None,
    keep: int = 2,
) -> Path:
    """Writes checkpoint `root/name` atomically, points `root/LATEST` at it, prunes old ones.

    Args:
        model: saved with `save_model` (config.json gets `config` merged in).
        config: JSON-ready settings (training config, version, data fingerprint).
        loss_fn, optimizer: their states, when given.
        trainer_state: JSON-ready loop state (epoch, step, best metric, history).
        arrays: NumPy arrays of the loop (sampler state, candidates) for state.safetensors.
        extra_files: filename -> writer(path), e.g. the vocabularies.
        keep: newest checkpoints to keep.
    """

    def fill(tmp: Path) -> None:
        save_model(tmp, model, extra=dict(config))
        # Every file through atomic_write, so that a failed write (a full disk) names the file.
        if loss_fn is not None and loss_fn.state_dict():
            loss_state = {k: v.detach().cpu().contiguous() for k, v in loss_fn.state_dict().items()}
            atomic_write(tmp / "loss.safetensors", lambda path: save_file(loss_state, str(path)))
        if optimizer is not None:
            tensors, plain = _flatten_optimizer(optimizer.state_dict())
            atomic_write(tmp / "optimizer.safetensors", lambda path: save_file(tensors, str(path)))
            write_json_atomic(tmp / "optimizer.json", plain)
        state = {"torch_rng": torch.get_rng_state().numpy()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on CUDA draws from these
            state.update({f"cuda_rng.{i}": s.numpy() for i, s in enumerate(torch.cuda.get_rng_state_all())})
        state.update({f"loop.{k}": np.ascontiguousarray(v) for k, v in (arrays or {}).items()})
        atomic_write(tmp / "state.safetensors", lambda path: save_numpy(state, str(path)))
        write_json_atomic(tmp / "trainer.json", dict(trainer_state or {}))
        for filename, writer in (extra_files or {}).items():
            writer(tmp / filename)
        write_manifest(tmp, skip=(WEIGHTS_FILE,))  # config.json, in the manifest, holds the weights' hash

    final = write_dir_atomic(Path(root) / name, fill)
    write_text_atomic(Path(root) / LATEST, name)
    _prune(Path(root), keep, current=name)
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    """Deletes all but the newest `keep` checkpoints under `root` (the one LATEST names stays)."""
    newest = latest_checkpoint(root)
    if newest is not None:
        _prune(Path(root), keep, current=newest.name)


def has_optimizer_state(path: Path) -> bool:
    """Whether checkpoint `path` holds the optimizer's state (training can go on from it)."""
    return (Path(path) / "optimizer.safetensors").is_file()


def drop_optimizer_state(path: Path) -> None:
    """Deletes the optimizer's state from checkpoint `path`: its weights and loop state still let a
    finished run redo its final evaluation, not train on. The tensors go first, so a half-done
    deletion reads as no optimizer state."""
    drop_from_manifest(path, ("optimizer.safetensors", "optimizer.json"))
    (Path(path) / "optimizer.safetensors").unlink(missing_ok=True)
    (Path(path) / "optimizer.json").unlink(missing_ok=True)


def _prune(root: Path, keep: int, current: str) -> None:
    checkpoints = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    old = [p for p in checkpoints if p.name != current][: max(0, len(checkpoints) - max(keep, 1))]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "trainer.json").is_file() else None


def resumable_checkpoint(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint under `root` whose files are complete, and the newer ones skipped with
    why (a truncated weights file, a missing trainer.json ...): a crash or a full disk can damage the
    newest checkpoint, and the one before it is then where training goes on from. `LATEST` is a
    hint, not a requirement: an empty or stale pointer does not hide the checkpoints there."""
    root = Path(root)
    if not root.is_dir():
        return None, []
    numbered = [p for p in root.glob("epoch-*") if p.is_dir() and p.name[len("epoch-"):].isdigit()]
    skipped: list[tuple[Path, str]] = []
    for path in sorted(numbered, key=lambda p: int(p.name[len("epoch-"):]), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from (the first file found incomplete), or None."""
    parsed = {}
    for name in ("trainer.json", "config.json"):
        try:
            parsed[name] = read_json_object(path / name)
        except FileNotFoundError:
            return f"{name} is missing"
        except ValueError as err:  # says "is not valid JSON" or "is not a JSON object"
            return f"{name}{str(err).removeprefix(str(path / name))}"
        except OSError as err:
            return f"{name} is unreadable ({err})"
    if not (path / "model.safetensors").is_file():
        return "model.safetensors is missing"
    for file in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem is not None:
            return f"{file.name} {problem}"
    try:
        check_weights(path / "config.json", path / "model.safetensors", parsed["config.json"])
    except ValueError:
        return "model.safetensors does not match the checksum in its config.json"
    return manifest_problem(path)


def safetensors_problem(file: Path) -> str | None:
    """Whether a safetensors file is whole, from its header alone: the header must parse and the
    tensors it lists must end exactly at the end of the file. None when whole, else what is wrong."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"is truncated ({size} bytes, not even a header)"
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            return f"is truncated (its header says {length} bytes; the file has {size})"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "has a corrupt header"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"is truncated ({size} bytes; its header describes {expected})"
    return None


def load_checkpoint(
    path: Path,
    *,
    model: TwoTowerModel,
    loss_fn: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Restores weights, loss and optimizer state and the torch RNGs (CPU, and CUDA when the checkpoint
    has them and this machine has as many devices) from checkpoint `path`.

    Returns:
        (trainer.json contents, the loop arrays saved with `arrays=`).
    """
    path = Path(path)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if loss_fn is not None and (path / "loss.safetensors").is_file():
        loss_fn.load_state_dict(load_file(str(path / "loss.safetensors")))
    if optimizer is not None and (path / "optimizer.safetensors").is_file():
        plain = read_json_object(path / "optimizer.json")
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), plain))
    state = load_numpy(str(path / "state.safetensors"))
    torch.set_rng_state(torch.from_numpy(state.pop("torch_rng")))
    cuda_keys = sorted((k for k in state if k.startswith("cuda_rng.")), key=lambda k: int(k.split(".")[1]))
    cuda_states = [torch.from_numpy(state.pop(k)) for k in cuda_keys]
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all(cuda_states)  # else resumed elsewhere: CUDA draws start afresh
    arrays = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("loop.")}
    return read_json_object(path / "trainer.json"), arrays
