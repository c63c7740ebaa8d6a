"""sparse_adam (Numba) and its eager fallback against the float64 oracle (Adam written element by
element), and against torch's own Adam/AdamW where every row is touched (then lazy and dense Adam
agree exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.kernels.sparse_adam import sparse_adam
from twotower.kernels.sparse_adam_eager import sparse_adam_eager

from . import oracles


def _state(rows: int, dim: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, dim, generator=g, dtype=dtype), torch.randn(rows, dim, generator=g, dtype=dtype) * 0.1,
            torch.rand(rows, dim, generator=g, dtype=dtype) * 0.01)


def _slots(impl, R):
    return {"slots": np.full(R, -1, dtype=np.int64)} if impl is sparse_adam else {}


@pytest.mark.parametrize("impl", [sparse_adam, sparse_adam_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("R,D,P", [(1, 1, 1), (7, 3, 20), (50, 17, 9), (300, 64, 1000), (1000, 130, 33)])
def test_matches_float64_oracle_over_several_steps(R, D, P, decoupled, dtype, tol, impl):
    got = [t.to(dtype) for t in _state(R, D, seed=R + D)]
    want = [t.clone() for t in _state(R, D, seed=R + D)]
    scratch = _slots(impl, R)
    for step in range(1, 4):
        g = torch.Generator().manual_seed(step * 31 + P)
        rows = torch.randint(0, R, (P,), generator=g)  # repeats when P > R or by chance
        grads = torch.randn(P, D, generator=g, dtype=torch.float64)
        kwargs = {
            "step": step, "lr": 0.03, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1,
            "decoupled": decoupled
        }
        impl(*got, rows, grads.to(dtype), **scratch, **kwargs)
        want = [torch.from_numpy(t) for t in oracles.sparse_adam(*want, rows, grads, **kwargs)]
        assert all((s == -1).all() for s in scratch.values()), "the scratch must come back clean"
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


@pytest.mark.parametrize("R", [40, 5000])  # a dense scan of the slots, and a sort of few rows
def test_a_few_repeated_rows_among_single_ones(R):
    # the trainer's case: most rows once, the unknown-id row (here R - 1) and a few others repeated
    got, want = _state(R, 16, seed=3), _state(R, 16, seed=3)
    g = torch.Generator().manual_seed(4)
    rows = torch.cat([torch.randperm(R - 1, generator=g)[:30], torch.tensor([R - 1, 5, R - 1, 7, R - 1])])
    rows = rows[torch.randperm(rows.numel(), generator=g)]
    grads = torch.randn(rows.numel(), 16, generator=g, dtype=torch.float64)
    slots = np.full(R, -1, dtype=np.int64)
    sparse_adam(*got, rows, grads, step=1, lr=0.01, slots=slots)
    want = [torch.from_numpy(t) for t in oracles.sparse_adam(*want, rows, grads, step=1, lr=0.01)]
    assert (slots == -1).all()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_untouched_rows_are_left_alone():
    param, m, v = _state(20, 4, seed=1)
    before = [t.clone() for t in (param, m, v)]
    sparse_adam(
        param, m, v, torch.tensor([3, 3, 11]), torch.randn(3, 4, dtype=torch.float64), step=5, lr=0.1, weight_decay=0.5
    )
    untouched = [r for r in range(20) if r not in (3, 11)]
    for now, then in zip((param, m, v), before, strict=True):
        assert torch.equal(now[untouched], then[untouched])
        assert not torch.equal(now[[3, 11]], then[[3, 11]])


@pytest.mark.parametrize("optimizer,decoupled", [(torch.optim.AdamW, True), (torch.optim.Adam, False)])
def test_touching_every_row_is_torch_adam(optimizer, decoupled):
    weight = torch.randn(30, 8, dtype=torch.float64)
    dense = weight.clone().requires_grad_()
    opt = optimizer([dense], lr=0.01, weight_decay=0.05)
    param, m, v = weight.clone(), torch.zeros_like(weight), torch.zeros_like(weight)
    for step in range(1, 6):
        grad = torch.randn(30, 8, dtype=torch.float64)
        dense.grad = grad.clone()
        opt.step()
        order = torch.randperm(30)
        sparse_adam(param, m, v, order, grad[order], step=step, lr=0.01, weight_decay=0.05, decoupled=decoupled)
    torch.testing.assert_close(param, dense.detach(), rtol=1e-12, atol=1e-12)


def test_non_contiguous_table_goes_through_the_eager_path():
    param, m, v = _state(10, 6, seed=2)
    wide = torch.stack([param, param], dim=2)[:, :, 0]  # same values, strided
    assert not wide.is_contiguous()
    want = [param.clone(), m.clone(), v.clone()]
    rows, grads = torch.tensor([1, 4, 1]), torch.randn(3, 6, dtype=torch.float64)
    oracle = oracles.sparse_adam(*want, rows, grads, step=1, lr=0.1)
    sparse_adam(wide, m, v, rows, grads, step=1, lr=0.1)
    sparse_adam_eager(*want, rows, grads, step=1, lr=0.1)
    assert torch.equal(wide, want[0])
    torch.testing.assert_close(wide, torch.from_numpy(oracle[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "rows,grads,step,error,match",
    [
        (torch.tensor([0, 10]), torch.zeros(2, 3), 1, IndexError, r"rows\[1\] = 10"),
        (torch.tensor([-1]), torch.zeros(1, 3), 1, IndexError, r"rows\[0\] = -1"),
        (torch.tensor([0.0]), torch.zeros(1, 3), 1, TypeError, "rows must be a 1-d integer"),
        (torch.tensor([0]), torch.zeros(1, 4), 1, ValueError, r"grads must be \[P, D\]"),
        (torch.tensor([0]), torch.zeros(1, 3), 0, ValueError, "step must be an int >= 1"),
    ],
)
def test_bad_arguments_are_named_and_nothing_changes(rows, grads, step, error, match):
    param, m, v = (torch.zeros(10, 3) for _ in range(3))
    with pytest.raises(error, match=match):
        sparse_adam(param, m, v, rows, grads, step=step, lr=0.1)
    assert not param.any() and not m.any() and not v.any()


@pytest.mark.parametrize(
    "hyper,match",
    [
        ({"beta1": 1.0}, "beta1 out of range"),
        ({"beta2": -0.1}, "beta2 out of range"),
        ({"lr": float("inf")}, "lr out of range"),
        ({"eps": 0.0}, "eps out of range"),
        ({"weight_decay": float("nan")}, "weight_decay out of range"),
    ],
)
def test_hyper_parameters_out_of_range_are_named(hyper, match):
    param, m, v = (torch.zeros(10, 3) for _ in range(3))
    with pytest.raises(ValueError, match=match):
        sparse_adam(param, m, v, torch.tensor([1]), torch.ones(1, 3), step=1, **{"lr": 0.1, **hyper})
    assert not param.any() and not m.any() and not v.any()


@pytest.mark.parametrize("dirty", ["untouched rows, dense scan", "a touched row", "a repeat mark", "wrong dtype"])
def test_dirty_slots_are_refused_before_anything_is_updated(dirty):
    """`slots` must come back from a previous call (all -1): anything else was a crash (the dense scan
    wrote past `order`) or a silently skipped row; now a named error, nothing updated, slots reusable."""
    num_rows = 200
    param, m, v = (torch.zeros(num_rows, 3) for _ in range(3))
    rows = torch.arange(0, 60) if dirty.startswith("untouched") else torch.tensor([3, 5, 3])
    grads = torch.ones(len(rows), 3)
    slots = np.full(num_rows, -1, dtype=np.int64)
    if dirty.startswith("untouched"):
        slots[100:] = 7
    elif dirty == "a touched row":
        slots[5] = 0  # claims position 0, which holds row 3
    elif dirty == "a repeat mark":
        slots[5] = -2  # a side slot no repeat of this call made
    else:
        slots = slots.astype(np.int32)
    with pytest.raises(ValueError, match="slots must be"):
        sparse_adam(param, m, v, rows, grads, step=1, lr=0.1, slots=slots)
    assert not param.any() and not m.any() and not v.any()
    if slots.dtype == np.int64:
        assert (slots == -1).all()
        sparse_adam(param, m, v, rows, grads, step=1, lr=0.1, slots=slots)  # usable again
        assert param[rows].ne(0).all() and (slots == -1).all()
