"""embedding_scores (Numba: lookup + optional L2 normalisation + scoring in one pass) and its eager
fallback against the float64 oracle: scores, the query gradient and the table gradient (sparse
and dense), on ragged shapes, repeated ids, unused table rows, zero rows and rows below eps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.kernels.embedding_scores import embedding_scores
from twotower.kernels.embedding_scores_eager import embedding_scores_eager

from . import oracles

# (B, C, D, R, U): batch rows, candidates per row, width, table rows, ids
SHAPES = [(1, 1, 1, 1, 1), (3, 0, 5, 4, 2), (7, 17, 1, 30, 9), (130, 5, 33, 500, 300), (64, 3, 130, 50, 40),
          pytest.param(300, 17, 64, 2000, 1500, marks=pytest.mark.slow)]  # the largest: CI only
TOLERANCE = {torch.float64: 1e-12, torch.float32: 3e-5}  # float32: roundings of float32 sums (rel.)


def _inputs(B, C, D, R, U, seed):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, D, generator=g, dtype=torch.float64)
    weight = (torch.randn(R, D, generator=g, dtype=torch.float64)
              * torch.rand(R, 1, generator=g, dtype=torch.float64) * 3)
    weight[0] = 0.0  # a zero row: its normalised copy is 0 and its derivative g / eps
    ids = torch.randint(0, R, (U,), generator=g)  # repeats allowed, many table rows unused
    index = torch.randint(0, U, (B, C), generator=g)
    upstream = torch.randn(B, C, generator=g, dtype=torch.float64)
    return query, weight, ids, index, upstream


def _run(fn, query, weight, ids, index, upstream, dtype, normalize, sparse, eps=1e-6):
    # copies: `.to` of a float64 tensor to float64 is the tensor itself, whose .grad the next run would add to
    q, w = query.to(dtype, copy=True).requires_grad_(), weight.to(dtype, copy=True).requires_grad_()
    if sparse is None:  # the oracle: dense gradients
        out = fn(q, w, ids, index, normalize=normalize, eps=eps)
    else:
        out = fn(q, w, ids, index, normalize=normalize, eps=eps, sparse=sparse)
    (out.double() * upstream).sum().backward()
    assert w.grad.is_sparse == bool(sparse)
    return out.detach().double(), q.grad.double(), w.grad.to_dense().double()


@pytest.mark.parametrize("impl", [embedding_scores, embedding_scores_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("B,C,D,R,U", SHAPES, ids=lambda v: str(v))
def test_matches_float64_oracle(B, C, D, R, U, dtype, normalize, sparse, impl):
    inputs = _inputs(B, C, D, R, U, seed=B * 7 + C + D + R)
    got = _run(impl, *inputs, dtype, normalize, sparse)
    want = _run(oracles.embedding_scores, *inputs, torch.float64, normalize, None)
    for g, w in zip(got, want, strict=True):
        scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
        torch.testing.assert_close(g, w, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)


def test_rows_below_eps_are_scaled_not_normalised():
    weight = torch.tensor([[1e-8, 0.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    out = embedding_scores(query, weight, torch.tensor([0, 1]), torch.tensor([[0, 1]]), normalize=True, eps=1e-4)
    torch.testing.assert_close(out.detach(), torch.tensor([[1e-4, 0.6]], dtype=torch.float64))
    out[0, 0].backward()
    assert weight.grad.to_dense()[0, 0] == pytest.approx(1e4)


def test_only_the_needed_gradient_is_formed():
    query, weight, ids, index, _ = _inputs(9, 4, 8, 12, 5, seed=6)
    w = weight.clone().requires_grad_()
    embedding_scores(query, w, ids, index, normalize=True).sum().backward()
    want = weight.clone().requires_grad_()
    oracles.embedding_scores(query, want, ids, index, normalize=True).sum().backward()
    torch.testing.assert_close(w.grad.to_dense(), want.grad)
    q = query.clone().requires_grad_()
    embedding_scores(q, weight, ids, index, normalize=True).sum().backward()
    q_ref = query.clone().requires_grad_()
    oracles.embedding_scores(q_ref, weight, ids, index, normalize=True).sum().backward()
    torch.testing.assert_close(q.grad, q_ref.grad)


def test_deterministic_bit_for_bit():
    query, weight, ids, index, upstream = _inputs(200, 12, 40, 100, 60, seed=8)
    grads = []
    for _ in range(2):
        q, w = query.float().requires_grad_(), weight.float().requires_grad_()
        (embedding_scores(q, w, ids, index, normalize=True) * upstream.float()).sum().backward()
        grads.append((q.grad, w.grad.to_dense()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_non_contiguous_inputs_and_int32_indices():
    query, weight, ids, index, _ = _inputs(20, 6, 10, 25, 15, seed=5)
    q_t = query.t().contiguous().t()
    w_wide = torch.cat([weight, weight], dim=1)[:, ::2]
    got = embedding_scores(q_t, w_wide, ids.int(), index.int(), normalize=True)
    torch.testing.assert_close(got, oracles.embedding_scores(query, w_wide.contiguous(), ids, index, normalize=True))


def test_half_precision_goes_through_the_eager_path():
    query, weight, ids, index, _ = _inputs(6, 3, 8, 10, 4, seed=9)
    out = embedding_scores(query.bfloat16(), weight.bfloat16(), ids, index, normalize=False)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, embedding_scores_eager(query.bfloat16(), weight.bfloat16(), ids, index, normalize=False))
    want = oracles.embedding_scores(query, weight, ids, index, normalize=False)
    torch.testing.assert_close(out.double(), want, rtol=3e-2, atol=5e-2)


def _bad(**change):
    args = {"query": torch.randn(2, 3), "weight": torch.randn(4, 3), "ids": torch.tensor([0, 3]),
            "index": torch.tensor([[0], [1]]), "normalize": True}
    args.update(change)
    return args


@pytest.mark.parametrize(
    "args,error,match",
    [
        (_bad(ids=torch.tensor([0, 4])), IndexError, r"ids\[1\] = 4 is outside \[0, 4\)"),
        (_bad(ids=torch.tensor([-1, 0])), IndexError, r"ids\[0\] = -1"),
        (_bad(index=torch.tensor([[0], [2]])), IndexError, r"index\[1, 0\] = 2 is outside \[0, 2\)"),
        (_bad(weight=torch.randn(4, 2)), ValueError, "D = 2"),
        (_bad(index=torch.tensor([[0]])), ValueError, "index has 1 rows"),
        (_bad(weight=torch.randn(4, 3).double()), TypeError, "weight"),
        (_bad(ids=torch.tensor([0.0, 1.0])), TypeError, "ids must be an integer"),
        (_bad(ids=torch.tensor([[0, 1]])), ValueError, r"ids \[U\]"),
        (_bad(query=np.zeros((2, 3), np.float32)), TypeError, "query"),
        (_bad(eps=0.0), ValueError, "eps must be > 0"),
    ],
)
def test_bad_arguments_are_named(args, error, match):
    with pytest.raises(error, match=match):
        embedding_scores(**args)
