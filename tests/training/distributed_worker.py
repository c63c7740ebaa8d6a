"""One rank of the distributed equivalence test (`test_distributed.py`): trains a few steps of each
small case as one rank of a Gloo group (RANK / WORLD_SIZE / MASTER_* in the environment) and saves
the losses and every parameter; the test runs the same cases in one process on the global batches
those ranks draw (`train_case(..., reference=W)`: their slices concatenated) and compares.

    python -m tests.training.distributed_worker DATA_DIR "OUT/{case}-{rank}.pt" CASE [CASE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import torch
import torch.distributed as dist

from twotower.data.synthetic import generate_with_truth
from twotower.datasets import load_dataset
from twotower.losses import make_loss
from twotower.settings import TrainConfig
from twotower.settings.model import TowerConfig
from twotower.training.batches import Batch, BatchIterator
from twotower.training.distributed import Cluster, DistributedStep
from twotower.training.known_positives import KnownPositives
from twotower.training.loop import build_model, training_loss
from twotower.training.optim import make_optimizer
from twotower.training.step import AutogradStep

# Each case: the loss, the negatives, the towers; small enough that 5 steps take about a second.
# The 351 training rows in global batches of 40 end with one of 31 rows: 16 on rank 0, 15 on rank 1.
CASES = {
    "in_batch_uneven_last": {"loss": "infonce", "batch_size": 20, "steps": 9,
                             "batches": {"num_negatives": 1, "negative_kind": "popularity",
                                         "num_shared_negatives": 0, "log_q": "static"}},
    "in_batch_ids": {"loss": "infonce", "batches": {"num_negatives": 2, "negative_kind": "uniform",
                                                    "num_shared_negatives": 0, "log_q": "none"}},
    "mixed_ids": {"loss": "mixed", "batches": {"num_shared_negatives": 24, "log_q": "static"}},
    "mixed_features": {"loss": "mixed", "batches": {"num_shared_negatives": 24, "log_q": "static"},
                       "features": True},
    "sampled_ids": {"loss": "sampled_softmax", "batches": {"num_negatives": 4, "negative_kind": "popularity",
                                                           "num_shared_negatives": 0, "log_q": "static"}},
    "sampled_shared_features": {"loss": "sampled_softmax", "features": True,
                                "batches": {"num_negatives": 3, "negative_kind": "uniform",
                                            "num_shared_negatives": 8, "log_q": "static"}},
    # Known positives: each rank names them among the candidates it has after the gather, so the
    # masked set is the one process's on the global batch (other ranks' rows included).
    "mixed_known_positives": {"loss": "mixed", "batches": {"num_negatives": 1, "negative_kind": "uniform",
                                                          "num_shared_negatives": 24, "log_q": "static",
                                                          "mask_known_positives": True}},
    "sampled_known_positives": {"loss": "sampled_softmax",
                                "batches": {"num_negatives": 3, "negative_kind": "uniform", "exclude_positives": False,
                                            "num_shared_negatives": 8, "log_q": "static",
                                            "mask_known_positives": True}},
}


def write_data(root: Path) -> None:
    """A small interaction file and user / item side-feature files."""
    table, truth = generate_with_truth(60, 40, interactions_per_user=8, seed=3)
    pacsv.write_csv(table, root / "interactions.csv")
    pacsv.write_csv(truth.user_table, root / "users.csv")
    pacsv.write_csv(truth.item_table, root / "items.csv")


def case_config(case: str, data: Path) -> TrainConfig:
    spec = CASES[case]
    config = TrainConfig()
    config.data.path = str(data / "interactions.csv")
    if spec.get("features"):
        config.data.user_features = str(data / "users.csv")
        config.data.item_features = str(data / "items.csv")
        config.model.user = TowerConfig(hidden_dims=[12], feature_dim=4)
        config.model.item = TowerConfig(hidden_dims=[12], feature_dim=4)
    config.model.embedding_dim = 8
    config.model.id_dropout = 0.0  # equal dropout draws would need one RNG stream for both runs
    config.loss = dataclasses.replace(config.loss, kind=spec["loss"], temperature=0.3, learn_temperature=True)
    config.batches = dataclasses.replace(config.batches, batch_size=spec.get("batch_size", 16), prefetch=1,
                                         **spec["batches"])
    config.optim = dataclasses.replace(config.optim, lr=0.05, clip_norm=1.0)
    config.validate()
    return config


def concatenated(batches: list[Batch]) -> Batch:
    """The global batch: the ranks' slices one after the other."""
    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(b, name) for b in batches]
        return None if parts[0] is None else np.ascontiguousarray(np.concatenate(parts))
    names = ("users", "items", "negatives", "negative_log_q", "shared_negatives", "shared_log_q", "item_log_q")
    return Batch(**{name: cat(name) for name in names}, epoch=batches[0].epoch, index=batches[0].index)


def train_case(case: str, data: Path, cluster: Cluster, reference: int = 0) -> dict[str, torch.Tensor]:
    """The steps of `case` (5 unless it says) as rank `cluster.rank` of a started group, or with
    `reference` = W alone on the global batches of W ranks; the losses (the global batch's) and
    every parameter after them."""
    config = case_config(case, data)
    dataset = load_dataset(config.data)
    world = reference or cluster.world
    torch.manual_seed(0)
    model = build_model(config, dataset).double()
    loss_fn = make_loss(training_loss(config, dataset)).double()
    optimizer = make_optimizer([model, loss_fn], config.optim)
    device = torch.device("cpu")
    iterators = [BatchIterator(dataset.train.users, dataset.train.items, num_items=dataset.num_items,
                               config=config.batches, history=dataset.train_history, shard=(r, world))
                 for r in (range(world) if reference else [cluster.rank])]
    known = (KnownPositives(*iterators[0].history, dataset.num_items, device)
             if config.batches.mask_known_positives else None)
    if reference:
        step = AutogradStep(model, loss_fn, optimizer, device, config.optim.clip_norm, known)
    else:
        step = DistributedStep(model, loss_fn, optimizer, device, config.optim.clip_norm, cluster,
                               iterators[0].global_rows, known)
    epochs = [it.epoch(0) for it in iterators]
    losses = []
    for _ in range(CASES[case].get("steps", 5)):
        batches = [next(e) for e in epochs]
        loss = step.loss(concatenated(batches) if reference else batches[0])
        losses.append(float(loss.detach()) if reference else step.value(loss))
        step.update(loss)
    for e in epochs:
        e.close()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"loss.{k}": v for k, v in loss_fn.state_dict().items()})
    state["losses"] = torch.tensor(losses, dtype=torch.float64)
    return state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", help="a path with {case} and {rank}")
    parser.add_argument("cases", nargs="+", choices=sorted(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cluster = Cluster.from_env()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    for case in args.cases:
        state = train_case(case, args.data, cluster)
        torch.save(state, args.out.format(case=case, rank=cluster.rank))
    dist.destroy_process_group()
    os._exit(0)  # the batch workers are daemon threads; nothing else to wait for


if __name__ == "__main__":
    main()
