"""LazyAdam (row-sparse steps for sparse-gradient tables, torch's Adam/AdamW for the rest) and
gradient clipping over sparse gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from twotower.config import OptimConfig
from twotower.optim import LazyAdam, clip_grad_norm, make_optimizer


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
    for a, b in zip(ours.parameters(), theirs.parameters()):
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
        opt_a.zero_grad(); a(ids).backward(); opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer([b], OptimConfig(lr=0.05))
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a checkpoint file
    for ids in batches[2:]:
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(); model(ids).backward(); opt.step()
    for x, y in zip(a.parameters(), b.parameters()):
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
    from twotower import train

    cpu = torch.device("cpu")
    monkeypatch.setattr(train.os, "cpu_count", lambda: 8)
    assert train.step_threads(0, cpu) == 7
    assert train.step_threads(3, cpu) == 3  # an explicit setting wins
    monkeypatch.setattr(train.os, "cpu_count", lambda: 1)
    assert train.step_threads(0, cpu) == 1
    monkeypatch.setattr(train.os, "cpu_count", lambda: None)
    assert train.step_threads(0, cpu) == 1


class Wide(nn.Module):
    """A 5000 x 64 sparse table: a step over 4500 rows is large enough for the background."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.table = nn.Embedding(5000, 64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).pow(2).sum(dim=1).sqrt().sum()


def _record_threads(monkeypatch) -> list[str]:
    import threading

    import twotower.optim as optim_module

    names: list[str] = []
    real = optim_module.sparse_adam

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(optim_module, "sparse_adam", recording)
    return names


def test_background_updates_match_inline_ones_bit_for_bit(monkeypatch):
    names = _record_threads(monkeypatch)
    inline, background = Wide(), Wide()
    opt_inline = make_optimizer([inline], OptimConfig(lr=0.05))
    opt_background = make_optimizer([background], OptimConfig(lr=0.05))
    opt_background.update_in_background([background.table.weight])
    generator = torch.Generator().manual_seed(3)
    sizes = [4500, 10, 4500, 4500, 7]  # 10 and 7 rows: too small for the hand-over, stay inline
    for size in sizes:
        ids = torch.randint(0, 5000, (size,), generator=generator)
        for model, opt in ((inline, opt_inline), (background, opt_background)):
            opt.zero_grad(set_to_none=True)
            model(ids).backward()
            opt.step()
        # state_dict waits for the pending update, so it always sees the finished step
        a, b = opt_inline.state_dict()["state"][0], opt_background.state_dict()["state"][0]
        assert all(torch.equal(a[key], b[key]) for key in ("step", "exp_avg", "exp_avg_sq"))
    opt_background.synchronize()
    assert torch.equal(inline.table.weight, background.table.weight)
    on_worker = [name.startswith("twotower-lazyadam") for name in names[1::2]]  # the background model's calls
    assert on_worker == [size * 64 >= 1 << 18 for size in sizes]


def test_a_failed_background_update_is_raised_by_synchronize(monkeypatch):
    import twotower.optim as optim_module

    model = Wide()
    opt = make_optimizer([model], OptimConfig(lr=0.05))
    opt.update_in_background([model.table.weight])

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(optim_module, "sparse_adam", broken)
    model(torch.arange(4500)).backward()
    opt.step()  # returns: the update runs on the worker
    with pytest.raises(RuntimeError, match="kernel failed"):
        opt.synchronize()
    opt.synchronize()  # reported once


def test_update_in_background_takes_only_this_optimizers_tables():
    model, other = Wide(), Wide()
    opt = make_optimizer([model], OptimConfig())
    with pytest.raises(ValueError, match="update_in_background"):
        opt.update_in_background([other.table.weight])
