"""l2_normalize (Numba) and its eager fallback (F.normalize) against the float64 oracle: values and
gradients, including zero rows and rows below eps, where the clamped derivative applies."""

from __future__ import annotations

import pytest
import torch

from twotower.kernels.l2_normalize import l2_normalize
from twotower.kernels.l2_normalize_eager import l2_normalize_eager

from . import oracles

TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6}


@pytest.mark.parametrize("impl", [l2_normalize, l2_normalize_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N,D", [(1, 1), (5, 3), (130, 64), (300, 130), (17, 257)])
def test_matches_float64_oracle(N, D, dtype, impl):
    g = torch.Generator().manual_seed(N * 13 + D)
    x = torch.randn(N, D, generator=g, dtype=torch.float64) * torch.rand(N, 1, generator=g, dtype=torch.float64) * 5
    x[0] = 0.0  # a zero row stays zero and takes the g / eps derivative
    upstream = torch.randn(N, D, generator=g, dtype=torch.float64)
    results = []
    for fn, dt in ((impl, dtype), (oracles.l2_normalize, torch.float64)):
        inp = x.to(dt, copy=True).requires_grad_()  # a copy: each run its own .grad
        out = fn(inp, eps=1e-6)
        (out.double() * upstream).sum().backward()
        results.append((out.detach().double(), inp.grad.double()))
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=tol, atol=tol)
    scale = float(results[1][1].abs().max())
    torch.testing.assert_close(results[0][1], results[1][1], rtol=tol, atol=tol * scale)


def test_rows_below_eps_are_scaled_not_normalised():
    x = torch.tensor([[1e-8, 0.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    y = l2_normalize(x, eps=1e-4)
    torch.testing.assert_close(y.detach(), torch.tensor([[1e-4, 0.0], [0.6, 0.8]], dtype=torch.float64))
    y[0, 0].backward()
    assert x.grad[0, 0] == pytest.approx(1e4)


def test_non_contiguous_and_half_precision_inputs():
    x = torch.randn(6, 10)
    got = l2_normalize(x.t().contiguous().t())
    torch.testing.assert_close(got.double(), oracles.l2_normalize(x), rtol=1e-6, atol=1e-6)
    h = l2_normalize(x.bfloat16())
    assert h.dtype == torch.bfloat16 and torch.equal(h, l2_normalize_eager(x.bfloat16()))


@pytest.mark.parametrize("bad,error", [(torch.randn(3), TypeError), (torch.ones(2, 2, dtype=torch.long), TypeError)])
def test_bad_input(bad, error):
    with pytest.raises(error, match="2-d floating"):
        l2_normalize(bad)


def test_eps_must_be_positive():
    with pytest.raises(ValueError, match="eps"):
        l2_normalize(torch.ones(2, 2), eps=0.0)
