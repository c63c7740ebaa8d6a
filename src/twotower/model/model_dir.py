"""The directory a finished training run leaves for `evaluate`, `index` and `recommend`.

    config.json            training config, library version, data fingerprint, model description
    model.safetensors      weights (the best epoch on validation)
    user_vocab.parquet     external user id <-> code
    item_vocab.parquet     external item id <-> code
    seen.safetensors       every user's known items (train + valid + test) as CSR, for filtering
    graph_filter.safetensors   (with `model.graph_filter`, when validation chose a weight > 0) the
                           graph filter blended into the exact rankings (`twotower.model.graph_filter`)
    results.json           validation / test metrics and the baselines of the run
    manifest.json          the SHA-256 of every other file but the weights (config.json holds theirs),
                           checked on every load: a changed file is refused, named

Written atomically as a whole (temporary directory + rename).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from twotower.atomic import (
    atomic_write,
    manifest_problem,
    read_json_object,
    write_dir_atomic,
    write_json_atomic,
    write_manifest,
)
from twotower.data import CSR, SplitDataset, Vocabulary
from twotower.model.graph_filter import GRAPH_FILTER_FILE, GraphFilter
from twotower.model.io import WEIGHTS_FILE, load_model, save_model
from twotower.model.two_tower import TwoTowerModel

REQUIRED = ("config.json", "model.safetensors", "user_vocab.parquet", "item_vocab.parquet", "seen.safetensors")


@dataclass
class TrainedModel:
    """A loaded model directory: the model (eval mode), both vocabularies, seen items, settings."""

    model: TwoTowerModel
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    seen: CSR
    config: dict[str, Any]
    path: Path
    graph: GraphFilter | None = None


def all_seen(dataset: SplitDataset) -> CSR:
    """Each user's train + valid + test items (sorted, unique): what serving must not recommend again."""
    users = np.concatenate([dataset.train.users, dataset.valid.users, dataset.test.users])
    items = np.concatenate([dataset.train.items, dataset.valid.items, dataset.test.items])
    return CSR.from_pairs(users, items, dataset.num_users)


def save_model_dir(
    path: Path, model: TwoTowerModel, dataset: SplitDataset, config: dict[str, Any], results: dict[str, Any],
    *, graph: GraphFilter | None = None,
) -> Path:
    """Writes a complete model directory at `path` (replacing an older one only once complete), with
    `graph` (a blended graph filter) when given."""
    seen = all_seen(dataset)

    def fill(tmp: Path) -> None:
        save_model(tmp, model, extra=config)
        dataset.user_vocab.save(tmp / "user_vocab.parquet")
        dataset.item_vocab.save(tmp / "item_vocab.parquet")
        arrays = {"indptr": np.ascontiguousarray(seen.indptr), "indices": np.ascontiguousarray(seen.indices)}
        atomic_write(tmp / "seen.safetensors", lambda file: save_file(arrays, str(file)))  # names it when it fails
        write_json_atomic(tmp / "results.json", results)
        if graph is not None:
            graph.save(tmp / GRAPH_FILTER_FILE)
        write_manifest(tmp, skip=(WEIGHTS_FILE,))  # config.json, in the manifest, holds the weights' hash

    return write_dir_atomic(path, fill)


def trained_dataset(trained: TrainedModel, data_path: str | None = None) -> SplitDataset:
    """The dataset `trained` was trained on, read and split again from its saved settings (whose
    files are absolute paths). `data_path`: the interaction file, when the data moved since
    training; a validation, test or feature file no longer where it was is then looked for next to
    it by name (data moved as a folder).

    Raises:
        FileNotFoundError: a data file is not where the model says, with the hint to pass --data.
        ValueError: the data read is not the data of training (fingerprint mismatch).
    """
    from twotower.datasets import fingerprint, load_dataset
    from twotower.settings import TrainConfig

    config = TrainConfig.from_dict(trained.config["train_config"])
    if data_path:
        moved = Path(data_path).absolute()
        config.data.path = str(moved)
        for name in ("valid", "test", "user_features", "item_features"):
            value = getattr(config.data, name)
            if value and not Path(value).exists() and (moved.parent / Path(value).name).exists():
                setattr(config.data, name, str(moved.parent / Path(value).name))
    try:
        dataset = load_dataset(config.data)
    except FileNotFoundError as err:
        hint = "" if data_path else "; if the data moved, pass its training file with --data FILE"
        raise FileNotFoundError(f"{err} (the data {trained.path} was trained on){hint}") from None
    if fingerprint(dataset) != trained.config.get("data_fingerprint"):
        raise ValueError(
            f"the data ({config.data.path or 'synthetic'}) is not the data {trained.path} was trained on "
            "(fingerprint mismatch): pass the same file and settings with --data"
        )
    return dataset


def load_model_dir(path: str | Path) -> TrainedModel:
    """Loads a directory written by `save_model_dir`.

    Raises:
        FileNotFoundError: `path` or one of its files is missing (named).
        ValueError: the files do not agree with each other (vocabulary sizes vs the model).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        raise FileNotFoundError(f"{path} is a training run's directory, not a model directory: its model is "
                                f"{path / 'model'}")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing: {path} is not a complete twotower model directory")
    problem = manifest_problem(path)
    if problem is not None:
        raise ValueError(f"{path}: {problem}: the model directory changed after it was written; train or copy it again")
    model = load_model(path)
    user_vocab = Vocabulary.load(path / "user_vocab.parquet")
    item_vocab = Vocabulary.load(path / "item_vocab.parquet")
    if len(user_vocab) != model.num_users or len(item_vocab) != model.num_items:
        raise ValueError(
            f"{path}: vocabularies ({len(user_vocab)} users, {len(item_vocab)} items) do not match the model "
            f"({model.num_users} users, {model.num_items} items)"
        )
    try:
        arrays = load_file(str(path / "seen.safetensors"))
    except Exception as err:  # safetensors' error for a truncated or corrupt file
        raise ValueError(f"{path / 'seen.safetensors'} is not a readable safetensors file ({err})") from None
    seen = CSR(arrays["indptr"], arrays["indices"])
    if seen.num_rows != model.num_users:
        raise ValueError(f"{path / 'seen.safetensors'} has {seen.num_rows} users; the model has {model.num_users}")
    config = read_json_object(path / "config.json")
    graph = GraphFilter.load(path / GRAPH_FILTER_FILE) if (path / GRAPH_FILTER_FILE).is_file() else None
    if graph is not None and graph.num_items != model.num_items:
        raise ValueError(f"{path / GRAPH_FILTER_FILE} covers {graph.num_items} items; the model has {model.num_items}")
    return TrainedModel(model, user_vocab, item_vocab, seen, config, path, graph)
