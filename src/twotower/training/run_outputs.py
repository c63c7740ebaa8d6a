"""What a finished run leaves in its directory (`finish_run`): the best epoch's weights restored,
valid and test evaluated next to the most-popular baseline, `model/` (the model directory to
serve), `results.json` and `training.png` written atomically, then the directory settled to the
smallest state a finished run needs (`settle`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from twotower.atomic import disk_usage, link_if_identical, write_json_atomic
from twotower.data import SplitDataset
from twotower.evaluate import EvalResult, evaluate_model, evaluate_popularity
from twotower.model.model_dir import save_model_dir
from twotower.model.two_tower import TwoTowerModel
from twotower.plots import plot_training
from twotower.settings import TrainConfig
from twotower.training.checkpoint import drop_optimizer_state, latest_checkpoint, prune_checkpoints
from twotower.training.graph_blend import choose_graph_blend
from twotower.training.hardware import torch_threads

__all__ = ["CHECKPOINTS", "MODEL", "TrainResult", "finish_run", "settle"]

CHECKPOINTS = "checkpoints"
MODEL = "model"


@dataclass
class TrainResult:
    """What a finished run produced."""

    model_dir: Path
    best_epoch: int
    valid: EvalResult
    test: EvalResult
    popularity_valid: EvalResult
    popularity_test: EvalResult
    history: list[dict[str, Any]]
    disk_bytes: int = 0  # the run directory once finished, hard links counted once
    refit: TrainResult | None = None  # train.refit's model, trained on train + valid


def finish_run(config: TrainConfig, out_dir: Path, model: TwoTowerModel, loss_fn: torch.nn.Module,
               dataset: SplitDataset, saved_config: dict[str, Any], best_epoch: int, history: list[dict[str, Any]],
               threads: int | None) -> TrainResult:
    """Restores `out_dir/best`'s weights into `model`, evaluates, writes the run's outputs and
    settles the directory; the run's result."""
    from safetensors.torch import load_file

    loop = config.train
    best_weights = out_dir / "best" / "model.safetensors"
    if best_weights.is_file():
        model.load_state_dict(load_file(str(best_weights)))  # the temperature of that epoch included
    else:
        model.set_temperature(loss_fn.temperature)
    temperature = float(model.temperature)
    model.eval()
    kwargs = {"ks": loop.ks, "progress": False, "protocol": config.eval}
    valid = evaluate_model(model, dataset, split="valid", num_threads=threads, **kwargs)
    test = evaluate_model(model, dataset, split="test", num_threads=threads, **kwargs)
    with torch_threads(threads):  # every core: the batch worker is done
        blend = choose_graph_blend(config, model, dataset)
    graph = blend.graph if blend is not None and blend.graph.weight > 0 else None
    graph_results = {} if blend is None else {"graph_filter": {
        **blend.describe(), "towers": {"valid": valid.to_dict(), "test": test.to_dict()}}}
    if graph is not None:  # the blend is the model's ranking from here on
        valid = blend.valid or evaluate_model(model, dataset, split="valid", graph=graph, **kwargs)
        test = blend.test or evaluate_model(model, dataset, split="test", graph=graph, **kwargs)
    pop_valid = evaluate_popularity(dataset, split="valid", **kwargs)
    pop_test = evaluate_popularity(dataset, split="test", **kwargs)
    results = {
        "best_epoch": best_epoch,
        "temperature": temperature,
        "valid": valid.to_dict(),
        "test": test.to_dict(),
        "popularity": {"valid": pop_valid.to_dict(), "test": pop_test.to_dict()},
        **graph_results,
        "protocol": dataclasses.asdict(config.eval),
        "data": {"users": dataset.num_users, "items": dataset.num_items, "train": len(dataset.train.users),
                 "valid": len(dataset.valid.users), "test": len(dataset.test.users),
                 **{key: dataset.stats[key] for key in _LEFT_OUT if key in dataset.stats}},
    }
    model_dir = save_model_dir(out_dir / MODEL, model, dataset, saved_config, results, graph=graph)
    write_json_atomic(out_dir / "results.json", results)
    plot_training(history, out_dir / "training.png", select_metric=loop.select_metric)
    settle(out_dir, keep_optimizer_state=loop.keep_optimizer_state)
    return TrainResult(model_dir, best_epoch, valid, test, pop_valid, pop_test, history, disk_usage(out_dir))


# What the data layer left out and why, copied into results.json.
_LEFT_OUT = ("rows_skipped", "non_positive_rows", "duplicates_removed", "kcore_rows_removed", "unknown_targets")


def settle(out_dir: Path, *, keep_optimizer_state: bool) -> None:
    """A finished run keeps one copy of each weight file and no state it no longer needs: `model/`
    and the newest checkpoint share `best/`'s weights where they are the same bytes (hard links),
    older checkpoints go, and the optimizer's moments go unless `keep_optimizer_state`. The
    checkpoint left still lets `--resume` redo the final evaluation."""
    best_weights = out_dir / "best" / "model.safetensors"
    link_if_identical(best_weights, out_dir / MODEL / "model.safetensors")
    checkpoint_root = out_dir / CHECKPOINTS
    prune_checkpoints(checkpoint_root, keep=1)
    newest = latest_checkpoint(checkpoint_root)
    if newest is None:
        return
    if not keep_optimizer_state:
        drop_optimizer_state(newest)
    link_if_identical(best_weights, newest / "model.safetensors")
