"""LazyAdam (row-sparse steps for sparse-gradient tables, torch's Adam/AdamW for the rest) and
gradient clipping over sparse gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from twotower.settings import OptimConfig
from twotower.training.optim import LazyAdam, clip_grad_norm, make_optimizer


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
    a, b = Toy(), Toy()
    opt_a = make_optimizer([a], OptimConfig(lr=0.05))
    batches = [torch.randint(0, 40, (8,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for ids in batches[:2]:
        opt_a.zero_grad()
        a(ids).backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer([b], OptimConfig(lr=0.05))
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
