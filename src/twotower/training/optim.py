"""Optimizer with per-kind weight decay, row-sparse steps for embedding tables, gradient clipping
that understands sparse gradients, and the learning-rate schedule as a pure function."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from twotower.kernels.adam_replay import StepLog, replay_rows
from twotower.kernels.adam_replay_eager import fading_ratio
from twotower.kernels.sparse_adam import sparse_adam
from twotower.kernels.table_step import AdamTable
from twotower.settings.optim import OptimConfig


def learning_rate(step: int, total_steps: int, config: OptimConfig) -> float:
    """Learning rate at `step` (0-based) of `total_steps`: linear warm-up, then cosine/linear/constant."""
    warmup = int(config.warmup_fraction * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if config.schedule == "linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class LazyAdam(torch.optim.Optimizer):
    """Adam / AdamW that steps a parameter with a sparse gradient only on the rows it names.

    Sparse gradients come from `nn.Embedding(sparse=True)`: their rows go to the
    `twotower.kernels.sparse_adam` kernel, which sums repeated rows and gives each touched row the
    exact Adam(W) update; untouched rows keep weights and moments (lazy). Dense gradients get the
    same update on every element, so a model without sparse tables trains as with torch.optim.AdamW
    (`decoupled=True`) or Adam (`decoupled=False`, weight decay as L2 in the gradient). State keys
    and `state_dict()` follow torch's Adam (step, exp_avg, exp_avg_sq).

    With `replay_skipped`, a sparse table takes dense Adam(W)'s updates instead: the steps a row
    sat out (its momentum still moving it, its moments decaying) are applied in closed form when a
    batch touches the row again (`twotower.kernels.adam_replay`), and to every row by `flush()`,
    which the trainer calls before it evaluates or saves. A returning row's gradient is taken
    before its skipped steps are applied (dense Adam takes it after). Between flushes the rows'
    step counters live here, not in `state_dict()`: save after `flush()`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = True,
                 replay_skipped: bool = False) -> None:
        if not lr > 0 or not eps > 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"LazyAdam: bad hyper-parameters lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "decoupled": decoupled}
        )
        if replay_skipped:
            for group in self.param_groups:
                fading_ratio(*group["betas"])  # refuses betas whose momentum does not fade
        self.replay_skipped = bool(replay_skipped)
        self._slots: dict[int, np.ndarray] = {}  # per-table scratch of the kernel, not state
        self._replays: dict[int, tuple[StepLog, torch.Tensor]] = {}  # per sparse table: its steps, rows' last step

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            decay, decoupled = group["weight_decay"], group["decoupled"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state, step = self._count_step(param)
                grad = param.grad
                if grad.is_sparse:
                    if param.dim() != 2:
                        raise ValueError(
                            f"LazyAdam: a sparse gradient needs a 2-d table, got shape {tuple(param.shape)}"
                        )
                    rows = grad._indices()[0]
                    last = self._replay_rows(param, group, step, rows)
                    sparse_adam(param, state["exp_avg"], state["exp_avg_sq"], rows, grad._values(),
                                step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=decay,
                                decoupled=decoupled, slots=self.table_slots(param))
                    if last is not None:
                        last[rows.to(last.device)] = step
                else:
                    if id(param) in self._replays:  # a sparse table stepped densely: every row up to date first
                        self._replays[id(param)][0].record(step, lr, decay if decoupled else 0.0)
                        self._replay_all(param, group, step - 1)
                        self._replays[id(param)][1].fill_(step)
                    _dense_adam(
                        param, grad, state["exp_avg"], state["exp_avg_sq"], step, lr, beta1, beta2, eps, decay,
                        decoupled
                    )
        return loss

    def _replay_rows(self, param: torch.Tensor, group: dict, step: int, rows: torch.Tensor) -> torch.Tensor | None:
        """With `replay_skipped`: logs step `step` and brings `rows` up to the step before it;
        returns the table's per-row last steps (the caller marks the rows it steps)."""
        if not self.replay_skipped:
            return None
        log, last = self._replay_state(param, group, step - 1)
        log.record(step, group["lr"], group["weight_decay"] if group["decoupled"] else 0.0)
        replay_rows(param, self.state[param]["exp_avg"], self.state[param]["exp_avg_sq"], rows, last, log,
                    through=step - 1, eps=group["eps"])
        return last

    def _replay_state(self, param: torch.Tensor, group: dict, current: int) -> tuple[StepLog, torch.Tensor]:
        """The table's step log and rows' last steps, made on first use with every row current at
        `current` (a fresh table, or one restored from a checkpoint saved after `flush()`)."""
        entry = self._replays.get(id(param))
        if entry is None:
            if group["weight_decay"] and not group["decoupled"]:
                raise ValueError("LazyAdam: replay_skipped needs decoupled weight decay (AdamW) or none on a sparse "
                                 "table: L2 decay in the gradient moves a skipped row, with no closed form")
            entry = (StepLog(*group["betas"], first=current),
                     torch.full((param.shape[0],), current, dtype=torch.int64, device=param.device))
            self._replays[id(param)] = entry
        return entry

    def _replay_all(self, param: torch.Tensor, group: dict, through: int) -> None:
        log, last = self._replays[id(param)]
        rows = torch.arange(param.shape[0], device=param.device)
        replay_rows(param, self.state[param]["exp_avg"], self.state[param]["exp_avg_sq"], rows, last, log,
                    through=through, eps=group["eps"])

    @torch.no_grad()
    def flush(self) -> None:
        """With `replay_skipped`: brings every row of every sparse table up to the last step taken,
        so the weights and moments are dense Adam(W)'s; call it before evaluating or saving. The
        step logs restart from there (nothing older is needed again). Without: nothing to do."""
        for group in self.param_groups:
            for param in group["params"]:
                entry = self._replays.get(id(param))
                if entry is not None:
                    log, last = entry
                    self._replay_all(param, group, log.last_step)
                    self._replays[id(param)] = (StepLog(*group["betas"], first=log.last_step), last)

    @torch.no_grad()
    def catch_up(self, param: torch.Tensor, rows: torch.Tensor) -> None:
        """With `replay_skipped`: brings `rows` of the table `param` up to the last step taken, for a
        caller that reads the rows before it steps them (`twotower.training.fused_step.TableStep`,
        which then passes the same rows to `adam_table`). The gradient is then taken at dense
        Adam's weights, so the rows follow dense Adam(W) exactly. Without: nothing to do."""
        if not self.replay_skipped:
            return
        group = self._group_of(param, "catch_up")
        state = self.state[param]
        if not state:  # no step taken yet: every row is current
            return
        log, last = self._replay_state(param, group, int(state["step"].item()))
        replay_rows(param, state["exp_avg"], state["exp_avg_sq"], rows, last, log, through=log.last_step,
                    eps=group["eps"])

    def adam_table(self, param: torch.Tensor, rows: torch.Tensor | None = None) -> AdamTable:
        """Counts a step of the 2-d table `param` and returns it with its moments, its group's
        settings and its scratch, for a caller that steps the rows itself
        (`twotower.kernels.table_step`): the same state `step()` keeps, so checkpoints, resume and
        a later `step()` see one history. Call it only for tables the caller updates this step;
        with `replay_skipped`, `rows` are the rows it steps (brought current by `catch_up`)."""
        group = self._group_of(param, "adam_table")
        if param.dim() != 2:
            raise ValueError(f"LazyAdam.adam_table: a 2-d table is needed, got shape {tuple(param.shape)}")
        state, step = self._count_step(param)
        if self.replay_skipped:
            if rows is None:
                raise ValueError("LazyAdam.adam_table: with replay_skipped, pass the rows the caller steps")
            log, last = self._replay_state(param, group, step - 1)
            log.record(step, group["lr"], group["weight_decay"] if group["decoupled"] else 0.0)
            last[rows.to(last.device)] = step
        beta1, beta2 = group["betas"]
        return AdamTable(param, state["exp_avg"], state["exp_avg_sq"], step=step, lr=group["lr"], beta1=beta1,
                         beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                         decoupled=group["decoupled"], slots=self.table_slots(param))

    def _group_of(self, param: torch.Tensor, caller: str) -> dict:
        group = next((g for g in self.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            raise ValueError(f"LazyAdam.{caller}: the parameter is not in this optimizer")
        return group

    def _count_step(self, param: torch.Tensor) -> tuple[dict, int]:
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
        state["step"] += 1
        return state, int(state["step"].item())

    def table_slots(self, param: torch.Tensor) -> np.ndarray:
        """The table's int64 scratch for the row kernels (all -1 between calls), made on first use."""
        slots = self._slots.get(id(param))
        if slots is None or slots.shape[0] != param.shape[0]:
            slots = self._slots[id(param)] = np.full(param.shape[0], -1, dtype=np.int64)
        return slots


def _dense_adam(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int,
                lr: float, beta1: float, beta2: float, eps: float, decay: float, decoupled: bool) -> None:
    """torch.optim.Adam / AdamW's update, element for element."""
    if decay and decoupled:
        param.mul_(1 - lr * decay)
    elif decay:
        grad = grad.add(param, alpha=decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))


def make_optimizer(modules: list[nn.Module], config: OptimConfig) -> torch.optim.Optimizer:
    """Adam/AdamW over the parameters of `modules`; embedding tables get `embedding_weight_decay`,
    everything else (MLP weights, temperature) `weight_decay`.

    With `config.sparse_embeddings` every `nn.Embedding` is switched to sparse gradients and the
    optimizer is `LazyAdam`: a step then costs the rows of the batch, not the size of the tables
    (a table also read densely, e.g. the item table pooled over user histories, gets a dense
    gradient and a dense step). Otherwise torch.optim.Adam/AdamW step every row every batch."""
    embedding, dense, seen = [], [], set()
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.Embedding):
                sub.sparse = config.sparse_embeddings
            for param in sub.parameters(recurse=False):
                if id(param) in seen or not param.requires_grad:
                    continue
                seen.add(id(param))
                (embedding if isinstance(sub, (nn.Embedding, nn.EmbeddingBag)) else dense).append(param)
    groups = [
        {"params": embedding, "weight_decay": config.embedding_weight_decay},
        {"params": dense, "weight_decay": config.weight_decay},
    ]
    groups = [g for g in groups if g["params"]]
    if config.sparse_embeddings:
        return LazyAdam(groups, lr=config.lr, decoupled=config.optimizer == "adamw",
                        replay_skipped=config.replay_skipped_steps)
    if config.optimizer == "adam":
        # Adam's weight_decay is L2 in the gradient; AdamW's is decoupled.
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients so that their joint L2 norm is at most `max_norm`; returns the norm
    before clipping (a 0-d tensor: no host sync). Sparse gradients are coalesced first (repeated rows summed), so
    their norm is that of the gradient they stand for; torch's clip_grad_norm_ rejects them."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total
