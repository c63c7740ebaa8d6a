"""The row-blocked CPU InfoNCE and the eager fallback against the float64 oracle: loss and every
gradient."""

from __future__ import annotations

import pytest
import torch

from twotower.kernels import infonce_cpu
from twotower.kernels.infonce import infonce
from twotower.kernels.infonce_eager import infonce_eager

from . import oracles

SLOW = pytest.mark.slow  # the quick loop keeps a small case of every option (`_BLOCK_ELEMENTS` makes many blocks)
CASES = [  # (B, M, D, options)
    (1, 0, 8, {}),
    (7, 5, 16, {"logq": True}),
    (130, 0, 33, {"masks": True}),
    (300, 70, 64, {"logq": True, "masks": True}),
    (300, 70, 64, {"logq": True, "masks": True, "correct_positive": False}),
    (64, 300, 96, {"logq": True, "masks": True, "query_ids": True}),
    (19, 11, 8, {"logq": True, "masks": True, "correct_positive": False}),
    (16, 40, 12, {"logq": True, "masks": True, "query_ids": True}),
    (23, 0, 8, {"pairs": True}),
    (40, 90, 16, {"logq": True, "masks": True, "query_ids": True, "pairs": True}),
    (9, 13, 8, {"logq": True, "masks": True, "correct_positive": False, "pairs": True}),
]
ORACLE_CASES = [pytest.param(case, marks=SLOW) if case[0] >= 300 or case[1] >= 300 else case for case in CASES]


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
    if options.get("pairs"):  # repeats, positives and already-masked candidates among them
        count = 3 * B
        kwargs["masked_pairs"] = torch.stack([torch.randint(0, B, (count,), generator=g),
                                              torch.randint(0, B + M, (count,), generator=g)], dim=1)
    kwargs["correct_positive"] = options.get("correct_positive", True)
    return q, k, extra, kwargs


def _ids(case):
    return f"B{case[0]}-M{case[1]}-D{case[2]}-{'+'.join(case[3]) or 'plain'}"


IMPLS = {"blocked-softmax-kept": (infonce_cpu.infonce_blocked, 1 << 30),
         "blocked-recomputed": (infonce_cpu.infonce_blocked, 0), "eager": (infonce_eager, 0)}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ORACLE_CASES, ids=_ids)
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


@pytest.mark.parametrize("case", ORACLE_CASES[1:4], ids=_ids)
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


def _unit_case(B, M, D, seed):
    """Unit-norm vectors as L2-normalised towers give (cosine logits, the bfloat16 use case), float64
    leaves, with log-q and accidental hits."""
    q, k, extra, kwargs = make(B, M, D, {"logq": True, "masks": True}, seed=seed)
    with torch.no_grad():
        for x in (q, k, extra):
            x.div_(x.norm(dim=1, keepdim=True))
    del kwargs["extra"]
    return q, k, extra, kwargs


def _bf16_rounded(*tensors):
    return [t.detach().bfloat16().double().requires_grad_() for t in tensors]


@pytest.mark.parametrize("keep_elements", [1 << 30, 0], ids=["softmax-kept", "recomputed"])
@pytest.mark.parametrize("case", [(96, 160, 64), (67, 31, 40)], ids=["B96-M160-D64", "B67-M31-D40"])
def test_bfloat16_inputs_run_bfloat16_gemms_within_their_rounding_of_the_oracle(case, keep_elements, monkeypatch):
    """bfloat16 q, k, extra: per-row losses (float32) and gradients within bf16 rounding of the
    float64 oracle on the same (bf16-rounded) inputs, and the losses measurably off it, as logits
    from GEMMs rounded to bf16 are: float32 GEMMs on these inputs would be ~1e-6 off."""
    monkeypatch.setattr(infonce_cpu, "_BLOCK_ELEMENTS", 1 << 11)  # several row blocks
    monkeypatch.setattr(infonce_cpu, "_KEEP_ELEMENTS", keep_elements)
    q, k, extra, kwargs = _unit_case(*case, seed=case[0] + keep_elements % 7)
    q64, k64, x64 = _bf16_rounded(q, k, extra)
    want = oracles.infonce(q64, k64, temperature=0.1, extra=x64, reduction="none", **kwargs)
    want.sum().backward()
    qb, kb, xb = (t.detach().bfloat16().requires_grad_() for t in (q, k, extra))
    kwargs32 = {**kwargs, "logq": kwargs["logq"].float(), "logq_extra": kwargs["logq_extra"].float()}
    got = infonce_cpu.infonce_blocked(qb, kb, temperature=0.1, extra=xb, reduction="none", **kwargs32)
    got.sum().backward()
    assert got.dtype == torch.float32
    loss_error = (got.double() - want.detach()).abs().max().item()
    assert 1e-5 < loss_error < 5e-2, f"per-row loss error {loss_error}: bf16 GEMMs give 1e-4 to 1e-2"
    for mine, oracle in ((qb.grad, q64.grad), (kb.grad, k64.grad), (xb.grad, x64.grad)):
        assert ((mine.double() - oracle).norm() / oracle.norm()).item() < 2e-2


def test_cpu_autocast_gives_float32_loss_and_gradients_close_to_the_oracle(monkeypatch):
    """`train.cpu_amp`'s path: under torch.autocast("cpu", bfloat16) the public `infonce` takes float32
    tower outputs, runs bfloat16 GEMMs, and hands float32 back (loss and gradients)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, extra, kwargs = _unit_case(96, 64, 64, seed=11)
    want = oracles.infonce(q, k, temperature=0.1, extra=extra, **kwargs)
    want.backward()
    q32, k32, x32 = (t.detach().float().requires_grad_() for t in (q, k, extra))
    kwargs32 = {**kwargs, "logq": kwargs["logq"].float(), "logq_extra": kwargs["logq_extra"].float()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = infonce(q32, k32, temperature=0.1, extra=x32, **kwargs32)
    got.backward()
    assert got.dtype == torch.float32 and q32.grad.dtype == torch.float32 and x32.grad.dtype == torch.float32
    assert abs(got.item() - want.item()) < 1e-2 * abs(want.item())
    for mine, oracle in ((q32.grad, q.grad), (k32.grad, k.grad), (x32.grad, extra.grad)):
        assert ((mine.double() - oracle).norm() / oracle.norm()).item() < 2e-2


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


@pytest.mark.parametrize("path", [infonce, infonce_eager])
def test_masked_pairs_are_checked(path) -> None:
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    extra = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"masked_pairs must hold rows in \[0, 4\) and columns in \[0, 7\)"):
        path(q, k, temperature=0.5, extra=extra, masked_pairs=torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match=r"masked_pairs must be \[P, 2\]"):
        path(q, k, temperature=0.5, masked_pairs=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="masked_pairs must be an integer tensor"):
        path(q, k, temperature=0.5, masked_pairs=torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="masked_pairs with symmetric=True is not supported"):
        path(q, k, temperature=0.5, symmetric=True, masked_pairs=torch.tensor([[0, 1]]))
