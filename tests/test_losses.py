"""Tests of twotower.losses against straightforward float64 loops written here (not the library's
formulas): values, gradients (gradcheck), accidental-hit masking, logQ correction, reductions, the
selector for every kind, and the errors users see."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pytest
import torch

from twotower.losses import KINDS, LossConfig, LossInputs, bce, bpr, ccl, directau, hinge, make_loss, sampled_softmax

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Naive float64 oracles: one row, one negative at a time, in Python floats.
# ----------------------------------------------------------------------------------------------


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))


def log_sigmoid(x: float) -> float:
    # log(1 / (1 + e^-x)), written for both signs so that no exp overflows
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def naive_rows(q, pos, neg, tau, logq_pos=None, logq_neg=None, pos_ids=None, neg_ids=None):
    """For each row: (positive logit, [kept negative logits]) with correction and masking applied."""
    rows = []
    for b in range(q.shape[0]):
        s_pos = dot(q[b], pos[b]) / tau
        if logq_pos is not None:
            s_pos -= float(logq_pos[b])
        kept = []
        negs = neg[b] if neg.dim() == 3 else neg
        for j in range(negs.shape[0]):
            ids = None if neg_ids is None else (neg_ids[b] if neg_ids.dim() == 2 else neg_ids)
            if ids is not None and int(ids[j]) == int(pos_ids[b]):
                continue  # accidental hit: left out entirely
            s = dot(q[b], negs[j]) / tau
            if logq_neg is not None:
                s -= float((logq_neg[b] if logq_neg.dim() == 2 else logq_neg)[j])
            kept.append(s)
        rows.append((s_pos, kept))
    return rows


def naive_loss(kind, rows, margin=1.0, negative_weight=1.0):
    out = []
    for s_pos, kept in rows:
        if kind == "sampled_softmax":
            logits = [s_pos, *kept]
            m = max(logits)
            out.append(m + math.log(sum(math.exp(v - m) for v in logits)) - s_pos)
        elif kind == "bpr":
            terms = [-log_sigmoid(s_pos - s) for s in kept]
            out.append(sum(terms) / len(terms) if terms else 0.0)
        elif kind == "hinge":
            terms = [max(0.0, margin - s_pos + s) for s in kept]
            out.append(sum(terms) / len(terms) if terms else 0.0)
        elif kind == "bce":  # the positive's term plus the negatives' mean: 1 - sigmoid(s) = sigmoid(-s)
            terms = [-log_sigmoid(-s) for s in kept]
            out.append(-log_sigmoid(s_pos) + (sum(terms) / len(terms) if terms else 0.0))
        elif kind == "ccl":  # SimpleX: pull the positive to 1, push negatives above the margin down
            terms = [max(0.0, s - margin) for s in kept]
            out.append(max(0.0, 1.0 - s_pos) + negative_weight * (sum(terms) / len(terms) if terms else 0.0))
    return torch.tensor(out, dtype=F64)


def naive_directau(q, pos, gamma):
    """Alignment + gamma * mean of the users' and the items' uniformity, pair by pair in Python floats."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def uniformity(rows):
        potentials = [math.exp(-2 * sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True)))
                      for i in range(len(rows)) for j in range(i + 1, len(rows))]
        return math.log(sum(potentials) / len(potentials))

    u, v = [unit(r) for r in q.tolist()], [unit(r) for r in pos.tolist()]
    align = [sum((a - b) ** 2 for a, b in zip(x, y, strict=True)) for x, y in zip(u, v, strict=True)]
    uniform = (uniformity(u) + uniformity(v)) / 2
    return torch.tensor([a + gamma * uniform for a in align], dtype=F64)


def naive_infonce(q, k, tau, extra=None, logq=None, logq_extra=None, correct_positive=True,
                  query_ids=None, item_ids=None, extra_ids=None):
    """In-batch softmax per row: candidates k[0..B) ++ extra, the positive of row i is k[i]."""
    b_size = q.shape[0]
    cands = [k[j] for j in range(b_size)] + ([] if extra is None else [extra[j] for j in range(extra.shape[0])])
    lq = None
    if logq is not None:
        lq = logq.tolist() + ([] if logq_extra is None else logq_extra.tolist())
    ids = None
    if item_ids is not None:
        ids = item_ids.tolist() + ([] if extra_ids is None else extra_ids.tolist())
    out = []
    for i in range(b_size):
        logits = []
        for j, c in enumerate(cands):
            if j != i and ids is not None and ids[j] == ids[i]:
                continue
            if j != i and j < b_size and query_ids is not None and int(query_ids[j]) == int(query_ids[i]):
                continue
            s = dot(q[i], c) / tau
            if lq is not None and (j != i or correct_positive):
                s -= lq[j]
            logits.append((j, s))
        s_pos = next(s for j, s in logits if j == i)
        m = max(s for _, s in logits)
        out.append(m + math.log(sum(math.exp(s - m) for _, s in logits)) - s_pos)
    return torch.tensor(out, dtype=F64)


FUNCS = {"sampled_softmax": sampled_softmax, "bpr": bpr, "hinge": hinge, "bce": bce, "ccl": ccl}
TAKES_LOGQ = ("sampled_softmax", "bce")


def call(kind, q, pos, neg, tau, **kw):
    if kind not in TAKES_LOGQ:
        kw.pop("logq_pos", None)
        kw.pop("logq_neg", None)
        kw.pop("correct_positive", None)
    if kind in ("hinge", "ccl"):
        kw.setdefault("margin", 0.7)
    return FUNCS[kind](q, pos, neg, temperature=tau, **kw)


def make_batch(seed, b=5, n=4, m=0, d=6, dtype=F64, hits=True):
    """Random vectors, ids in a small range so accidental hits occur, log-q in (log 1e-3, log 0.5)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=dtype)
    pos = torch.randn(b, d, generator=g, dtype=dtype)
    shape = (b, n) if m == 0 else (m,)
    neg = torch.randn(*shape, d, generator=g, dtype=dtype)
    pos_ids = torch.randint(0, 6, (b,), generator=g)
    neg_ids = torch.randint(0, 6 if hits else 1000, shape, generator=g) + (0 if hits else 6)
    logq_pos = torch.empty(b, dtype=dtype).uniform_(math.log(1e-3), math.log(0.5), generator=g)
    logq_neg = torch.empty(shape, dtype=dtype).uniform_(math.log(1e-3), math.log(0.5), generator=g)
    return q, pos, neg, pos_ids, neg_ids, logq_pos, logq_neg


# ----------------------------------------------------------------------------------------------
# Values against the naive loops
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("shared", [False, True], ids=["per_row", "shared"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("logq", [None, "all", "neg_only"])
def test_matches_naive(kind, shared, masked, logq):
    q, pos, neg, pos_ids, neg_ids, lq_pos, lq_neg = make_batch(1, b=7, n=5, m=9 if shared else 0)
    tau = 0.7
    kw = {"reduction": "none"}
    if masked:
        kw.update(pos_ids=pos_ids, neg_ids=neg_ids)
    if logq is not None and kind in TAKES_LOGQ:
        kw.update(logq_pos=lq_pos, logq_neg=lq_neg, correct_positive=logq == "all")
    got = call(kind, q, pos, neg, tau, **kw)
    rows = naive_rows(
        q, pos, neg, tau,
        logq_pos=lq_pos if logq == "all" and kind in TAKES_LOGQ else None,
        logq_neg=lq_neg if logq is not None and kind in TAKES_LOGQ else None,
        pos_ids=pos_ids if masked else None, neg_ids=neg_ids if masked else None,
    )
    want = naive_loss(kind, rows, margin=0.7)
    assert got.shape == (7,) and got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_batch_has_accidental_hits():
    # The masked cases above only mean something if the fixed seed produces hits.
    _, _, _, pos_ids, neg_ids, _, _ = make_batch(1, b=7, n=5)
    assert (neg_ids == pos_ids[:, None]).any()
    _, _, _, pos_ids, neg_ids, _, _ = make_batch(1, b=7, m=9)
    assert (neg_ids[None, :] == pos_ids[:, None]).any()


@pytest.mark.parametrize("kind", list(FUNCS))
def test_reductions(kind):
    q, pos, neg, pos_ids, neg_ids, _, _ = make_batch(2, b=6, n=3)
    per_row = naive_loss(kind, naive_rows(q, pos, neg, 1.3, pos_ids=pos_ids, neg_ids=neg_ids), margin=0.7)
    kw = dict(pos_ids=pos_ids, neg_ids=neg_ids)
    torch.testing.assert_close(call(kind, q, pos, neg, 1.3, reduction="none", **kw), per_row)
    torch.testing.assert_close(call(kind, q, pos, neg, 1.3, reduction="sum", **kw), per_row.sum())
    mean = call(kind, q, pos, neg, 1.3, **kw)  # default is "mean"
    assert mean.dim() == 0
    torch.testing.assert_close(mean, per_row.mean())


def test_default_temperature_of_pairwise_losses_is_raw_dot_product():
    q, pos, neg, *_ = make_batch(3)
    for kind in ("bpr", "hinge", "bce"):
        torch.testing.assert_close(FUNCS[kind](q, pos, neg), naive_loss(kind, naive_rows(q, pos, neg, 1.0)).mean())


# ----------------------------------------------------------------------------------------------
# Hand-computed logQ case
# ----------------------------------------------------------------------------------------------


def test_logq_correction_hand_computed():
    # q = (1, 0), pos = (1, 0), one negative (0, 0), temperature 1: s_pos = 1, s_neg = 0.
    # log Q(pos) = log 1/2, log Q(neg) = log 1/4, corrected logits s - log Q:
    #   s_pos' = 1 + ln 2, s_neg' = 0 + ln 4 = 2 ln 2.
    # softmax loss = log(1 + exp(s_neg' - s_pos')) = log(1 + exp(ln 2 - 1)) = log(1 + 2/e) = log 1.7358 = 0.5514...
    # positive left uncorrected: log(1 + exp(2 ln 2 - 1)) = log(1 + 4/e) = log 2.4715 = 0.9048...
    # no correction: log(1 + 1/e) = log 1.3679 = 0.3133...
    # BCE (the positive's term plus the negatives' mean): -log sigmoid(1 + ln 2) - log(1 - sigmoid(2 ln 2))
    #   = log(1 + e^-1 / 2) + log(1 + 4) = log(1 + 1/(2e)) + log 5 = 0.1689 + 1.6094 = 1.7782...
    q = torch.tensor([[1.0, 0.0]], dtype=F64)
    pos = torch.tensor([[1.0, 0.0]], dtype=F64)
    neg = torch.zeros(1, 1, 2, dtype=F64)
    lq_pos = torch.tensor([math.log(0.5)], dtype=F64)
    lq_neg = torch.tensor([[math.log(0.25)]], dtype=F64)
    e = math.e
    ss = lambda **kw: sampled_softmax(q, pos, neg, temperature=1.0, **kw).item()  # noqa: E731
    assert ss(logq_pos=lq_pos, logq_neg=lq_neg) == pytest.approx(math.log(1 + 2 / e), rel=1e-12)
    assert ss(logq_pos=lq_pos, logq_neg=lq_neg, correct_positive=False) == pytest.approx(math.log(1 + 4 / e), rel=1e-12)
    assert ss() == pytest.approx(math.log(1 + 1 / e), rel=1e-12)
    got = bce(q, pos, neg, logq_pos=lq_pos, logq_neg=lq_neg).item()
    assert got == pytest.approx(math.log(1 + 1 / (2 * e)) + math.log(5), rel=1e-12)
    assert got == pytest.approx(1.7782, abs=1e-4)  # the rounded number in the comment


# ----------------------------------------------------------------------------------------------
# Masking
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FUNCS))
def test_accidental_hit_is_excluded_not_zeroed(kind):
    # Row 0's second negative has the positive's id: the masked loss must equal the loss over the
    # other negatives only (a zero counted in the average would give a different number).
    q, pos, neg, *_ = make_batch(4, b=1, n=3)
    pos_ids = torch.tensor([7])
    neg_ids = torch.tensor([[1, 7, 2]])
    # every pair inside the margin: no zero terms
    kw = {"margin": 10.0} if kind == "hinge" else {"margin": -10.0} if kind == "ccl" else {}
    masked = call(kind, q, pos, neg, 0.9, pos_ids=pos_ids, neg_ids=neg_ids, **kw)
    dropped = call(kind, q, pos, neg[:, [0, 2]], 0.9, **kw)
    torch.testing.assert_close(masked, dropped, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(masked, call(kind, q, pos, neg, 0.9, **kw))


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
def test_all_masked_rows_are_finite(kind, dtype):
    # Huge logits and every negative of row 0 an accidental hit; row 1 keeps its negatives.
    q, pos, neg, *_ = make_batch(5, b=2, n=3, dtype=dtype)
    q = (q * 100).requires_grad_()
    neg = neg.requires_grad_()
    pos_ids = torch.tensor([3, 4])
    neg_ids = torch.tensor([[3, 3, 3], [0, 1, 2]])
    out = call(kind, q, pos, neg, 0.05, pos_ids=pos_ids, neg_ids=neg_ids, reduction="none")
    assert out.dtype == (F64 if dtype == F64 else torch.float32)
    assert torch.isfinite(out).all()
    s_pos = dot(q[0].detach().double(), pos[0].double()) / 0.05
    # only the positive's own term remains
    want0 = -log_sigmoid(s_pos) if kind == "bce" else max(0.0, 1 - s_pos) if kind == "ccl" else 0.0
    assert out[0].item() == pytest.approx(want0, rel=1e-5, abs=1e-6)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(neg.grad).all()
    assert (neg.grad[0] == 0).all()  # masked negatives get no gradient


def test_masked_softmax_survives_neg_inf_logq_free_inputs():
    # A masked negative with an enormous logit must not leak into the log-sum-exp.
    q = torch.tensor([[1.0, 0.0]], dtype=F64)
    pos = torch.tensor([[1.0, 0.0]], dtype=F64)
    neg = torch.tensor([[[1e6, 0.0], [0.0, 0.0]]], dtype=F64)
    out = sampled_softmax(q, pos, neg, temperature=1.0, pos_ids=torch.tensor([5]), neg_ids=torch.tensor([[5, 6]]))
    # only the second negative (logit 0) remains: log(1 + e^-1)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("shared", [False, True], ids=["per_row", "shared"])
def test_gradcheck(kind, shared):
    q, pos, neg, pos_ids, neg_ids, lq_pos, lq_neg = make_batch(6, b=3, n=4, m=5 if shared else 0, d=4)
    tau = torch.tensor(0.8, dtype=F64, requires_grad=True)
    kw = dict(pos_ids=pos_ids, neg_ids=neg_ids, reduction="none")
    if kind in TAKES_LOGQ:
        kw.update(logq_pos=lq_pos, logq_neg=lq_neg)

    def fn(q_, pos_, neg_, tau_):
        return call(kind, q_, pos_, neg_, tau_, **kw)

    inputs = tuple(t.clone().requires_grad_() for t in (q, pos, neg)) + (tau,)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradient_matches_hand_derivation_for_softmax():
    # d loss / d s_pos = softmax_pos - 1 and d loss / d s_neg_j = softmax_j; with s = q·k / tau,
    # d loss / d q = sum_c (p_c - y_c) k_c / tau. Checked against that formula in float64.
    q, pos, neg, *_ = make_batch(7, b=1, n=3)
    q.requires_grad_()
    sampled_softmax(q, pos, neg, temperature=0.5).backward()
    cands = torch.cat([pos, neg[0]])
    logits = [dot(q[0].detach(), c) / 0.5 for c in cands]
    z = sum(math.exp(v) for v in logits)
    want = sum((math.exp(v) / z - (1.0 if c == 0 else 0.0)) * cands[c] / 0.5 for c, v in enumerate(logits))
    torch.testing.assert_close(q.grad[0], want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Half precision
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_inputs_reduce_in_fp32(kind, dtype, rtol):
    q, pos, neg, pos_ids, neg_ids, *_ = make_batch(8, b=9, n=6, d=16, dtype=torch.float32)
    q, pos, neg = (t.to(dtype) for t in (q, pos, neg))
    got = call(kind, q, pos, neg, 0.5, pos_ids=pos_ids, neg_ids=neg_ids, reduction="none")
    assert got.dtype == torch.float32
    want = naive_loss(
        kind, naive_rows(q.double(), pos.double(), neg.double(), 0.5, pos_ids=pos_ids, neg_ids=neg_ids), 0.7
    )
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol)


# ----------------------------------------------------------------------------------------------
# Selector
# ----------------------------------------------------------------------------------------------


def selector_inputs(seed=9, b=6, n=3, m=4, d=5, per_row=True, shared=True):
    q, pos, neg, pos_ids, neg_ids, lq_pos, lq_neg = make_batch(seed, b=b, n=n, d=d)
    g = torch.Generator().manual_seed(seed + 100)
    sh = torch.randn(m, d, generator=g, dtype=F64)
    sh_ids = torch.randint(0, 6, (m,), generator=g)
    sh_lq = torch.empty(m, dtype=F64).uniform_(-6, -1, generator=g)
    users = torch.tensor([0, 1, 0, 2, 3, 3])[:b]
    return LossInputs(
        query=q, positive=pos,
        negatives=neg if per_row else None, negative_ids=neg_ids if per_row else None,
        negative_log_q=lq_neg if per_row else None,
        shared_negatives=sh if shared else None, shared_ids=sh_ids if shared else None,
        shared_log_q=sh_lq if shared else None,
        user_ids=users, item_ids=pos_ids, item_log_q=lq_pos,
    )


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("sets", ["per_row", "shared", "both"])
def test_selector_per_row_kinds_match_naive(kind, sets):
    x = selector_inputs(per_row=sets != "shared", shared=sets != "per_row")
    cfg = LossConfig(kind=kind, temperature=0.6, margin=0.7, reduction="none")
    got = make_loss(cfg)(x)
    # Naive: the per-row negatives and the shared ones are one list of negatives for each row.
    negs, ids, lqs = [], [], []
    if x.negatives is not None:
        negs.append(x.negatives)
        ids.append(x.negative_ids)
        lqs.append(x.negative_log_q)
    if x.shared_negatives is not None:
        b = x.query.shape[0]
        negs.append(x.shared_negatives.expand(b, -1, -1))
        ids.append(x.shared_ids.expand(b, -1))
        lqs.append(x.shared_log_q.expand(b, -1))
    neg, neg_ids, lq_neg = torch.cat(negs, 1), torch.cat(ids, 1), torch.cat(lqs, 1)
    uses_logq = kind in TAKES_LOGQ
    rows = naive_rows(x.query, x.positive, neg, 0.6, logq_pos=x.item_log_q if uses_logq else None,
                      logq_neg=lq_neg if uses_logq else None, pos_ids=x.item_ids, neg_ids=neg_ids)
    torch.testing.assert_close(got, naive_loss(kind, rows, margin=0.7), rtol=1e-12, atol=1e-12)


def test_selector_default_temperatures():
    assert LossConfig(kind="infonce").resolved_temperature == 0.1
    assert LossConfig(kind="sampled_softmax").resolved_temperature == 0.1
    assert LossConfig(kind="bpr").resolved_temperature == 1.0
    assert LossConfig(kind="bce", temperature=0.3).resolved_temperature == 0.3


def test_selector_without_accidental_hit_removal_keeps_hits():
    x = selector_inputs(shared=False)
    x = LossInputs(query=x.query, positive=x.positive, negatives=x.negatives, negative_ids=x.negative_ids,
                   item_ids=x.item_ids)
    got = make_loss(LossConfig(kind="bpr", remove_accidental_hits=False))(x)
    torch.testing.assert_close(got, bpr(x.query, x.positive, x.negatives))


@pytest.mark.parametrize("kind", list(FUNCS))
def test_learned_temperature_is_a_parameter_with_gradient(kind):
    x = selector_inputs()
    fixed = make_loss(LossConfig(kind=kind, temperature=0.5))
    assert list(fixed.parameters()) == []
    learned = make_loss(LossConfig(kind=kind, temperature=0.5, learn_temperature=True)).double()
    params = dict(learned.named_parameters())
    assert list(params) == ["log_temperature"]
    assert learned.temperature.item() == pytest.approx(0.5)
    # same value as the fixed temperature, and a gradient that matches a finite difference
    torch.testing.assert_close(learned(x), fixed(x))
    assert torch.autograd.gradcheck(
        lambda lt: make_loss_with_log_temperature(kind, lt)(x),
        (params["log_temperature"].detach().clone().requires_grad_(),)
    )
    learned(x).backward()
    assert params["log_temperature"].grad is not None and params["log_temperature"].grad != 0
    assert "log_temperature" in learned.state_dict()


def make_loss_with_log_temperature(kind, log_t):
    loss = make_loss(LossConfig(kind=kind, learn_temperature=True)).double()
    del loss.log_temperature
    loss.log_temperature = log_t  # plain tensor in place of the parameter, for gradcheck
    return loss


def test_learned_temperature_is_clamped():
    loss = make_loss(LossConfig(kind="bpr", temperature=0.5, learn_temperature=True, min_temperature=0.2))
    with torch.no_grad():
        loss.log_temperature.fill_(math.log(0.01))
    assert loss.temperature.item() == pytest.approx(0.2)


class FakeInfonce:
    """Stands in for twotower.kernels.infonce to check what the selector passes to the kernel."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, **kw):
        self.calls.append((q, k, kw))
        return torch.zeros((), dtype=q.dtype)


@pytest.fixture
def fake_infonce(monkeypatch):
    fake = FakeInfonce()
    module = types.ModuleType("twotower.kernels.infonce")
    module.infonce = fake
    monkeypatch.setitem(sys.modules, "twotower.kernels.infonce", module)
    return fake


@pytest.mark.parametrize("kind", ["infonce", "mixed"])
def test_selector_routes_in_batch_kinds_to_the_kernel(kind, fake_infonce):
    x = selector_inputs()
    cfg = LossConfig(kind=kind, temperature=0.2, symmetric=True, correct_positive=False, reduction="sum")
    make_loss(cfg)(x)
    (q, k, kw), = fake_infonce.calls
    assert q is x.query and k is x.positive
    b, n, d = x.negatives.shape
    # per-row negatives flattened and shared by the batch, then the shared negatives
    torch.testing.assert_close(kw["extra"], torch.cat([x.negatives.reshape(b * n, d), x.shared_negatives]))
    torch.testing.assert_close(kw["extra_ids"], torch.cat([x.negative_ids.reshape(-1), x.shared_ids]))
    torch.testing.assert_close(kw["logq_extra"], torch.cat([x.negative_log_q.reshape(-1), x.shared_log_q]))
    assert kw["logq"] is x.item_log_q and kw["item_ids"] is x.item_ids and kw["query_ids"] is x.user_ids
    assert kw["temperature"] == 0.2 and kw["symmetric"] is True and kw["correct_positive"] is False
    assert kw["reduction"] == "sum"


def test_selector_in_batch_without_extras_or_masking(fake_infonce):
    x = selector_inputs(per_row=False, shared=False)
    x = LossInputs(query=x.query, positive=x.positive, item_ids=x.item_ids)
    make_loss(LossConfig(kind="infonce", remove_accidental_hits=False))(x)
    (_, _, kw), = fake_infonce.calls
    assert kw["extra"] is None and kw["logq"] is None and kw["logq_extra"] is None
    assert kw["item_ids"] is None and kw["query_ids"] is None and kw["extra_ids"] is None
    assert kw["temperature"] == 0.1


def test_selector_learned_temperature_reaches_the_kernel(fake_infonce):
    loss = make_loss(LossConfig(kind="infonce", learn_temperature=True, temperature=0.3))
    x = selector_inputs()
    loss(LossInputs(query=x.query.float(), positive=x.positive.float(), item_ids=x.item_ids))
    t = fake_infonce.calls[0][2]["temperature"]
    assert isinstance(t, torch.Tensor) and t.requires_grad and t.item() == pytest.approx(0.3)


def as_float32(x: LossInputs) -> LossInputs:
    floats = ("query", "positive", "negatives", "shared_negatives", "item_log_q", "negative_log_q", "shared_log_q")
    return dataclasses.replace(x, **{f: getattr(x, f).float() for f in floats if getattr(x, f) is not None})


@pytest.mark.parametrize("kind", ["infonce", "mixed"])
@pytest.mark.parametrize("correct_positive", [True, False])
def test_selector_in_batch_kinds_match_naive(kind, correct_positive):
    x = selector_inputs(b=6, n=2, m=4)
    x = as_float32(x)
    got = make_loss(LossConfig(kind=kind, temperature=0.5, correct_positive=correct_positive, reduction="none"))(x)
    b, n, d = x.negatives.shape
    want = naive_infonce(
        x.query.double(), x.positive.double(), 0.5,
        extra=torch.cat([x.negatives.reshape(b * n, d), x.shared_negatives]).double(),
        logq=x.item_log_q.double(), logq_extra=torch.cat([x.negative_log_q.reshape(-1), x.shared_log_q]).double(),
        correct_positive=correct_positive, query_ids=x.user_ids, item_ids=x.item_ids,
        extra_ids=torch.cat([x.negative_ids.reshape(-1), x.shared_ids]),
    )
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_selector_learned_temperature_gets_kernel_gradient():
    # Real kernel (Triton interpreter on CPU): d loss / d log(tau) against a central difference.
    x = as_float32(selector_inputs(b=6, n=2, m=4))
    loss = make_loss(LossConfig(kind="mixed", temperature=0.5, learn_temperature=True))
    loss(x).backward()
    grad = loss.log_temperature.grad.item()
    h = 1e-2
    with torch.no_grad():
        values = []
        for step in (h, -h):
            loss.log_temperature.fill_(math.log(0.5) + step)
            values.append(loss(x).item())
    assert grad == pytest.approx((values[0] - values[1]) / (2 * h), rel=2e-3)


def test_scores_stay_fp32_under_autocast():
    q, pos, neg, pos_ids, neg_ids, lq_pos, lq_neg = make_batch(11, b=8, n=5, d=32, dtype=torch.float32)
    want = sampled_softmax(q, pos, neg, temperature=0.1, logq_neg=lq_neg.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sampled_softmax(q, pos, neg, temperature=0.1, logq_neg=lq_neg.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_every_kind_is_dispatched(fake_infonce):
    x = selector_inputs()
    seen = {}
    for kind in KINDS:
        fake_infonce.calls.clear()
        inputs = LossInputs(query=x.query, positive=x.positive) if kind == "directau" else x
        out = make_loss(LossConfig(kind=kind))(inputs)
        seen[kind] = (out.dim(), len(fake_infonce.calls))
    assert seen == {"infonce": (0, 1), "mixed": (0, 1), "sampled_softmax": (0, 0), "bpr": (0, 0),
                    "hinge": (0, 0), "bce": (0, 0), "ccl": (0, 0), "directau": (0, 0)}
    # and the per-row kinds really differ from each other
    values = {k: make_loss(LossConfig(kind=k))(x).item() for k in FUNCS}
    assert len(set(values.values())) == len(values)


def test_config_round_trip():
    cfg = LossConfig(kind="hinge", margin=0.3, reduction="sum")
    assert LossConfig.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_selector_errors_name_missing_inputs(fake_infonce):
    x = selector_inputs()
    bare = LossInputs(query=x.query, positive=x.positive, item_ids=x.item_ids)
    with pytest.raises(ValueError, match=r"kind='bpr' needs negatives.*LossInputs.negatives"):
        make_loss(LossConfig(kind="bpr"))(bare)
    no_ids = LossInputs(query=x.query, positive=x.positive, negatives=x.negatives, item_ids=x.item_ids)
    with pytest.raises(ValueError, match=r"remove_accidental_hits needs LossInputs.negative_ids"):
        make_loss(LossConfig(kind="hinge"))(no_ids)
    with pytest.raises(ValueError, match=r"kind='mixed'.*needs LossInputs.shared_negatives, LossInputs.shared_log_q"):
        make_loss(LossConfig(kind="mixed"))(LossInputs(query=x.query, positive=x.positive, item_log_q=x.item_log_q))
    partial = LossInputs(query=x.query, positive=x.positive, negatives=x.negatives, negative_ids=x.negative_ids,
                         item_ids=x.item_ids, item_log_q=x.item_log_q)
    with pytest.raises(ValueError, match=r"logQ correction.*needs LossInputs.negative_log_q"):
        make_loss(LossConfig(kind="sampled_softmax"))(partial)
    with pytest.raises(ValueError, match=r"logQ correction.*needs LossInputs.shared_log_q"):
        make_loss(LossConfig(kind="infonce"))(dataclasses.replace(x, shared_log_q=None))
    with pytest.raises(ValueError, match=r"remove_accidental_hits needs LossInputs.item_ids"):
        make_loss(LossConfig(kind="infonce"))(LossInputs(query=x.query, positive=x.positive))
    with pytest.raises(ValueError, match=r"LossInputs.negatives must be \[B, n, D\]"):
        make_loss(LossConfig(kind="bpr"))(LossInputs(query=x.query, positive=x.positive, negatives=x.shared_negatives))
    with pytest.raises(ValueError, match=r"LossInputs.shared_ids must have shape \[4\]"):
        make_loss(LossConfig(kind="bce"))(dataclasses.replace(x, shared_ids=x.item_ids))
    with pytest.raises(TypeError, match="LossInputs"):
        make_loss(LossConfig(kind="bce"))(x.query)
    # bpr and hinge take no logQ: log-q arrays in the inputs are ignored, not an error
    make_loss(LossConfig(kind="bpr"))(x)


def test_config_errors():
    with pytest.raises(ValueError, match="loss kind must be one of"):
        LossConfig(kind="softmax")
    with pytest.raises(ValueError, match="reduction must be one of"):
        LossConfig(reduction="avg")
    with pytest.raises(ValueError, match="temperature must be positive"):
        LossConfig(temperature=0.0)
    with pytest.raises(ValueError, match="margin must be finite and >= 0"):
        LossConfig(kind="hinge", margin=-1.0)
    with pytest.raises(ValueError, match="symmetric applies to the in-batch softmax kinds"):
        LossConfig(kind="bpr", symmetric=True)
    with pytest.raises(ValueError, match="below min_temperature"):
        LossConfig(temperature=0.001, learn_temperature=True)
    with pytest.raises(ValueError, match=r"unknown loss config keys \['temp'\]"):
        LossConfig.from_dict({"temp": 1.0})
    with pytest.raises(TypeError, match="LossConfig.symmetric must be a bool"):
        LossConfig(symmetric="yes")
    with pytest.raises(TypeError, match="LossConfig"):
        make_loss({"kind": "bpr"})


def test_function_errors():
    q, pos, neg, pos_ids, neg_ids, lq_pos, lq_neg = make_batch(10)
    with pytest.raises(ValueError, match=r"neg must be per-row \[B, n, D\]"):
        bpr(q, pos, neg[:, :, :3])
    with pytest.raises(ValueError, match="pos must have the shape of q"):
        bce(q, pos[:3], neg)
    with pytest.raises(ValueError, match=r"neg_ids must have shape \[5, 4\]"):
        hinge(q, pos, neg, pos_ids=pos_ids, neg_ids=neg_ids[:, :2])
    with pytest.raises(ValueError, match="needs both pos_ids and neg_ids: pos_ids given, neg_ids missing"):
        bpr(q, pos, neg, pos_ids=pos_ids)
    with pytest.raises(TypeError, match="neg_ids must be an integer tensor"):
        bpr(q, pos, neg, pos_ids=pos_ids, neg_ids=neg_ids.double())
    with pytest.raises(ValueError, match=r"logq_neg must have shape \[5, 4\]"):
        sampled_softmax(q, pos, neg, temperature=1.0, logq_neg=lq_pos)
    with pytest.raises(ValueError, match="temperature must be positive"):
        sampled_softmax(q, pos, neg, temperature=-0.1)
    with pytest.raises(ValueError, match="temperature tensor must be 0-d"):
        sampled_softmax(q, pos, neg, temperature=torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="reduction must be one of"):
        bce(q, pos, neg, reduction="batchmean")
    with pytest.raises(ValueError, match="margin must be finite"):
        hinge(q, pos, neg, margin=float("nan"))
    with pytest.raises(TypeError, match="must match q"):
        bpr(q, pos.float(), neg)
    with pytest.raises(ValueError, match="empty batch"):
        bpr(q[:0], pos[:0], neg[:0])


def without_negatives(x: LossInputs) -> LossInputs:
    """The same batch for directau, which compares the batch's rows and takes no negatives."""
    return LossInputs(query=x.query, positive=x.positive, user_ids=x.user_ids, item_ids=x.item_ids)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask", [False, True])
def test_indexed_rows_give_the_loss_and_gradients_of_the_gathered_tensors(kind, mask):
    # Modes: everything gathered; negatives as rows; positives as rows (negatives gathered); both as
    # rows of one table (the per-row kinds then score them in one pass). Shared negatives ride along.
    from twotower.losses import IndexedRows

    g = torch.Generator().manual_seed(11)
    b, n, u, d = 9, 5, 13, 6
    query = torch.randn(b, d, generator=g, dtype=torch.float64)
    table = torch.randn(u, d, generator=g, dtype=torch.float64)
    index = torch.randint(0, u, (b, n), generator=g)
    pos_rows = torch.randint(0, u, (b,), generator=g)
    log_q = -torch.rand(b, n, generator=g, dtype=torch.float64)
    results = []
    for mode in ("dense", "negatives", "positives", "both"):
        q, t = query.clone().requires_grad_(), table.clone().requires_grad_()
        negatives = IndexedRows(t, index) if mode in ("negatives", "both") else t[index]
        positive = IndexedRows(t, pos_rows.unsqueeze(1)) if mode in ("positives", "both") else t[pos_rows]
        inputs = LossInputs(query=q, positive=positive, negatives=negatives, item_ids=pos_rows, negative_ids=index,
                            user_ids=torch.arange(b), item_log_q=-torch.ones(b, dtype=torch.float64),
                            negative_log_q=log_q, shared_negatives=t[:3], shared_ids=torch.arange(3),
                            shared_log_q=-torch.ones(3, dtype=torch.float64))
        config = LossConfig(kind=kind, temperature=0.3, reduction="none", remove_accidental_hits=mask)
        loss = make_loss(config)(without_negatives(inputs) if kind == "directau" else inputs)
        (loss * torch.linspace(0.5, 1.5, b, dtype=torch.float64)).sum().backward()
        results.append((loss.detach(), q.grad, t.grad))
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_indexed_rows_are_checked():
    from twotower.losses import IndexedRows

    q = torch.randn(4, 3)
    bad = LossInputs(query=q, positive=q, negatives=IndexedRows(torch.randn(5, 2), torch.zeros(4, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"LossInputs.negatives.vectors must be \[U, D\]"):
        make_loss(LossConfig(kind="sampled_softmax"))(bad)
    bad = LossInputs(query=q, positive=q, negatives=IndexedRows(torch.randn(5, 3), torch.zeros(3, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"LossInputs.negatives.index must be \[B, n\]"):
        make_loss(LossConfig(kind="sampled_softmax"))(bad)
    table = torch.randn(5, 3)
    bad = LossInputs(query=q, positive=IndexedRows(table, torch.zeros(4, 2, dtype=torch.long)),
                     negatives=IndexedRows(table, torch.zeros(4, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"LossInputs.positive.index must be \[B, 1\]"):
        make_loss(LossConfig(kind="sampled_softmax"))(bad)
    bad = LossInputs(query=q, positive=IndexedRows(torch.randn(5, 2), torch.zeros(4, 1, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"LossInputs.positive.vectors must be \[U, D\]"):
        make_loss(LossConfig(kind="infonce"))(bad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_embedding_rows_give_the_loss_and_gradients_of_the_looked_up_vectors(kind, normalize):
    # Candidates left in an embedding table (EmbeddingRows) score as the looked-up, normalised
    # vectors do: per-row kinds through embedding_scores, in-batch kinds through materialize().
    from twotower.losses import EmbeddingRows, IndexedRows

    g = torch.Generator().manual_seed(12)
    b, n, r, d = 8, 4, 30, 6
    query = torch.randn(b, d, generator=g, dtype=torch.float64)
    weight = torch.randn(r, d, generator=g, dtype=torch.float64)
    ids = torch.randperm(r, generator=g)[:15]
    index = torch.randint(0, 15, (b, n), generator=g)
    pos_rows = torch.randint(0, 15, (b,), generator=g)
    results = []
    for in_table in (True, False):
        q, w = query.clone().requires_grad_(), weight.clone().requires_grad_()
        if in_table:
            vectors = EmbeddingRows(w, ids, normalize, sparse=True)
        else:
            looked_up = torch.nn.functional.embedding(ids, w)
            vectors = torch.nn.functional.normalize(looked_up, dim=1) if normalize else looked_up
        shared = torch.nn.functional.embedding(torch.arange(3), w)  # dense, the same in both runs
        inputs = LossInputs(query=q, positive=IndexedRows(vectors, pos_rows.unsqueeze(1)),
                            negatives=IndexedRows(vectors, index), item_ids=ids[pos_rows], negative_ids=ids[index],
                            user_ids=torch.arange(b), shared_negatives=shared, shared_ids=torch.arange(3),
                            shared_log_q=-torch.ones(3, dtype=torch.float64),
                            item_log_q=-torch.ones(b, dtype=torch.float64),
                            negative_log_q=-torch.rand(
                                b, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64
                            ))
        loss = make_loss(LossConfig(kind=kind, temperature=0.3, reduction="none"))(
            without_negatives(inputs) if kind == "directau" else inputs)
        (loss * torch.linspace(0.5, 1.5, b, dtype=torch.float64)).sum().backward()
        results.append((loss.detach(), q.grad, w.grad.to_dense()))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sampled_softmax", "bpr", "hinge", "bce"])
def test_precomputed_row_scores_give_the_loss_and_gradient_of_scoring_the_rows(kind):
    """LossInputs.row_scores (the table step's scores) stand for the joint [positive | negatives]
    dot products: same loss, and the gradient they receive is the one the vectors' scores receive."""
    from twotower.losses import IndexedRows

    g = torch.Generator().manual_seed(11)
    q, table = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    index = torch.randint(0, 9, (6, 4), generator=g)
    ids = index + 100
    config = LossConfig(kind=kind, temperature=0.3, remove_accidental_hits=True)
    loss_fn = make_loss(config)
    rows = table.clone().requires_grad_()
    want = loss_fn(LossInputs(query=q, positive=IndexedRows(rows, index[:, :1]),
                              negatives=IndexedRows(rows, index[:, 1:]),
                              item_ids=ids[:, 0], negative_ids=ids[:, 1:]))
    want.backward()
    scores = (q.unsqueeze(1) * table[index]).sum(-1).requires_grad_()
    got = loss_fn(LossInputs(query=q, positive=IndexedRows(table, index[:, :1]),
                             negatives=IndexedRows(table, index[:, 1:]),
                             item_ids=ids[:, 0], negative_ids=ids[:, 1:], row_scores=scores))
    got.backward()
    torch.testing.assert_close(got, want.detach())
    via_scores = torch.zeros_like(table).index_add_(
        0, index.reshape(-1), (scores.grad.unsqueeze(-1) * q.unsqueeze(1)).reshape(-1, 4)
    )
    torch.testing.assert_close(via_scores, rows.grad)


def test_precomputed_row_scores_are_checked():
    from twotower.losses import IndexedRows

    q, table, index = torch.randn(3, 2), torch.randn(5, 2), torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    inputs = LossInputs(query=q, positive=IndexedRows(table, index[:, :1]), negatives=IndexedRows(table, index[:, 1:]),
                        row_scores=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"LossInputs.row_scores must have shape \[3, 3\]"):
        make_loss(LossConfig(kind="sampled_softmax"))(inputs)
    with pytest.raises(ValueError, match="no shared negatives"):
        make_loss(LossConfig(kind="sampled_softmax"))(dataclasses.replace(
            inputs, row_scores=torch.zeros(3, 3), shared_negatives=torch.randn(4, 2)))
    with pytest.raises(ValueError, match="row_scores serves the per-row kinds"):
        make_loss(LossConfig(kind="infonce"))(dataclasses.replace(inputs, row_scores=torch.zeros(3, 3)))


# ----------------------------------------------------------------------------------------------
# SimpleX's CCL and DirectAU: hand-computed cases, the naive oracles, gradients, settings
# ----------------------------------------------------------------------------------------------


def test_ccl_hand_computed():
    # q = (1, 0); positive (0.6, 0.8): cosine 0.6, its term 1 - 0.6 = 0.4.
    # negatives (0.8, 0.6), (0, 1), (1, 0): cosines 0.8, 0, 1; margin 0.5 keeps 0.8 - 0.5 = 0.3 and
    # 1 - 0.5 = 0.5, the middle one costs 0; mean (0.3 + 0 + 0.5) / 3 = 0.2667, weight 3 -> 0.8.
    # loss = 0.4 + 0.8 = 1.2. Masking the third (an accidental hit): mean (0.3 + 0) / 2 = 0.15 -> 0.4 + 0.45.
    q = torch.tensor([[1.0, 0.0]], dtype=F64)
    pos = torch.tensor([[0.6, 0.8]], dtype=F64)
    neg = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]], dtype=F64)
    assert ccl(q, pos, neg, margin=0.5, negative_weight=3.0).item() == pytest.approx(1.2, rel=1e-12)
    masked = ccl(q, pos, neg, margin=0.5, negative_weight=3.0, pos_ids=torch.tensor([4]),
                 neg_ids=torch.tensor([[1, 2, 4]]))
    assert masked.item() == pytest.approx(0.85, rel=1e-12)


@pytest.mark.parametrize("weight", [0.0, 0.5, 7.0])
def test_ccl_negative_weight_matches_naive(weight):
    q, pos, neg, pos_ids, neg_ids, _, _ = make_batch(11, b=6, n=5)
    got = ccl(q, pos, neg, margin=0.2, negative_weight=weight, temperature=2.0, pos_ids=pos_ids, neg_ids=neg_ids,
              reduction="none")
    want = naive_loss("ccl", naive_rows(q, pos, neg, 2.0, pos_ids=pos_ids, neg_ids=neg_ids), margin=0.2,
                      negative_weight=weight)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_selector_ccl_uses_margin_and_weight():
    x = selector_inputs()
    cfg = LossConfig(kind="ccl", margin=0.1, negative_weight=4.0, reduction="none")
    neg = torch.cat([x.negatives, x.shared_negatives.expand(x.query.shape[0], -1, -1)], 1)
    ids = torch.cat([x.negative_ids, x.shared_ids.expand(x.query.shape[0], -1)], 1)
    rows = naive_rows(x.query, x.positive, neg, 1.0, pos_ids=x.item_ids, neg_ids=ids)
    torch.testing.assert_close(make_loss(cfg)(x), naive_loss("ccl", rows, margin=0.1, negative_weight=4.0))
    assert LossConfig(kind="ccl").resolved_margin == 0.9 and LossConfig(kind="hinge").resolved_margin == 1.0


def test_directau_hand_computed():
    # Two users (1, 0), (0, 1) with items equal to them: alignment 0. Each side's one pair is at
    # squared distance 2, potential exp(-2 * 2) = e^-4, uniformity log e^-4 = -4 on both sides.
    # loss = 0 + gamma * (-4 - 4) / 2 = -4 gamma; gamma 0.5 -> -2. Unnormalised inputs give the same.
    q = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=F64)
    pos = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    assert directau(q, pos, uniformity_weight=0.5).item() == pytest.approx(-2.0, rel=1e-12)
    # Items swapped: each user's item is the other's direction, alignment |(1,0) - (0,1)|^2 = 2.
    assert directau(q, pos.flip(0), uniformity_weight=0.0).item() == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 3.5])
@pytest.mark.parametrize("b", [2, 7])
def test_directau_matches_naive(gamma, b):
    q, pos, *_ = make_batch(12 + b, b=b, n=1, d=5)
    got = directau(q, pos, uniformity_weight=gamma, reduction="none")
    torch.testing.assert_close(got, naive_directau(q, pos, gamma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(directau(q, pos, uniformity_weight=gamma), naive_directau(q, pos, gamma).mean())
    selected = make_loss(LossConfig(kind="directau", uniformity_weight=gamma))(LossInputs(query=q, positive=pos))
    torch.testing.assert_close(selected, naive_directau(q, pos, gamma).mean())


def test_directau_gradcheck():
    q, pos, *_ = make_batch(13, b=5, n=1, d=4)
    inputs = (q.clone().requires_grad_(), pos.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: directau(a, b, uniformity_weight=1.5, reduction="none"), inputs)


def test_directau_refuses_negatives_and_ccl_bad_settings():
    x = selector_inputs()
    with pytest.raises(ValueError, match="directau.*takes no negatives"):
        make_loss(LossConfig(kind="directau"))(x)
    with pytest.raises(ValueError, match="negative_weight"):
        LossConfig(kind="ccl", negative_weight=-1.0)
    with pytest.raises(ValueError, match="uniformity_weight"):
        LossConfig(kind="directau", uniformity_weight=float("nan"))
    with pytest.raises(ValueError, match="margin"):
        LossConfig(kind="ccl", margin=float("inf"))


def test_data_temperature_follows_the_catalogue_share_of_a_user():
    from twotower.losses import data_temperature
    from twotower.settings.loss import DATA_TEMPERATURE_RANGE, DATA_TEMPERATURE_SCALE

    # tau = scale / ln(N / k): N = 1000 items, k = 10 per user -> scale / ln 100
    assert data_temperature(1000, 10.0) == pytest.approx(DATA_TEMPERATURE_SCALE / math.log(100), rel=1e-12)
    # a user covering less of the catalogue needs a sharper softmax
    assert data_temperature(100_000, 10.0) < data_temperature(1000, 10.0)
    # clamped at both ends: users covering the whole catalogue, and an astronomically large one
    assert data_temperature(50, 50.0) == DATA_TEMPERATURE_RANGE[1]
    assert data_temperature(2, 1.0) == DATA_TEMPERATURE_RANGE[1]  # scale / ln 2 > 0.5
    assert data_temperature(10**300, 1.0) == DATA_TEMPERATURE_RANGE[0]
    with pytest.raises(ValueError, match="positives_per_user > 0"):
        data_temperature(100, 0.0)


def test_for_data_fills_only_an_unset_softmax_temperature():
    from twotower.losses import data_temperature

    auto = LossConfig(kind="mixed").for_data(1000, 10.0)
    assert auto.resolved_temperature == pytest.approx(data_temperature(1000, 10.0))
    assert LossConfig(kind="mixed", temperature=0.3).for_data(1000, 10.0).resolved_temperature == 0.3
    assert LossConfig(kind="bpr").for_data(1000, 10.0).resolved_temperature == 1.0
    assert LossConfig(kind="sampled_softmax").for_data(10**6, 1.0).resolved_temperature < 0.1
