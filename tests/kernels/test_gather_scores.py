"""gather_scores (Numba) and its eager fallback against the float64 oracle: scores and both
gradients, on ragged shapes, repeated rows and every row of `vectors` unused or used many times."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.kernels.gather_scores import gather_scores
from twotower.kernels.gather_scores_eager import gather_scores_eager

from . import oracles

SHAPES = [(1, 1, 1, 1), (3, 0, 5, 2), (7, 17, 1, 9), (130, 5, 33, 300), (64, 3, 130, 1000),
          pytest.param(300, 40, 64, 64, marks=pytest.mark.slow)]  # the largest: CI only
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}  # float32: one rounding of float64 sums (rel.)


def _inputs(B, C, D, U, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, D, generator=g, dtype=torch.float64)
    vectors = torch.randn(U, D, generator=g, dtype=torch.float64)
    index = torch.randint(0, U, (B, C), generator=g)
    upstream = torch.randn(B, C, generator=g, dtype=torch.float64)
    return query, vectors, index, upstream


@pytest.mark.parametrize("impl", [gather_scores, gather_scores_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,C,D,U", SHAPES, ids=lambda v: str(v))
def test_matches_float64_oracle(B, C, D, U, dtype, impl):
    query, vectors, index, upstream = _inputs(B, C, D, U, seed=B * 7 + C + D, dtype=dtype)
    results = []
    for fn, dt in ((impl, dtype), (oracles.gather_scores, torch.float64)):
        q = query.to(dt, copy=True).requires_grad_()  # copies: each run its own .grad
        v = vectors.to(dt, copy=True).requires_grad_()
        out = fn(q, v, index)
        (out.double() * upstream).sum().backward()
        results.append((out.detach().double(), q.grad.double(), v.grad.double()))
    for got, want in zip(*results, strict=True):
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
        torch.testing.assert_close(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)


def test_heavily_repeated_rows_accumulate_every_contribution():
    # every row points at the same two vectors: their gradients sum B * C / 2 contributions each
    query, vectors, _, upstream = _inputs(500, 8, 16, 2, seed=3, dtype=torch.float64)
    index = torch.arange(500 * 8).remainder(2).view(500, 8)
    v1, v2 = vectors.clone().requires_grad_(), vectors.clone().requires_grad_()
    (gather_scores(query, v1, index) * upstream).sum().backward()
    (oracles.gather_scores(query, v2, index) * upstream).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-12, atol=1e-10)


def test_non_contiguous_inputs_and_int32_index():
    query, vectors, index, _ = _inputs(20, 6, 10, 15, seed=5, dtype=torch.float64)
    q_t = query.t().contiguous().t()  # same values, column-major strides
    v_wide = torch.cat([vectors, vectors], dim=1)[:, ::2]
    torch.testing.assert_close(
        gather_scores(q_t, v_wide, index.int()), oracles.gather_scores(query, v_wide.contiguous(), index)
    )


def test_only_the_needed_gradient_is_formed():
    query, vectors, index, _ = _inputs(9, 4, 8, 5, seed=6, dtype=torch.float64)
    v = vectors.clone().requires_grad_()
    gather_scores(query, v, index).sum().backward()
    want = vectors.clone().requires_grad_()
    oracles.gather_scores(query, want, index).sum().backward()
    torch.testing.assert_close(v.grad, want.grad)


def test_deterministic_bit_for_bit():
    query, vectors, index, upstream = _inputs(200, 12, 40, 30, seed=8, dtype=torch.float32)
    grads = []
    for _ in range(2):
        q, v = query.float().requires_grad_(), vectors.float().requires_grad_()
        (gather_scores(q, v, index) * upstream.float()).sum().backward()
        grads.append((q.grad, v.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_half_precision_goes_through_the_eager_path():
    query, vectors, index, _ = _inputs(6, 3, 8, 4, seed=9, dtype=torch.float64)
    out = gather_scores(query.bfloat16(), vectors.bfloat16(), index)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, gather_scores_eager(query.bfloat16(), vectors.bfloat16(), index))
    torch.testing.assert_close(out.double(), oracles.gather_scores(query, vectors, index), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "query,vectors,index,error,match",
    [
        (torch.randn(2, 3), torch.randn(4, 3), torch.tensor([[0], [4]]), IndexError, r"index\[1, 0\] = 4"),
        (torch.randn(2, 3), torch.randn(4, 3), torch.tensor([[0], [-1]]), IndexError, r"index\[1, 0\] = -1"),
        (torch.randn(2, 3), torch.randn(4, 2), torch.tensor([[0], [1]]), ValueError, "D = 2"),
        (torch.randn(2, 3), torch.randn(4, 3), torch.tensor([[0]]), ValueError, "index has 1 rows"),
        (torch.randn(2, 3), torch.randn(4, 3).double(), torch.tensor([[0], [1]]), TypeError, "vectors"),
        (torch.randn(2, 3), torch.randn(4, 3), torch.tensor([[0.0], [1.0]]), TypeError, "integer"),
        (torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1]), ValueError, "2-d"),
        (np.zeros((2, 3), np.float32), torch.randn(4, 3), torch.tensor([[0], [1]]), TypeError, "query"),
    ],
)
def test_bad_arguments_are_named(query, vectors, index, error, match):
    with pytest.raises(error, match=match):
        gather_scores(query, vectors, index)
