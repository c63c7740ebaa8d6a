"""The fused training step of matrix-factorisation models (`TableStep`): both towers an id table
alone, a per-row loss on per-row negatives, the row-sparse optimizer, the CPU. The one piece of the
trainer that steps the towers' id tables itself, on the optimizer's own slots: it scores the
tables, takes their gradient and steps their rows without autograd (`twotower.kernels.table_step`),
and gives the same updates as `twotower.training.step.AutogradStep` (with `optim.replay_skipped_steps`
exactly dense Adam's: see `TableStep`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from twotower.kernels.table_step import table_adam_step, table_grad_sq_norm, table_scores
from twotower.losses import IN_BATCH_KINDS, IndexedRows, LossInputs
from twotower.model.two_tower import TwoTowerModel
from twotower.settings import TrainConfig
from twotower.training.batches import Batch
from twotower.training.optim import LazyAdam
from twotower.training.step import TrainingDiverged, ids_and_log_q

__all__ = ["TableStep"]


class TableStep:
    """The fused step of a model whose towers are both an id table alone (matrix factorisation, dot
    or cosine scores) trained with a per-row loss (sampled softmax, BPR, hinge, BCE) on per-row
    negatives, on the CPU with the row-sparse optimizer (`optim.sparse_embeddings`).

    `twotower.kernels.table_step` computes the [B, 1 + n] scores of each row's positive and
    negatives straight from the tables; the loss takes them as `LossInputs.row_scores`, so autograd
    sees only the small scores tensor (and a learned temperature); the tables' gradient and their
    Adam step are then one kernel pass per table, on the optimizer's own state (`LazyAdam.adam_table`).
    Id dropout draws from the towers (`id_rows`) as the autograd step does.

    With `optim.replay_skipped_steps` the rows a batch reads are brought up to the last step before
    they are scored (`LazyAdam.catch_up`), so the tables follow dense Adam(W) exactly; the autograd
    step replays a row after its gradient is taken instead (`LazyAdam`), so the two differ there by
    the gradient's timing on returning rows."""

    def __init__(self, model: TwoTowerModel, loss_fn: torch.nn.Module, optimizer: LazyAdam, clip_norm: float) -> None:
        self.model, self.loss_fn, self.optimizer, self.clip_norm = model, loss_fn, optimizer, clip_norm
        self.user_table = model.user_tower.id_embedding.weight
        self.item_table = model.item_tower.id_embedding.weight
        self.normalize = model.config.scoring == "cosine"
        tables = {id(self.user_table), id(self.item_table)}
        self._others = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in tables]
        self._saved = None
        self._rows: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # read by the batch in flight

    @staticmethod
    def unsupported(config: TrainConfig, model: TwoTowerModel, loss_fn: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device) -> str | None:
        """Why this step cannot train this model with these settings, or None when it can."""
        kind = getattr(getattr(loss_fn, "config", None), "kind", None)
        towers = (model.user_tower, model.item_tower)
        reasons = (
            (not config.train.fused_step, "train.fused_step is off"),
            (device.type != "cpu", "it runs on the CPU"),
            (not isinstance(optimizer, LazyAdam), "it needs optim.sparse_embeddings (the row-sparse optimizer)"),
            (config.batches.mask_known_positives and not config.batches.exclude_positives,
             "batches.mask_known_positives is on with exclude_positives off (its per-row negatives may then be "
             "known positives, which the fused step does not mask)"),
            (not all(t.is_id_lookup for t in towers), "a tower has more than an id embedding"),
            (model.config.scoring not in ("dot", "cosine"), f"scoring {model.config.scoring!r} is not dot or cosine"),
            (kind is None or kind in IN_BATCH_KINDS, f"loss kind {kind!r} is not a per-row kind"),
            (config.batches.num_negatives == 0 or config.batches.num_shared_negatives > 0,
             "it needs per-row negatives and no shared ones"),
            (config.batches.on_device, "it reads batches built on the host (batches.on_device is on)"),
        )
        for failed, why in reasons:
            if failed:
                return why
        tables = [t.id_embedding.weight for t in towers]
        if tables[0] is tables[1] or any(t.dtype not in (torch.float32, torch.float64) for t in tables):
            return "the towers share a table or hold it in another dtype than float32/float64"
        return None

    def loss(self, batch: Batch) -> torch.Tensor:
        """The batch's loss from scores computed straight from the tables."""
        if batch.negatives is None or batch.shared_negatives is not None:
            raise ValueError("TableStep: a batch with per-row negatives and no shared ones is needed")
        users = torch.from_numpy(batch.users)
        query_ids = self.model.user_tower.id_rows(users)
        item_ids = self.model.item_tower.id_rows(torch.from_numpy(batch.distinct_items))
        self._rows = (None, None)
        if self.optimizer.replay_skipped:  # the rows read, up to dense Adam's weights before they are scored
            self._rows = (torch.unique(query_ids), torch.unique(item_ids))
            self.optimizer.catch_up(self.user_table, self._rows[0])
            self.optimizer.catch_up(self.item_table, self._rows[1])
        index = torch.from_numpy(np.concatenate([batch.item_rows[:, None], batch.negative_rows], axis=1))
        saved = table_scores(self.user_table, self.item_table, query_ids, item_ids, index, normalize=self.normalize)
        self._saved = saved
        inputs = LossInputs(query=saved.query, positive=IndexedRows(saved.items, index[:, :1]),
                            negatives=IndexedRows(saved.items, index[:, 1:]), row_scores=saved.scores.requires_grad_(),
                            **ids_and_log_q(batch, False, torch.device("cpu")))
        return self.loss_fn(inputs)

    def update(self, loss: torch.Tensor) -> None:
        """Backward through the scores, clipping over every gradient, the tables' fused Adam step,
        then the optimizer's step for the remaining parameters (the tables have no .grad)."""
        saved, self._saved = self._saved, None
        if saved is None:
            raise RuntimeError("TableStep.update: call loss(batch) first")
        for param in self._others:  # the optimizer's zero_grad walks every group: 80 us a step
            param.grad = None
        loss.backward()
        grad = saved.scores.grad
        scale = 1.0
        if self.clip_norm > 0:
            others = [p.grad for p in self._others if p.grad is not None]
            squares = table_grad_sq_norm(saved, grad, query_slots=self.optimizer.table_slots(self.user_table),
                                         item_slots=self.optimizer.table_slots(self.item_table))
            squares += sum(float(g.double().square().sum()) for g in others)
            total = math.sqrt(squares)
            if not math.isfinite(total):
                raise TrainingDiverged(f"the gradient norm is {total} although the loss is finite")
            scale = min(1.0, self.clip_norm / (total + 1e-6))
            for g in others:
                g.mul_(scale)
        table_adam_step(saved, grad, self.optimizer.adam_table(self.user_table, self._rows[0]),
                        self.optimizer.adam_table(self.item_table, self._rows[1]), grad_scale=scale)
        if any(p.grad is not None for p in self._others):
            self.optimizer.step()  # a learned temperature; the tables have no .grad
