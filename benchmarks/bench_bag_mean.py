"""`bag_mean` (a user's history pooled from the item table, with a coalesced row-sparse gradient)
against its eager version, and what history pooling costs a whole training step.

- kernel: forward + backward of the pooled histories of one batch, each ending in the coalesced
  sparse gradient the row-sparse optimizer needs, vs `bag_mean_eager` (`F.embedding_bag` with a
  sparse gradient, coalesced by torch);
- step: one training step (forward, backward, clipping, optimizer) of a SimpleX-style model (user id
  gated with the mean of its history, `model.history_combine = "gate"`) vs the plain matrix
  factorisation step on the same batches (same loss, negatives and widths).

Sizes follow Gowalla (29,858 users, 40,981 items, ~24 training items per user, 1024-row batches).

    python -m benchmarks.bench_bag_mean        # table -> benchmarks/results/bag-mean.md
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from benchmarks.runner import markdown_table, measure_pair, write_results
from twotower.kernels.bag_mean import bag_mean
from twotower.kernels.bag_mean_eager import bag_mean_eager

USERS, ITEMS, PER_USER, B, D = 29_858, 40_981, 24, 1024, 128


def _bags(seed: int = 0) -> dict:
    """One batch's histories: geometric lengths around PER_USER, items drawn with a Zipf-like skew."""
    rng = np.random.default_rng(seed)
    lengths = rng.geometric(1 / PER_USER, B)
    offsets = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    weights = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    values = rng.choice(ITEMS, size=int(offsets[-1]), p=weights / weights.sum())
    g = torch.Generator().manual_seed(seed)
    return {"table": torch.nn.Parameter(torch.randn(ITEMS, D, generator=g) * 0.05),
            "values": torch.from_numpy(values), "offsets": torch.from_numpy(offsets),
            "keep": torch.from_numpy(rng.random(values.size) >= 0.5), "upstream": torch.randn(B, D, generator=g)}


def pool_step(fn, x: dict) -> None:
    """Forward, backward, and the coalesced gradient the optimizer reads."""
    x["table"].grad = None
    (fn(x["table"], x["values"], x["offsets"], x["keep"], sparse=True) * x["upstream"]).sum().backward()
    x["table"].grad.coalesce()


class Trainer:
    """A model, its loss and optimizer, and fixed batches of synthetic Gowalla-sized data."""

    def __init__(self, history: bool) -> None:
        from twotower.datasets import load_dataset
        from twotower.losses import make_loss
        from twotower.settings import DataSource, TrainConfig
        from twotower.training.batches import BatchIterator
        from twotower.training.loop import build_model
        from twotower.training.optim import make_optimizer
        from twotower.training.step import make_train_step

        config = TrainConfig(data=DataSource(synthetic_users=USERS, synthetic_items=ITEMS,
                                             synthetic_interactions_per_user=PER_USER))
        config.model = dataclasses.replace(config.model, embedding_dim=D, user_history=history, history_combine="gate")
        dataset = load_dataset(config.data)
        torch.manual_seed(0)
        self.model = build_model(config, dataset)
        loss_fn = make_loss(config.loss)
        optimizer = make_optimizer([self.model, loss_fn], config.optim)
        self.step = make_train_step(config, self.model, loss_fn, optimizer, torch.device("cpu"))
        iterator = BatchIterator(dataset.train.users, dataset.train.items, num_items=dataset.num_items,
                                 config=config.batches, history=dataset.train_history)
        with iterator.epoch(0) as batches:
            self.batches = [b for _, b in zip(range(40), batches, strict=False)]
        self.position = 0

    def __call__(self) -> None:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        self.step.update(self.step.loss(batch))


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    x = _bags()
    rows = []
    ours, ref = measure_pair(lambda: pool_step(bag_mean, x), lambda: pool_step(bag_mean_eager, x),
                             warmup=3, repeats=21)
    rows.append([f"bag_mean fwd+bwd, {x['values'].numel():,} history entries", f"{ours.median * 1e3:.2f}",
                 "F.embedding_bag(sparse=True) + coalesce", f"{ref.median * 1e3:.2f}",
                 f"{ref.median / ours.median:.1f}x"])
    print(rows[-1], flush=True)
    gate, plain = measure_pair(Trainer(history=True), Trainer(history=False), warmup=5, repeats=31)
    rows.append(["training step, history gate (SimpleX)", f"{gate.median * 1e3:.2f}",
                 "training step, plain MF", f"{plain.median * 1e3:.2f}",
                 f"{gate.median / plain.median:.2f}x the MF step"])
    print(rows[-1], flush=True)
    header = ["what", "twotower ms", "baseline", "baseline ms", "ratio"]
    note = (f"\n\nOne thread, float32, medians of calls taken in turns; B = {B}, D = {D}, {ITEMS:,} items, "
            f"histories of ~{PER_USER} items with half dropped (history dropout 0.5). Training steps: the default "
            "loss (in-batch + 1024 shared negatives, cosine), synthetic data of Gowalla's size.")
    print(markdown_table(header, rows) + note)
    write_results("bag-mean", markdown_table(header, rows) + note, {"rows": rows, "header": header})


if __name__ == "__main__":
    main()
