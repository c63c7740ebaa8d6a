"""`LossInputs.known_positives`: the named (row, candidate) pairs leave that row's softmax, checked
against a float64 oracle written here (the whole [B, C] logit matrix with an explicit keep-mask, no
log-share correction), for values and gradients, every loss kind, with and without log-q and
accidental-hit masks; and the errors users see. The kernels' own masking of the pairs (CPU, eager,
Triton) is tested in tests/kernels against their float64 oracle."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from twotower.losses import LossConfig, LossInputs, make_loss

F64 = torch.float64


def batch(seed: int, b: int = 7, n: int = 2, m: int = 5, d: int = 6, dtype=F64, pairs: int = 12) -> LossInputs:
    """Random vectors and ids in small ranges (accidental hits and same-user rows occur), log-q, and
    random known-positive pairs over the C = B + B n + M candidates (some of them naming columns the
    accidental-hit masks already drop)."""
    g = torch.Generator().manual_seed(seed)
    c = b + b * n + m
    rows = torch.randint(0, b, (pairs,), generator=g)
    cols = torch.randint(0, c, (pairs,), generator=g)
    flat = torch.unique(rows * c + cols)  # the batch iterator names a pair once
    return LossInputs(
        query=torch.randn(b, d, generator=g, dtype=dtype),
        positive=torch.randn(b, d, generator=g, dtype=dtype),
        negatives=torch.randn(b, n, d, generator=g, dtype=dtype),
        shared_negatives=torch.randn(m, d, generator=g, dtype=dtype),
        user_ids=torch.randint(0, 4, (b,), generator=g),
        item_ids=torch.randint(0, 8, (b,), generator=g),
        negative_ids=torch.randint(0, 8, (b, n), generator=g),
        shared_ids=torch.randint(0, 8, (m,), generator=g),
        item_log_q=torch.empty(b, dtype=dtype).uniform_(math.log(1e-3), math.log(0.5), generator=g),
        negative_log_q=torch.empty(b, n, dtype=dtype).uniform_(math.log(1e-3), math.log(0.5), generator=g),
        shared_log_q=torch.empty(m, dtype=dtype).uniform_(math.log(1e-3), math.log(0.5), generator=g),
        known_positives=torch.stack([flat // c, flat % c], dim=1),
    )


def oracle_in_batch(x: LossInputs, tau: float, logq: bool, correct_positive: bool, accidental: bool) -> torch.Tensor:
    """Per-row in-batch softmax losses over every candidate, with an explicit keep-mask."""
    b, n, d = x.negatives.shape
    cand = torch.cat([x.positive, x.negatives.reshape(b * n, d), x.shared_negatives]).to(F64)
    ids = torch.cat([x.item_ids, x.negative_ids.reshape(-1), x.shared_ids]).tolist()
    lq = torch.cat([x.item_log_q, x.negative_log_q.reshape(-1), x.shared_log_q]).to(F64)
    z = x.query.to(F64) @ cand.T / tau
    if logq:
        corrected = z - lq
        z = corrected if correct_positive else torch.where(torch.eye(b, cand.shape[0], dtype=torch.bool), z, corrected)
    keep = torch.ones(b, cand.shape[0], dtype=torch.bool)
    for r in range(b):
        for j in range(cand.shape[0]):
            if j == r:
                continue
            if accidental and (ids[j] == int(x.item_ids[r]) or (j < b and int(x.user_ids[j]) == int(x.user_ids[r]))):
                keep[r, j] = False
    for r, j in x.known_positives.tolist():
        if j != r:
            keep[r, j] = False
    z = z.masked_fill(~keep, -math.inf)
    return torch.logsumexp(z, dim=1) - z.diagonal()


def oracle_per_row(x: LossInputs, kind: str, tau: float, accidental: bool) -> torch.Tensor:
    """Per-row losses over [positive | own negatives | shared], with the known pairs among the row's
    own negatives and the shared ones dropped."""
    b, n, _ = x.negatives.shape
    m = x.shared_negatives.shape[0]
    negs = torch.cat([x.negatives, x.shared_negatives.expand(b, -1, -1)], dim=1).to(F64)
    ids = torch.cat([x.negative_ids, x.shared_ids.expand(b, -1)], dim=1)
    s_pos = (x.query.to(F64) * x.positive.to(F64)).sum(-1) / tau
    s_neg = (x.query.to(F64).unsqueeze(1) * negs).sum(-1) / tau
    if kind == "sampled_softmax":
        s_pos = s_pos - x.item_log_q.to(F64)
        s_neg = s_neg - torch.cat([x.negative_log_q, x.shared_log_q.expand(b, -1)], dim=1).to(F64)
    keep = torch.ones(b, n + m, dtype=torch.bool)
    if accidental:
        keep &= ids != x.item_ids.unsqueeze(1)
    for r, j in x.known_positives.tolist():
        if b + r * n <= j < b + (r + 1) * n:
            keep[r, j - b - r * n] = False
        elif j >= b + b * n:
            keep[r, n + j - b - b * n] = False
    if kind == "sampled_softmax":
        z = torch.cat([s_pos.unsqueeze(1), s_neg.masked_fill(~keep, -math.inf)], dim=1)
        return torch.logsumexp(z, dim=1) - s_pos
    if kind == "bpr":
        terms = -torch.nn.functional.logsigmoid(s_pos.unsqueeze(1) - s_neg)
    else:  # ccl, margin 0.4, weight 3 (raw cosines: tau 1)
        terms = 3.0 * torch.relu(s_neg - 0.4)
    terms = terms.masked_fill(~keep, 0.0)
    mean = terms.sum(1) / keep.sum(1).clamp(min=1)
    return mean + (torch.relu(1.0 - s_pos) if kind == "ccl" else 0.0)


@pytest.mark.parametrize("kind", ["infonce", "mixed"])
@pytest.mark.parametrize("correct_positive", [True, False])
@pytest.mark.parametrize("accidental", [True, False], ids=["hits_masked", "hits_kept"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_batch_kinds_drop_the_pairs_values_and_gradients(kind, correct_positive, accidental, seed):
    x = batch(seed)
    leaves = {f: getattr(x, f).clone().requires_grad_() for f in ("query", "positive", "negatives", "shared_negatives")}
    xg = dataclasses.replace(x, **leaves)
    # 0.25 is exact in float32, which the fused kernel's float64 backward reads the temperature in.
    cfg = LossConfig(kind=kind, temperature=0.25, correct_positive=correct_positive,
                     remove_accidental_hits=accidental, reduction="none")
    got = make_loss(cfg)(xg)
    want_leaves = {f: v.detach().clone().requires_grad_() for f, v in leaves.items()}
    want = oracle_in_batch(dataclasses.replace(x, **want_leaves), 0.25, True, correct_positive, accidental)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weights = torch.linspace(0.5, 1.5, got.shape[0], dtype=F64)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, want_leaves[name].grad, rtol=1e-9, atol=1e-10, msg=name)


def test_the_pairs_change_the_loss():
    """The oracle comparison above could pass with a no-op if no pair survived the filters."""
    x = batch(3)
    cfg = LossConfig(kind="mixed", temperature=0.3, reduction="none")
    with_pairs = make_loss(cfg)(x)
    without = make_loss(cfg)(dataclasses.replace(x, known_positives=None))
    assert (with_pairs < without - 1e-9).sum() >= 3  # a row loses a candidate: its loss falls


def test_in_batch_kernel_path_float32_matches_oracle():
    """float32 inputs go through the fused CPU kernel (the float64 test above runs it in float64)."""
    x = batch(4, b=64, n=1, m=200, d=16, pairs=600)
    x32 = dataclasses.replace(x, **{f: getattr(x, f).float() for f in (
        "query", "positive", "negatives", "shared_negatives", "item_log_q", "negative_log_q", "shared_log_q")})
    got = make_loss(LossConfig(kind="mixed", temperature=0.2, reduction="none"))(x32)
    want = oracle_in_batch(x, 0.2, True, True, True)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["sampled_softmax", "bpr", "ccl"])
@pytest.mark.parametrize("accidental", [True, False], ids=["hits_masked", "hits_kept"])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_row_kinds_drop_own_and_shared_pairs(kind, accidental, seed):
    x = batch(seed, pairs=30)
    tau = 1.0 if kind == "ccl" else 0.3
    cfg = LossConfig(kind=kind, temperature=tau, margin=0.4, negative_weight=3.0,
                     remove_accidental_hits=accidental, reduction="none")
    got = make_loss(cfg)(x)
    torch.testing.assert_close(got, oracle_per_row(x, kind, tau, accidental), rtol=1e-10, atol=1e-10)


def test_reductions_apply_after_the_masking():
    x = batch(6)
    rows = make_loss(LossConfig(kind="mixed", temperature=0.3, reduction="none"))(x)
    mean = make_loss(LossConfig(kind="mixed", temperature=0.3, reduction="mean"))(x)
    total = make_loss(LossConfig(kind="mixed", temperature=0.3, reduction="sum"))(x)
    torch.testing.assert_close(mean, rows.mean())
    torch.testing.assert_close(total, rows.sum())


def test_errors_name_the_field():
    x = batch(7)
    loss = make_loss(LossConfig(kind="mixed", temperature=0.3))
    with pytest.raises(ValueError, match=r"known_positives must be \[P, 2\]"):
        loss(dataclasses.replace(x, known_positives=x.known_positives[:, :1]))
    with pytest.raises(TypeError, match="known_positives must be an integer tensor"):
        loss(dataclasses.replace(x, known_positives=x.known_positives.double()))
    with pytest.raises(ValueError, match="masked_pairs with symmetric=True is not supported"):
        make_loss(LossConfig(kind="mixed", temperature=0.3, symmetric=True))(x)
