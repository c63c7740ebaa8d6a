"""A training run's shared pieces and its directory at the start (`Run`, `State`): what the run
builds once, what changes from epoch to epoch (and a checkpoint saves), how a run starts fresh or
resumes from its newest intact checkpoint (`start_or_resume`, refusing other data, other settings
or another world size), and what an earlier run left in the directory (`clear_earlier_outputs`)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twotower.atomic import read_json_object, remove_stale_temporaries, write_text_atomic
from twotower.data import SplitDataset
from twotower.model.two_tower import TwoTowerModel
from twotower.settings import TrainConfig
from twotower.training.batches import BatchIterator
from twotower.training.checkpoint import (
    LATEST,
    has_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    resumable_checkpoint,
)
from twotower.training.device_batches import DeviceBatches
from twotower.training.distributed import ONE_PROCESS, Cluster, DistributedStep, restore_rng
from twotower.training.fused_step import TableStep
from twotower.training.resume_rules import changed_settings, semantic_settings
from twotower.training.run_outputs import CHECKPOINTS, MODEL
from twotower.training.step import AutogradStep

__all__ = ["REFIT", "Run", "State", "clear_earlier_outputs", "start_or_resume"]

REFIT = "refit"
_OUTPUTS = ("best", MODEL, "results.json", "training.png", "metrics.jsonl")  # written atomically into out_dir


@dataclass
class Run:
    """What a run builds once and its phases share: the settings, the data, the model, the loss,
    the optimizer and step, the batch iterator, and where its files go."""

    config: TrainConfig
    out_dir: Path
    device: torch.device
    dataset: SplitDataset
    echo: Callable[[str], None]
    last_epoch: int  # train.epochs, or the refit's stop_after
    saved_config: dict[str, Any]  # the config.json of checkpoints and models
    model: TwoTowerModel
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_step: AutogradStep | TableStep | DistributedStep
    batches: BatchIterator | DeviceBatches
    cluster: Cluster = ONE_PROCESS

    @property
    def threads(self) -> int | None:
        return self.config.train.num_threads or None

    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / CHECKPOINTS

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    @property
    def metrics_log(self) -> Path:
        return self.out_dir / "metrics.jsonl"


@dataclass
class State:
    """What changes from epoch to epoch: a checkpoint saves it and `--resume` restores it."""

    start_epoch: int = 0  # the first epoch this process trains
    step: int = 0
    best: float = -math.inf  # the best validation score so far, of `best_epoch` (1-based; -1: none)
    best_epoch: int = -1
    stale: int = 0  # evaluations since the best one (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl records
    candidates: np.ndarray | None = None  # the mined hard-negative candidates


def start_or_resume(run: Run, resume: bool) -> State:
    """A fresh run's state; with `resume`, the newest intact checkpoint's (weights, optimizer, RNG,
    batch iterator, mined candidates and trainer state), once it is known to come from the same
    data and the same settings, and to hold what the epochs left need."""
    if not resume:
        return State()
    loop, checkpoint_root = run.config.train, run.checkpoint_root
    last, skipped = resumable_checkpoint(checkpoint_root)
    for path, problem in skipped:
        run.echo(f"notice: --resume skips {path.name}: {problem}")
    if last is None:
        found = f" ({len(skipped)} damaged: see above)" if skipped else ""
        raise ValueError(f"--resume: no intact checkpoint in {checkpoint_root}{found}")
    saved = read_json_object(last / "config.json")
    if saved.get("data_fingerprint") != run.saved_config["data_fingerprint"]:
        raise ValueError(f"--resume: {last} was trained on different data (fingerprint mismatch)")
    changed = changed_settings(semantic_settings(saved.get("train_config", {})),
                               semantic_settings(run.config.to_dict()))
    if changed:
        raise ValueError(f"--resume: {last} was written with other settings: {'; '.join(changed)}; resume with "
                         "the settings it was written with")
    world = int(read_json_object(last / "trainer.json").get("world", 1))
    if world != run.cluster.world:
        raise ValueError(f"--resume: {last} was written by a run of {world} process(es) and this run has "
                         f"{run.cluster.world}: its batches would differ; resume with {world} (torchrun "
                         "--nproc_per_node x --nnodes) or start a new run")
    saved_state, arrays = load_checkpoint(last, model=run.model, loss_fn=run.loss_fn, optimizer=run.optimizer)
    restore_rng(arrays, run.cluster)
    state = State(start_epoch=saved_state["epoch"] + 1, step=saved_state["step"], best=saved_state["best"],
                   best_epoch=saved_state["best_epoch"], stale=saved_state["stale"], history=saved_state["history"])
    if not has_optimizer_state(last) and state.start_epoch < run.last_epoch and not state.stale >= loop.patience > 0:
        raise ValueError(f"--resume: {last} holds no optimizer state (deleted when its run finished, as "
                         "train.keep_optimizer_state was off), so training cannot go on from it")
    run.batches.load_state_dict({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("batches.")})
    if "candidates" in arrays:
        state.candidates = arrays["candidates"]
        run.batches.set_candidates(state.candidates)
    return state


def clear_earlier_outputs(run: Run, state: State, resume: bool) -> None:
    """Removes what a killed run left mid-write, rewrites metrics.jsonl as the run's history (a
    resumed run's log is its checkpoint's: a run killed between its log line and its checkpoint
    would otherwise log that epoch twice), and on a fresh run removes an earlier run's best
    weights, checkpoints and refit, which are not this run's."""
    out_dir, checkpoint_root = run.out_dir, run.checkpoint_root
    if not run.cluster.is_main:  # rank 0 alone writes the run directory
        return
    for directory, name in ((checkpoint_root, "epoch-*"), (checkpoint_root, LATEST), *((out_dir, n) for n in _OUTPUTS)):
        remove_stale_temporaries(directory, name)
    write_text_atomic(run.metrics_log, "".join(json.dumps(record) + "\n" for record in state.history))
    if resume:
        return
    earlier = latest_checkpoint(checkpoint_root)
    if earlier is not None:
        run.echo(f"notice: {out_dir} holds an earlier run's checkpoints (newest: {earlier.name}); this fresh run "
                 "replaces them (--resume continues that run instead)")
    shutil.rmtree(run.best_dir, ignore_errors=True)
    shutil.rmtree(checkpoint_root, ignore_errors=True)
    shutil.rmtree(out_dir / REFIT, ignore_errors=True)
