"""The row-blocked CPU InfoNCE and the eager fallback against the float64 oracle: loss and every
gradient."""

from __future__ import annotations

import pytest
import torch

from twotower.kernels import infonce_cpu
from twotower.kernels.infonce import infonce
from twotower.kernels.infonce_eager import infonce_eager

from . import oracles

CASES = [  # (B, M, D, options)
    (1, 0, 8, {}),
    (7, 5, 16, {"logq": True}),
    (130, 0, 33, {"masks": True}),
    (300, 70, 64, {"logq": True, "masks": True}),
    (300, 70, 64, {"logq": True, "masks": True, "correct_positive": False}),
    (64, 300, 96, {"logq": True, "masks": True, "query_ids": True}),
]


def make(B, M, D, options, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, D, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(B, D, generator=g, dtype=dtype).requires_grad_()
    extra = torch.randn(M, D, generator=g, dtype=dtype).requires_grad_() if M else None
    kwargs = {"extra": extra}
    if options.get("logq"):
        kwargs["logq"] = -torch.rand(B, generator=g, dtype=dtype) * 5
        kwargs["logq_extra"] = -torch.rand(M, generator=g, dtype=dtype) * 5 if M else None
    if options.get("masks"):
        kwargs["item_ids"] = torch.randint(0, max(2, B // 3), (B,), generator=g)  # many accidental hits
        kwargs["extra_ids"] = torch.randint(0, max(2, B // 3), (M,), generator=g) if M else None
    if options.get("query_ids"):
        kwargs["query_ids"] = torch.randint(0, max(2, B // 4), (B,), generator=g)
    kwargs["correct_positive"] = options.get("correct_positive", True)
    return q, k, extra, kwargs


def _ids(case):
    return f"B{case[0]}-M{case[1]}-D{case[2]}-{'+'.join(case[3]) or 'plain'}"


IMPLS = {"blocked-softmax-kept": (infonce_cpu.infonce_blocked, 1 << 30),
         "blocked-recomputed": (infonce_cpu.infonce_blocked, 0), "eager": (infonce_eager, 0)}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_oracle(case, reduction, impl, monkeypatch):
    B, M, D, options = case
    implementation, keep_elements = IMPLS[impl]
    monkeypatch.setattr(infonce_cpu, "_BLOCK_ELEMENTS", 257)  # many row blocks even at small sizes
    monkeypatch.setattr(infonce_cpu, "_KEEP_ELEMENTS", keep_elements)
    grads = []
    for fn in (implementation, oracles.infonce):
        q, k, extra, kwargs = make(B, M, D, options, seed=B * 1000 + M)
        temperature = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
        loss = fn(q, k, temperature=temperature, reduction=reduction, **kwargs)
        upstream = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
        (loss * upstream).sum().backward()
        grads.append((loss.detach(), q.grad, k.grad, None if extra is None else extra.grad, temperature.grad))
    for got, want in zip(*grads, strict=True):
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(grads[0][0]).all()


@pytest.mark.parametrize("case", CASES[1:4], ids=_ids)
def test_symmetric_eager_matches_float64_oracle(case):
    """`symmetric=True` on the CPU runs the eager path: its item -> query term against the oracle's."""
    results = []
    for fn in (infonce_eager, oracles.infonce):
        q, k, extra, kwargs = make(*case, seed=7)
        loss = fn(q, k, temperature=0.2, symmetric=True, reduction="none", **kwargs)
        loss.sum().backward()
        results.append((loss.detach(), q.grad, k.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_float32_matches_float64_oracle_and_dispatches_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, extra, kwargs = make(200, 100, 64, {"logq": True, "masks": True}, seed=3)
    want = oracles.infonce(q, k, temperature=0.1, **kwargs)
    called = []
    real = infonce_cpu.infonce_blocked
    monkeypatch.setattr("twotower.kernels.infonce.infonce_blocked", lambda *a, **kw: called.append(1) or real(*a, **kw))
    q32, k32 = q.detach().float(), k.detach().float()
    kwargs32 = {
        **kwargs, "extra": extra.detach().float(), "logq": kwargs["logq"].float(),
        "logq_extra": kwargs["logq_extra"].float()
    }
    got = infonce(q32, k32, temperature=0.1, **kwargs32)
    assert called == [1] and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-6)
    sym = infonce(q32, k32, temperature=0.1, symmetric=True, **kwargs32)  # symmetric: the eager path
    assert called == [1] and torch.isfinite(sym)


def test_row_with_every_negative_masked_has_zero_loss_and_gradient():
    q = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = infonce_cpu.infonce_blocked(q, k, temperature=0.5, item_ids=torch.tensor([5, 5, 5]), reduction="none")
    assert torch.equal(loss.detach(), torch.zeros(3, dtype=torch.float64))
    loss.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q)) and torch.equal(k.grad, torch.zeros_like(k))


def test_a_second_backward_through_a_retained_graph_matches_the_oracle():
    """The kept softmax is spent by the first backward; a second one (retain_graph, jacobians) must
    recompute it, not reuse what the first left behind."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(5, 8, generator=gen, requires_grad=True)
    k = torch.randn(5, 8, generator=gen, requires_grad=True)
    loss = infonce(q, k, temperature=0.1)
    dq = torch.autograd.grad(loss, q, retain_graph=True)[0]
    dk = torch.autograd.grad(loss, k)[0]
    q2, k2 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    rq, rk = torch.autograd.grad(oracles.infonce(q2, k2, temperature=0.1), (q2, k2))
    torch.testing.assert_close(dq.double(), rq, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dk.double(), rk, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["infonce", "gather_scores", "embedding_scores", "l2_normalize"])
def test_a_double_backward_is_an_error_not_a_silent_zero(kernel):
    from twotower.kernels.embedding_scores import embedding_scores
    from twotower.kernels.gather_scores import gather_scores
    from twotower.kernels.infonce import infonce
    from twotower.kernels.l2_normalize import l2_normalize

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    table = torch.randn(5, 6, generator=gen)
    index = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]])
    out = {
        "infonce": lambda: infonce(x, table[:4], temperature=0.5),
        "gather_scores": lambda: gather_scores(x, table, index).sum(),
        "embedding_scores": lambda: embedding_scores(x, table, torch.arange(5), index, normalize=True).sum(),
        "l2_normalize": lambda: l2_normalize(x).sum(),
    }[kernel]()
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(out, x, create_graph=True)


@pytest.mark.parametrize("path", [infonce, infonce_eager])
def test_rows_moved_into_extra_keep_their_masks_with_extra_query_ids(path) -> None:
    """The first 5 of 12 rows against all 12 positives + 9 negatives, the other 7 positives passed as
    extras with their item and query ids (how distributed training sees other ranks' rows), give
    those 5 rows' losses and gradients of the whole batch (the float64 oracle); -1 (no query) masks
    nothing."""
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randn(12, 6, generator=g, dtype=torch.float64)
    neg = torch.randn(9, 6, generator=g, dtype=torch.float64)
    users, items = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2, 5, 0, 6, 3]), torch.randint(0, 5, (12,), generator=g)
    neg_ids = torch.randint(0, 5, (9,), generator=g)
    q.requires_grad_()
    logq_k = -torch.rand(12, generator=g, dtype=torch.float64)
    full = oracles.infonce(q, k, temperature=0.5, extra=neg, logq=logq_k, logq_extra=torch.zeros(9, dtype=q.dtype),
                           query_ids=users, item_ids=items, extra_ids=neg_ids, reduction="none")[:5]
    expected_grad = torch.autograd.grad(full.sum(), q)[0][:5]
    mine = q[:5].detach().clone().requires_grad_()
    local = path(mine, k[:5], temperature=0.5, extra=torch.cat([k[5:], neg]),
                 logq=logq_k[:5], logq_extra=torch.cat([logq_k[5:], torch.zeros(9, dtype=q.dtype)]),
                 query_ids=users[:5], item_ids=items[:5], extra_ids=torch.cat([items[5:], neg_ids]),
                 extra_query_ids=torch.cat([users[5:], torch.full((9,), -1)]), reduction="none")
    torch.testing.assert_close(local, full.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(local.sum(), mine)[0], expected_grad, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="extra_query_ids needs extra and query_ids"):
        path(mine, k[:5], temperature=0.5, extra=k[5:], extra_query_ids=users[5:])
