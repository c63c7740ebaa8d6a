"""Optimizer with per-kind weight decay, row-sparse steps for embedding tables, gradient clipping
that understands sparse gradients, and the learning-rate schedule as a pure function."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from twotower.config import OptimConfig
from twotower.kernels.sparse_adam import sparse_adam


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


# A sparse update smaller than this (gradient values) stays on the calling thread: handing it over
# costs more than it overlaps (ML-100K, 1.7k-row item table: 2.52 -> 2.64 ms per step in the
# background; 1M rows, 11.6k rows x 64 per step: 5.6 -> 5.2 ms).
BACKGROUND_MIN_VALUES = 1 << 18


class LazyAdam(torch.optim.Optimizer):
    """Adam / AdamW that steps a parameter with a sparse gradient only on the rows it names.

    Sparse gradients come from `nn.Embedding(sparse=True)`: their rows go to the
    `twotower.kernels.sparse_adam` kernel, which sums repeated rows and gives each touched row the
    exact Adam(W) update; untouched rows keep weights and moments (lazy). Dense gradients get the
    same update on every element, so a model without sparse tables trains as with torch.optim.AdamW
    (`decoupled=True`) or Adam (`decoupled=False`, weight decay as L2 in the gradient). State keys
    and `state_dict()` follow torch's Adam (step, exp_avg, exp_avg_sq).

    Tables named in `update_in_background` take their row-sparse step on a worker thread (the kernel
    releases the GIL) while the caller goes on, when the step is large enough to pay for the hand-over
    (`BACKGROUND_MIN_VALUES` gradient values); `synchronize()` waits for it, and must come before
    anything reads those tables again (the trainer calls it just before the next step's item side).
    The arithmetic and its order are unchanged: results are bit for bit those of a plain step.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = True) -> None:
        if not lr > 0 or not eps > 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LazyAdam: bad hyper-parameters lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "decoupled": decoupled})
        self._slots: dict[int, np.ndarray] = {}  # per-table scratch of the kernel, not state
        self._background: set[int] = set()  # ids of the tables stepped on the worker thread
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def update_in_background(self, params: Iterable[torch.Tensor]) -> None:
        """From now on, step these 2-d tables (when their gradient is sparse) on a worker thread;
        see the class docstring for the rule that comes with it."""
        known = {id(p) for g in self.param_groups for p in g["params"]}
        for param in params:
            if id(param) not in known or param.dim() != 2:
                raise ValueError("LazyAdam.update_in_background: expects 2-d tables that this optimizer steps")
            self._background.add(id(param))

    def synchronize(self) -> None:
        """Waits for the background update of the last step (re-raising its error, if any)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def state_dict(self) -> dict:
        self.synchronize()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.synchronize()
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.synchronize()  # the previous step's background update comes first
        background: list[Callable[[], None]] = []
        foreground: list[Callable[[], None]] = []
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    update = self._update(param, group)
                    deferred = (id(param) in self._background and param.grad.is_sparse
                                and param.grad._values().numel() >= BACKGROUND_MIN_VALUES)
                    (background if deferred else foreground).append(update)
        if background:  # submitted first, so that it overlaps the other tables' updates too
            self._pending = self._worker().submit(_run_without_grad, background)
        for update in foreground:
            update()
        return loss

    def _update(self, param: torch.Tensor, group: dict) -> Callable[[], None]:
        """This step's update of `param`, ready to run: its state is created and its step counted
        here, on the calling thread; the returned call only does the arithmetic."""
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        decay, decoupled = group["weight_decay"], group["decoupled"]
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
        state["step"] += 1
        step = int(state["step"].item())
        grad = param.grad
        if not grad.is_sparse:
            return lambda: _dense_adam(param, grad, state["exp_avg"], state["exp_avg_sq"], step, lr, beta1, beta2, eps,
                                       decay, decoupled)
        if param.dim() != 2:
            raise ValueError(f"LazyAdam: a sparse gradient needs a 2-d table, got shape {tuple(param.shape)}")
        slots = self._slots.get(id(param))
        if slots is None or slots.shape[0] != param.shape[0]:
            slots = self._slots[id(param)] = np.full(param.shape[0], -1, dtype=np.int64)
        rows, values = grad._indices()[0], grad._values()
        return lambda: sparse_adam(param, state["exp_avg"], state["exp_avg_sq"], rows, values, step=step, lr=lr,
                                   beta1=beta1, beta2=beta2, eps=eps, weight_decay=decay, decoupled=decoupled,
                                   slots=slots)

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twotower-lazyadam")
        return self._executor


def _run_without_grad(updates: list[Callable[[], None]]) -> None:
    with torch.no_grad():  # grad mode is per thread: the worker's must be off too
        for update in updates:
            update()


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
        return LazyAdam(groups, lr=config.lr, decoupled=config.optimizer == "adamw")
    if config.optimizer == "adam":
        # Adam's weight_decay is L2 in the gradient; AdamW's is decoupled.
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients so that their joint L2 norm is at most `max_norm`; returns the norm
    before clipping (a 0-d tensor: no host sync). Sparse gradients are coalesced first (repeated rows summed), so their norm is
    that of the gradient they stand for; torch's clip_grad_norm_ rejects them."""
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
