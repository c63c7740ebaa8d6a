"""The optimizer and its learning-rate schedule (`OptimConfig`); `twotower.training.optim` builds them."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["OPTIMIZERS", "SCHEDULES", "OptimConfig"]

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        optimizer: "adamw" or "adam".
        lr: peak learning rate.
        weight_decay: decoupled weight decay of dense (MLP) weights; embedding tables get none.
        embedding_weight_decay: weight decay of embedding tables (0: none, on purpose).
        warmup_fraction: share of all steps spent warming the learning rate up linearly from 0.
        schedule: after warm-up: "cosine" (to 0), "linear" (to 0) or "constant".
        clip_norm: clip the gradient norm to this (0: no clipping).
        sparse_embeddings: embedding tables get sparse gradients and a row-sparse ("lazy") Adam
            step that reads and writes only the rows a batch touched, as TensorFlow's LazyAdam and
            torch's SparseAdam do; rows a batch does not touch keep their weights and moments.
            False: every row of every table steps every batch (torch.optim.Adam/AdamW).
        replay_skipped_steps: with `sparse_embeddings`, give the rows dense Adam's updates at the
            row-sparse cost: the steps a row sat out (dense Adam keeps moving it on its fading
            momentum, about ten steps after each touch) are applied in closed form when a batch
            touches it again, and to every row before each evaluation. Needs `adamw` or no
            embedding weight decay. False: the lazy step (rows a batch does not touch stand still).
    """

    optimizer: str = "adamw"
    lr: float = 0.005
    weight_decay: float = 0.0
    embedding_weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    schedule: str = "cosine"
    clip_norm: float = 1.0
    sparse_embeddings: bool = True
    replay_skipped_steps: bool = True

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optim.optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"optim.lr must be a finite number > 0; got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"optim.warmup_fraction must be in [0, 1); got {self.warmup_fraction}")
        if self.replay_skipped_steps and self.optimizer == "adam" and self.embedding_weight_decay > 0:
            raise ValueError("optim.replay_skipped_steps (on by default) needs optim.optimizer 'adamw' or "
                             "optim.embedding_weight_decay 0: Adam's L2 decay puts a gradient on every skipped step, "
                             "which has no closed form; set optim.replay_skipped_steps = false for the lazy step")
        for name in ("weight_decay", "embedding_weight_decay", "clip_norm"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"optim.{name} must be a finite number >= 0; got {value}")
