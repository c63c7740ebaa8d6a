"""bag_mean (Numba) and its eager fallback against the float64 oracle: pooled rows and the table's
gradient, dense and sparse, with and without a keep mask, on ragged bags (empty ones included),
repeated rows and bags whose entries are all dropped."""

from __future__ import annotations

import pytest
import torch

from twotower.kernels.bag_mean import bag_mean
from twotower.kernels.bag_mean_eager import bag_mean_eager

from . import oracles

# (B, D, V); the largest runs in CI only (-m slow)
SHAPES = [(1, 1, 1), (5, 3, 1), (7, 9, 40), (130, 33, 300), pytest.param(64, 64, 1000, marks=pytest.mark.slow)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6}


def _inputs(B, D, V, seed, max_len=12):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, D, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, max_len + 1, (B,), generator=g)
    offsets = torch.zeros(B + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    values = torch.randint(0, V, (int(offsets[-1]),), generator=g)
    keep = torch.rand(values.shape, generator=g) > 0.4
    upstream = torch.randn(B, D, generator=g, dtype=torch.float64)
    return table, values, offsets, keep, upstream


@pytest.mark.parametrize("impl", [bag_mean, bag_mean_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,D,V", SHAPES, ids=lambda v: str(v))
def test_matches_float64_oracle(B, D, V, dtype, sparse, masked, impl):
    table, values, offsets, keep, upstream = _inputs(B, D, V, seed=B * 11 + D + V)
    keep = keep if masked else None
    results = []
    for fn, dt, kwargs in ((impl, dtype, {"sparse": sparse}), (oracles.bag_mean, torch.float64, {})):
        t = table.to(dt, copy=True).requires_grad_()
        out = fn(t, values, offsets, keep, **kwargs)
        (out.double() * upstream).sum().backward()
        results.append((out.detach().double(), t.grad.to_dense().double(), t.grad.is_sparse))
    assert results[0][2] == sparse
    for got, want in zip(results[0][:2], results[1][:2], strict=True):
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
        torch.testing.assert_close(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)


def test_sparse_gradient_has_one_row_per_distinct_kept_row():
    table, _, _, _, upstream = _inputs(4, 3, 10, seed=1)
    values = torch.tensor([2, 2, 5, 2, 7, 5, 9])
    offsets = torch.tensor([0, 3, 5, 5, 7])
    keep = torch.tensor([True, True, True, True, True, True, False])  # row 9 dropped: no gradient row
    t = table.clone().requires_grad_()
    (bag_mean(t, values, offsets, keep, sparse=True) * upstream).sum().backward()
    rows = t.grad._indices()[0].tolist()
    assert sorted(rows) == [2, 5, 7]
    # row 2: two thirds of bag 0's gradient and half of bag 1's
    torch.testing.assert_close(t.grad.to_dense()[2], upstream[0] * 2 / 3 + upstream[1] / 2)


def test_empty_and_fully_dropped_bags_give_zeros():
    table = torch.randn(5, 4, dtype=torch.float64)
    values, offsets = torch.tensor([1, 3]), torch.tensor([0, 0, 2])
    out = bag_mean(table, values, offsets, torch.tensor([False, False]))
    assert torch.equal(out, torch.zeros(2, 4, dtype=torch.float64))


def test_deterministic_bit_for_bit():
    table, values, offsets, keep, upstream = _inputs(200, 32, 50, seed=4)
    grads = []
    for _ in range(2):
        t = table.float().requires_grad_()
        (bag_mean(t, values, offsets, keep, sparse=True) * upstream.float()).sum().backward()
        grads.append(t.grad.to_dense())
    assert torch.equal(grads[0], grads[1])


def test_half_precision_goes_through_the_eager_path():
    table, values, offsets, keep, _ = _inputs(6, 8, 9, seed=5)
    out = bag_mean(table.bfloat16(), values, offsets, keep)
    assert out.dtype == torch.bfloat16 and torch.equal(out, bag_mean_eager(table.bfloat16(), values, offsets, keep))
    torch.testing.assert_close(out.double(), oracles.bag_mean(table, values, offsets, keep), rtol=3e-2, atol=3e-2)


def test_double_backward_is_refused():
    table, values, offsets, _, _ = _inputs(3, 2, 4, seed=6)
    t = table.clone().requires_grad_()
    out = bag_mean(t, values, offsets).sum()
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(out, t, create_graph=True)


@pytest.mark.parametrize(
    "values,offsets,keep,error,match",
    [
        (torch.tensor([0, 4]), torch.tensor([0, 2]), None, IndexError, r"values\[1\] = 4"),
        (torch.tensor([0, -1]), torch.tensor([0, 2]), None, IndexError, r"values\[1\] = -1"),
        (torch.tensor([0, 1]), torch.tensor([0, 3]), None, ValueError, "end at len"),
        (torch.tensor([0, 1]), torch.tensor([0, 2, 1, 2]), None, ValueError, "non-decreasing"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 2]), None, TypeError, "values must be a 1-d integer"),
        (torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([1, 0]), TypeError, "keep"),
    ],
)
def test_bad_arguments_are_named(values, offsets, keep, error, match):
    with pytest.raises(error, match=match):
        bag_mean(torch.randn(4, 3), values, offsets, keep)
