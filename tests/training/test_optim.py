"""LazyAdam (row-sparse steps for sparse-gradient tables, torch's Adam/AdamW for the rest) and
gradient clipping over sparse gradients."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from twotower.settings import OptimConfig
from twotower.training.optim import LazyAdam, clip_grad_norm, make_optimizer

from .conftest import straight_and_resumed, tiny_config


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(40, 6)
        self.mlp = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.table(ids)).pow(2).sum()


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_dense_parameters_train_as_with_torch(optimizer):
    ours, theirs = Toy(), Toy()
    config = OptimConfig(optimizer=optimizer, lr=0.01, weight_decay=0.1, embedding_weight_decay=0.0)
    lazy = make_optimizer([ours], config)
    torch_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    reference = torch_cls([{"params": [theirs.table.weight], "weight_decay": 0.0},
                           {"params": list(theirs.mlp.parameters()), "weight_decay": 0.1}], lr=0.01)
    assert isinstance(lazy, LazyAdam) and ours.table.sparse
    every = torch.arange(40)  # every row touched each step: lazy and dense Adam coincide
    for _ in range(4):
        for model, opt in ((ours, lazy), (theirs, reference)):
            opt.zero_grad()
            model(every).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rows_outside_the_batch_do_not_move():
    model = Toy()
    opt = make_optimizer([model], OptimConfig(lr=0.1))
    before = model.table.weight.detach().clone()
    opt.zero_grad()
    model(torch.tensor([2, 5, 5])).backward()
    assert model.table.weight.grad.is_sparse
    opt.step()
    moved = (model.table.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert moved == [2, 5]


def test_sparse_embeddings_off_gives_torch_adamw_and_dense_gradients():
    model = Toy()
    opt = make_optimizer([model], OptimConfig(sparse_embeddings=False))
    assert type(opt) is torch.optim.AdamW and not model.table.sparse


def test_state_dict_round_trip_continues_identically():
    """The lazy step's state is all in state_dict() (the replay's needs a flush first: its own test)."""
    a, b = Toy(), Toy()
    opt_a = make_optimizer([a], OptimConfig(lr=0.05, replay_skipped_steps=False))
    batches = [torch.randint(0, 40, (8,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for ids in batches[:2]:
        opt_a.zero_grad()
        a(ids).backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer([b], OptimConfig(lr=0.05, replay_skipped_steps=False))
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint file
    for ids in batches[2:]:
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(ids).backward()
            opt.step()
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)


def test_clip_grad_norm_counts_repeated_sparse_rows_once_summed():
    model = Toy()
    make_optimizer([model], OptimConfig())  # switches the table to sparse gradients
    ids = torch.tensor([1, 1, 1, 7])
    model(ids).backward()
    dense = Toy()
    dense(ids).backward()
    want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in dense.parameters()]))
    total = clip_grad_norm(model.parameters(), max_norm=float(want) / 4)
    torch.testing.assert_close(total, want)
    clipped = torch.linalg.vector_norm(torch.cat([
        (p.grad.to_dense() if p.grad.is_sparse else p.grad).flatten() for p in model.parameters()]))
    torch.testing.assert_close(clipped, want / 4, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.table.weight.grad.to_dense(), dense.table.weight.grad / 4, rtol=1e-5, atol=1e-7)


def test_training_step_threads_leave_one_core_to_the_batch_worker(monkeypatch):
    from twotower.training import hardware as train

    cpu = torch.device("cpu")
    monkeypatch.setattr(train.os, "cpu_count", lambda: 8)
    assert train.step_threads(0, cpu) == 7
    assert train.step_threads(3, cpu) == 3  # an explicit setting wins
    monkeypatch.setattr(train.os, "cpu_count", lambda: 1)
    assert train.step_threads(0, cpu) == 1
    monkeypatch.setattr(train.os, "cpu_count", lambda: None)
    assert train.step_threads(0, cpu) == 1


class LinearInTable(nn.Module):
    """A loss linear in the table's rows: its gradient does not depend on where the rows are, so
    dense Adam's trajectory can be reproduced exactly by replaying skipped steps late."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(40, 6)
        self.register_buffer("direction", torch.randn(6))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.table(ids) * self.direction).sum()


def _train_toys(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor],
                lrs: list[float]) -> None:
    for ids, lr in zip(batches, lrs, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        model(ids).backward()
        optimizer.step()


@pytest.mark.parametrize("embedding_weight_decay", [0.0, 0.2])
def test_replay_skipped_steps_lands_where_dense_adamw_does(embedding_weight_decay):
    """Few rows per batch, a changing learning rate, gradients that do not depend on the rows'
    values: after `flush()` the sparse table is where torch's dense AdamW puts it; without the
    replay it is not. (Where the gradient depends on the rows, a returning row's gradient is taken
    before its skipped steps are applied, so the trajectories differ by that delay.)"""
    config = OptimConfig(lr=0.02, embedding_weight_decay=embedding_weight_decay)
    batches = [torch.randint(0, 40, (3,), generator=torch.Generator().manual_seed(i)) for i in range(40)]
    lrs = [0.02 * (1 - i / 50) for i in range(40)]
    reference = LinearInTable()
    _train_toys(reference, make_optimizer([reference], OptimConfig(**{**config.__dict__, "sparse_embeddings": False})),
                batches, lrs)
    for replay in (True, False):
        ours = LinearInTable()
        lazy = make_optimizer([ours], OptimConfig(**{**config.__dict__, "replay_skipped_steps": replay}))
        _train_toys(ours, lazy, batches, lrs)
        lazy.flush()
        gap = (ours.table.weight - reference.table.weight).abs().max().item()
        assert (gap < 1e-5) if replay else (gap > 1e-3), (replay, gap)  # float32 tables


def test_replay_survives_a_state_dict_round_trip_after_flush():
    a, b = Toy(), Toy()
    config = OptimConfig(lr=0.05, replay_skipped_steps=True)
    opt_a = make_optimizer([a], config)
    batches = [torch.randint(0, 40, (4,), generator=torch.Generator().manual_seed(i)) for i in range(8)]
    _train_toys(a, opt_a, batches[:4], [0.05] * 4)
    opt_a.flush()
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer([b], config)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for model, opt in ((a, opt_a), (b, opt_b)):
        _train_toys(model, opt, batches[4:], [0.05] * 4)
        opt.flush()
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_replay_refuses_adam_l2_decay_on_tables():
    with pytest.raises(ValueError, match="replay_skipped_steps"):
        OptimConfig(optimizer="adam", embedding_weight_decay=0.1, replay_skipped_steps=True).validate()
    model = Toy()
    model.table.sparse = True
    opt = LazyAdam([{"params": [model.table.weight], "weight_decay": 0.1}], decoupled=False, replay_skipped=True)
    model(torch.tensor([1, 2])).backward()
    with pytest.raises(ValueError, match="decoupled weight decay"):
        opt.step()


def test_a_run_with_replay_resumes_to_the_same_results(tmp_path, monkeypatch):
    """Checkpoints are written after `flush()`, so a resumed run rebuilds the replay's state (every
    row current at the checkpoint's step) and ends where an uninterrupted run does."""
    config = tiny_config(epochs=3)
    config.optim = dataclasses.replace(config.optim, replay_skipped_steps=True)
    straight, resumed = straight_and_resumed(config, tmp_path, monkeypatch)
    assert resumed.valid.metrics == straight.valid.metrics
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
