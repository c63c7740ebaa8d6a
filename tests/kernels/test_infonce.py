"""Fused InfoNCE (Triton, run through the CPU interpreter here) against the float64 oracle.

tests/conftest.py sets TRITON_INTERPRET=1 when there is no CUDA device, before Triton is imported;
every test below therefore runs the real kernels, on CPU, at small ragged sizes (B, N <= 512 keeps
the interpreter fast). Every kernel output and scratch buffer is NaN-poisoned before each call
(`POISON_OUTPUTS`), so an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from twotower.kernels import infonce as infonce_mod  # noqa: E402
from twotower.kernels import infonce_triton as kt  # noqa: E402
from twotower.kernels.infonce import InfoNCE, infonce, kernel_available  # noqa: E402
from twotower.kernels.infonce_eager import infonce_eager  # noqa: E402

from . import oracles  # noqa: E402

# The Triton kernel runs under the CPU interpreter here: minutes in all (pytest -m "not slow" skips it).
pytestmark = pytest.mark.slow

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Tolerances per input dtype, relative to the largest magnitude of the float64 oracle
# (loss, or each gradient). Logits, exponentials and log-sum-exp are fp32 for every dtype, so the
# loss stays near fp32 accuracy even for half inputs; gradients of half inputs carry the rounding
# of dS to the input dtype before the gradient GEMM (as FlashAttention does) and of the output.
TOL = {
    torch.float32: {"loss": 1e-5, "grad": 5e-4},
    torch.float16: {"loss": 1e-4, "grad": 5e-3},
    torch.bfloat16: {"loss": 1e-4, "grad": 2e-2},
}


@pytest.fixture(autouse=True)
def _poison_outputs_and_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kt, "POISON_OUTPUTS", True)
    torch.manual_seed(0)  # tests that draw from the global generator see fixed inputs


@dataclass
class Case:
    B: int
    M: int
    D: int
    dtype: torch.dtype = torch.float32
    logq: bool = False
    masks: bool = False  # item_ids, query_ids (and extra_ids with extra), drawn to collide often
    symmetric: bool = False
    correct_positive: bool = True
    reduction: str = "mean"
    learned_temperature: bool = True
    temperature: float = 0.2
    pairs: bool = False  # masked_pairs (the known-positive masks), with repeats and positives among them

    def __str__(self) -> str:
        flags = [n for n in ("logq", "masks", "symmetric", "pairs") if getattr(self, n)]
        if not self.correct_positive:
            flags.append("rawpos")
        return f"B{self.B}-M{self.M}-D{self.D}-{str(self.dtype)[6:]}-{self.reduction}-{'+'.join(flags) or 'plain'}"


# Each of B in {1, 7, 130, 300}, M in {0, 1, 7, 130, 300}, D in {8, 64, 96, 130, 256} (96, 130 and
# 256 span 2-4 D chunks under the interpreter), each option, each reduction and each dtype appears at
# least once, without the full cross product (the interpreter is slow).
CASES = [
    Case(1, 0, 8),
    Case(1, 7, 256, torch.float16, symmetric=True, reduction="sum"),
    Case(7, 0, 64, logq=True, reduction="none"),
    Case(7, 300, 130, logq=True, masks=True),  # small B, large M: split-column path
    Case(7, 130, 96, torch.float16, logq=True, correct_positive=False),
    Case(130, 0, 96, masks=True, symmetric=True),
    Case(130, 7, 256, reduction="sum", learned_temperature=False),
    Case(130, 70, 64, torch.bfloat16, masks=True, symmetric=True, reduction="none"),
    Case(300, 130, 64, logq=True, masks=True, symmetric=True, correct_positive=False, reduction="none"),
    Case(300, 0, 8, logq=True, symmetric=True, correct_positive=False, temperature=0.05),
    Case(300, 1, 96, torch.bfloat16, logq=True, masks=True),
    Case(64, 64, 16, torch.float16, masks=True, reduction="sum"),  # exact multiples of the blocks
    Case(130, 70, 64, logq=True, masks=True, pairs=True, reduction="none"),
    Case(7, 300, 96, torch.bfloat16, logq=True, masks=True, correct_positive=False, pairs=True),
    Case(64, 0, 16, pairs=True, reduction="sum"),
]


def make_inputs(case: Case, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    B, M, D = case.B, case.M, case.D

    def vecs(n: int) -> torch.Tensor:  # unit vectors, as two-tower models usually emit
        x = torch.randn(n, D, generator=g, dtype=torch.float64)
        return torch.nn.functional.normalize(x, dim=-1).to(case.dtype).to(DEVICE)

    inputs: dict = {"q": vecs(B), "k": vecs(B)}
    # Nudge each positive towards its query so the softmax is not uniform.
    inputs["k"] = (inputs["k"].double() + 0.5 * inputs["q"].double()).to(case.dtype)
    if M:
        inputs["extra"] = vecs(M)
    if case.logq:
        inputs["logq"] = (-5 * torch.rand(B, generator=g)).to(DEVICE)
        if M:
            inputs["logq_extra"] = (-5 * torch.rand(M, generator=g)).to(DEVICE)
    if case.masks:
        n_items = max(2, B // 3)
        inputs["item_ids"] = torch.randint(0, n_items, (B,), generator=g).to(DEVICE)
        inputs["query_ids"] = torch.randint(0, max(2, B // 2), (B,), generator=g).to(DEVICE)
        if M:
            inputs["extra_ids"] = torch.randint(0, n_items, (M,), generator=g).to(DEVICE)
            # Other processes' rows (distributed training): some share a query with a local row, -1 none.
            inputs["extra_query_ids"] = torch.randint(-1, max(2, B // 2), (M,), generator=g).to(DEVICE)
    if case.pairs:
        count = 4 * B
        inputs["masked_pairs"] = torch.stack([torch.randint(0, B, (count,), generator=g),
                                              torch.randint(0, B + M, (count,), generator=g)], dim=1).to(DEVICE)
    return inputs


def run_both(case: Case, inputs: dict, seed: int):
    """(kernel loss, kernel grads, oracle loss, oracle grads), grads w.r.t. q, k, extra, tau;
    the oracle runs in float64 on the same (rounded) input values, with the same random
    upstream gradient."""
    g = torch.Generator().manual_seed(seed + 1)
    opts = dict(
        correct_positive=case.correct_positive, reduction=case.reduction, symmetric=case.symmetric,
        **{n: inputs[n] for n in ("logq", "logq_extra", "query_ids", "item_ids", "extra_ids", "extra_query_ids",
                                  "masked_pairs") if n in inputs},
    )
    upstream = torch.randn(case.B if case.reduction == "none" else (), generator=g, dtype=torch.float64)

    def go(cast: torch.dtype | None, fn):
        leaves = {n: inputs[n].detach().clone() for n in ("q", "k", "extra") if n in inputs}
        if cast is not None:
            leaves = {n: v.to(cast) for n, v in leaves.items()}
        for v in leaves.values():
            v.requires_grad_(True)
        if case.learned_temperature:
            tau = torch.tensor(case.temperature, dtype=cast or torch.float32, device=DEVICE, requires_grad=True)
            leaves["tau"] = tau
        else:
            tau = case.temperature
        loss = fn(leaves["q"], leaves["k"], temperature=tau, extra=leaves.get("extra"), **opts)
        (loss.double() * upstream.to(DEVICE)).sum().backward()
        return loss.detach(), {n: v.grad for n, v in leaves.items()}

    loss, grads = go(None, infonce)
    ref_loss, ref_grads = go(torch.float64, oracles.infonce)
    return loss, grads, ref_loss, ref_grads


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten or overflowed)"
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * max(scale, 1e-6), f"{what}: max abs error {err:.3e} > {tol:.0e} x {scale:.3e}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_float64_oracle(case: Case) -> None:
    seed = hash(str(case)) % 2**31
    inputs = make_inputs(case, seed)
    loss, grads, ref_loss, ref_grads = run_both(case, inputs, seed)
    tol = TOL[case.dtype]
    assert loss.dtype == torch.float32
    assert_close_rel(loss, ref_loss, tol["loss"], "loss")
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert grads[name].dtype == (torch.float32 if name == "tau" else case.dtype), name
        assert_close_rel(grads[name], ref_grads[name], tol["grad"], f"d{name}")


def test_tiny_case_computed_by_hand() -> None:
    # q = [[1], [0]], k = [[1], [1]], tau = 1: logits S = q kᵀ = [[1, 1], [0, 0]].
    # Row 0: log(e^1 + e^1) - 1 = log 2. Row 1: log(e^0 + e^0) - 0 = log 2.
    # Item->query: column 0 over queries {1, 0}, positive 1: log(e + 1) - 1;
    #              column 1 over {1, 0}, positive 0: log(e + 1) - 0.
    q = torch.tensor([[1.0], [0.0]], device=DEVICE)
    k = torch.tensor([[1.0], [1.0]], device=DEVICE)
    rows = infonce(q, k, temperature=1.0, reduction="none")
    torch.testing.assert_close(rows, torch.full((2,), math.log(2.0), device=DEVICE), rtol=1e-6, atol=1e-6)
    both = infonce(q, k, temperature=1.0, reduction="none", symmetric=True)
    lp1 = math.log(math.e + 1)
    expected = torch.tensor([math.log(2) + lp1 - 1, math.log(2) + lp1], device=DEVICE)
    torch.testing.assert_close(both, expected, rtol=1e-6, atol=1e-6)


def test_logq_convention_computed_by_hand() -> None:
    # Same q, k as above, tau = 1, logq = [ln 0.5, ln 0.25]: corrected logits s_ij = u_ij - logq_j.
    # Row 0: u = [1, 1] -> s = [1 + ln 2, 1 + ln 4]; loss_0 = log(e^s00 + e^s01) - s00.
    # With correct_positive=False the positive keeps u_00 = 1: loss_0 = log(e^1 + e^s01) - 1.
    q = torch.tensor([[1.0], [0.0]], device=DEVICE)
    k = torch.tensor([[1.0], [1.0]], device=DEVICE)
    logq = torch.tensor([math.log(0.5), math.log(0.25)], device=DEVICE)
    s00, s01 = 1 + math.log(2), 1 + math.log(4)
    rows = infonce(q, k, temperature=1.0, logq=logq, reduction="none")
    assert rows[0].item() == pytest.approx(math.log(math.exp(s00) + math.exp(s01)) - s00, rel=1e-6)
    raw = infonce(q, k, temperature=1.0, logq=logq, correct_positive=False, reduction="none")
    assert raw[0].item() == pytest.approx(math.log(math.e + math.exp(s01)) - 1, rel=1e-6)
    # Row 1: u = [0, 0], s = [ln 2, ln 4], positive s_11 = ln 4 (corrected) or 0 (raw).
    assert rows[1].item() == pytest.approx(math.log(2 + 4) - math.log(4), rel=1e-6)
    assert raw[1].item() == pytest.approx(math.log(2 + 1) - 0.0, rel=1e-6)


def test_fully_masked_rows_have_zero_loss_and_gradient() -> None:
    # Row 0 (item 7, query 0) relates to every other row: odd rows hold item 7 (accidental hits),
    # even rows belong to query 0 (same user). Odd and even rows do not relate to each other. The
    # extra negatives all hold item 7, so row 0 keeps only its positive: loss_0 = s_00 - s_00 = 0,
    # with zero gradient; the other rows keep some negatives and must match the oracle.
    B, M, D = 9, 5, 24
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, D, generator=g).to(DEVICE).requires_grad_(True)
    k = torch.randn(B, D, generator=g).to(DEVICE).requires_grad_(True)
    extra = torch.randn(M, D, generator=g).to(DEVICE).requires_grad_(True)
    item_ids = torch.tensor([7, 7, 202, 7, 204, 7, 206, 7, 208], device=DEVICE)
    query_ids = torch.tensor([0, 101, 0, 103, 0, 105, 0, 107, 0], device=DEVICE)
    extra_ids = torch.full((M,), 7, device=DEVICE)
    opts = dict(item_ids=item_ids, query_ids=query_ids, extra_ids=extra_ids, reduction="none")
    rows = infonce(q, k, temperature=0.5, extra=extra, **opts)
    ref = oracles.infonce(q.double(), k.double(), temperature=0.5, extra=extra.double(), **opts)
    assert torch.isfinite(rows).all()
    assert rows[0].item() == pytest.approx(0.0, abs=1e-6)
    assert (rows[1:] > 0).all()  # at least one negative left: strictly positive loss
    assert_close_rel(rows, ref, 1e-5, "per-row loss")
    rows[0].backward()
    for grad in (q.grad, k.grad, extra.grad):
        assert torch.isfinite(grad).all()
        assert grad.abs().max().item() < 1e-6


def test_every_negative_masked_in_symmetric_mode() -> None:
    # One shared query id: both directions lose every negative, the loss is 0 and finite.
    B, D = 6, 16
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, D, generator=g).to(DEVICE).requires_grad_(True)
    k = torch.randn(B, D, generator=g).to(DEVICE).requires_grad_(True)
    loss = infonce(q, k, temperature=0.1, query_ids=torch.zeros(B, dtype=torch.int32, device=DEVICE), symmetric=True)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert q.grad.abs().max().item() < 1e-6 and k.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_split_columns_agree_with_oracle(splits: int) -> None:
    """The forward / row pass with the candidate axis split over 1-3 programs (combined in a fixed
    order) gives the oracle's lse, loss, dQ and temperature term."""
    B, M, D = 260, 440, 16  # N = 700: 3 column splits of 256; rows split 256 + 4
    case = Case(B, M, D, logq=True, masks=True)
    inp = make_inputs(case, 11)
    side = kt.Side(
        inp["extra"], inp["logq"].float(), inp["logq_extra"].float(), inp["query_ids"], inp["item_ids"],
        inp["extra_ids"], True, inp["extra_query_ids"],
    )
    temp = torch.tensor(0.3, device=DEVICE)
    lse2, loss = kt.forward_lse(inp["q"], inp["k"], temp, side, splits=splits)
    # Oracle lse: logsumexp over the masked, corrected float64 logits.
    q64, c64 = inp["q"].double(), torch.cat([inp["k"], inp["extra"]]).double()
    s = q64 @ c64.T / 0.3 - torch.cat([inp["logq"], inp["logq_extra"]]).double()[None, :]
    hits = oracles.accidental_hits(B, M, query_ids=inp["query_ids"], item_ids=inp["item_ids"],
                                   extra_ids=inp["extra_ids"], extra_query_ids=inp["extra_query_ids"])
    s = s.masked_fill(torch.tensor(hits, device=s.device), float("-inf"))
    ref_lse = torch.logsumexp(s, 1)
    assert_close_rel(lse2 * kt.LN2, ref_lse, 1e-5, "lse")
    assert_close_rel(loss, ref_lse - s[:, :B].diagonal(), 1e-5, "loss")
    g = torch.rand(B, device=DEVICE)
    dq, rowdot = kt.backward_dq(inp["q"], inp["k"], temp, side, lse2, None, g, compute_dtau=True, splits=splits)
    p = torch.softmax(s, 1)
    ds = g.double()[:, None] * (p - torch.eye(B, B + M, dtype=torch.float64, device=DEVICE))
    assert_close_rel(dq, ds @ c64 / 0.3, 5e-4, "dq")
    assert_close_rel(rowdot, (ds * (q64 @ c64.T / 0.3)).sum(1), 5e-4, "rowdot")
    # Column pass with the anchor rows split over 1-3 programs per candidate block.
    dk = kt.backward_dc(inp["q"], inp["k"], temp, side, lse2, None, g, is_extra=False, splits=splits)
    de = kt.backward_dc(inp["q"], inp["extra"], temp, side, lse2, None, g, is_extra=True, splits=splits)
    dc_ref = ds.T @ q64 / 0.3
    assert_close_rel(dk, dc_ref[:B], 5e-4, "dk")
    assert_close_rel(de, dc_ref[B:], 5e-4, "dextra")


def test_bitwise_deterministic() -> None:
    case = Case(130, 70, 40, logq=True, masks=True, symmetric=True)
    inputs = make_inputs(case, 5)
    first = run_both(case, inputs, 5)
    second = run_both(case, inputs, 5)
    assert torch.equal(first[0], second[0])
    for name in first[1]:
        assert torch.equal(first[1][name], second[1][name]), name


def test_temperature_float_and_tensor_agree() -> None:
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(20, 12, generator=g).to(DEVICE), torch.randn(20, 12, generator=g).to(DEVICE)
    a = infonce(q, k, temperature=0.25)
    b = infonce(q, k, temperature=torch.tensor(0.25, device=DEVICE))
    assert torch.equal(a, b)


def test_noncontiguous_rows() -> None:
    # Column slices keep unit stride along D but have a row stride larger than D.
    base_q, base_k = torch.randn(33, 50, device=DEVICE), torch.randn(33, 50, device=DEVICE)
    q, k = base_q[:, 3:43], base_k[:, 5:45]
    torch.testing.assert_close(
        infonce(q, k, temperature=0.3),
        oracles.infonce(q.double(), k.double(), temperature=0.3).float(),
        rtol=1e-5, atol=1e-6,
    )
    # A transposed view (stride along D != 1) is made contiguous first.
    qt = torch.randn(40, 33, device=DEVICE).T
    torch.testing.assert_close(
        infonce(qt, k, temperature=0.3),
        oracles.infonce(qt.double(), k.double(), temperature=0.3).float(),
        rtol=1e-5, atol=1e-6,
    )


def test_inside_torch_compile() -> None:
    # A training step compiled with torch.compile calls the kernel eagerly (graph break) and gets the
    # same loss and gradients as eager code.
    g = torch.Generator().manual_seed(8)
    q = torch.randn(24, 16, generator=g).to(DEVICE).requires_grad_(True)
    k = torch.randn(24, 16, generator=g).to(DEVICE).requires_grad_(True)

    def step(q, k):
        return infonce(q * 2.0, k, temperature=0.3, symmetric=True)

    compiled = torch.compile(step, backend="eager")
    loss_c = compiled(q, k)
    (gq_c,) = torch.autograd.grad(loss_c, q)
    loss_e = step(q, k)
    (gq_e,) = torch.autograd.grad(loss_e, q)
    assert torch.equal(loss_c, loss_e) and torch.equal(gq_c, gq_e)


def test_autocast_casts_float32_vectors_like_a_matmul() -> None:
    g = torch.Generator().manual_seed(9)
    q = torch.randn(30, 16, generator=g).to(DEVICE).requires_grad_(True)
    k = torch.randn(30, 16, generator=g).to(DEVICE).requires_grad_(True)
    with torch.autocast(device_type=torch.device(DEVICE).type, dtype=torch.bfloat16):
        loss = infonce(q, k, temperature=0.2)
    (dq,) = torch.autograd.grad(loss, q)
    expected = infonce(q.detach().bfloat16(), k.detach().bfloat16(), temperature=0.2)
    assert torch.equal(loss, expected)
    assert dq.dtype == torch.float32  # gradients flow back through the cast


def test_autotune_opt_in_is_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    # The opt-in autotuned kernels (TWOTOWER_INFONCE_AUTOTUNE=1 on a GPU) wrap the same kernels in
    # triton.autotune; with a single config the interpreter can run them, which checks the grid
    # lambdas and the heuristics they keep (BLOCK_D, SINGLE_D) end to end.
    import triton

    from twotower.kernels import infonce_triton_tiles as tiles

    monkeypatch.setattr(
        tiles, "_tune_configs", lambda: [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2)]
    )
    kt._tuned_kernels.cache_clear()
    try:
        tuned = kt._tuned_kernels()
        monkeypatch.setattr(kt, "_kernels", lambda: tuned)
        case = Case(70, 50, 40, masks=True, symmetric=True)
        loss, grads, ref_loss, ref_grads = run_both(case, make_inputs(case, 12), 12)
    finally:
        kt._tuned_kernels.cache_clear()
    assert_close_rel(loss, ref_loss, TOL[torch.float32]["loss"], "loss")
    for name in grads:
        assert_close_rel(grads[name], ref_grads[name], TOL[torch.float32]["grad"], f"d{name}")


def test_module_learns_temperature() -> None:
    loss_fn = InfoNCE(0.1, learn_temperature=True, symmetric=True)
    q, k = torch.randn(10, 8, device=DEVICE), torch.randn(10, 8, device=DEVICE)
    loss = loss_fn(q, k)
    loss.backward()
    ref = oracles.infonce(q.double(), k.double(), temperature=torch.tensor(0.1, dtype=torch.float64), symmetric=True)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert loss_fn.log_temperature.grad is not None and torch.isfinite(loss_fn.log_temperature.grad)


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = kt.forward_lse
    monkeypatch.setattr(kt, "forward_lse", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    if DEVICE == "cpu":
        assert os.environ.get("TRITON_INTERPRET") == "1"
        assert kernel_available("cpu", torch.float32)
        infonce(q, k, temperature=0.5)
        assert calls, "CPU tensors under TRITON_INTERPRET=1 must run the Triton kernel"
        calls.clear()
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert not kernel_available("cpu", torch.float32)
        infonce(q, k, temperature=0.5)
        assert not calls, "CPU tensors without the interpreter must not run the Triton kernel"
    # float64 never takes the kernel path.
    infonce(q.double().to(DEVICE), k.double().to(DEVICE), temperature=0.5)
    assert not calls
    assert not kernel_available(DEVICE, torch.float64)


BAD_INPUTS = [
    (dict(q=torch.randn(4, 8, 1)), ValueError, "q must be 2-D"),
    (dict(k=torch.randn(5, 8)), ValueError, "same shape"),
    (dict(q=torch.randn(0, 8), k=torch.randn(0, 8)), ValueError, "at least one row"),
    (dict(q=torch.randint(0, 3, (4, 8))), TypeError, "q must be float16"),
    (dict(k=torch.randn(4, 8, dtype=torch.float64)), TypeError, "same dtype"),
    (dict(k=torch.randn(4, 8, device="meta")), ValueError, "k is on meta"),
    (dict(extra=torch.randn(3, 7)), ValueError, "extra must have shape"),
    (dict(extra=torch.randn(3, 8, dtype=torch.float16)), TypeError, "extra must have q's dtype"),
    (dict(logq=torch.randn(5)), ValueError, "logq must have shape"),
    (dict(logq=torch.randint(0, 2, (4,))), TypeError, "log-probabilities"),
    (dict(extra=torch.randn(3, 8), logq=torch.randn(4)), ValueError, "both logq"),
    (dict(logq_extra=torch.randn(3)), ValueError, "logq_extra was given without extra"),
    (dict(extra=torch.randn(3, 8), extra_ids=torch.arange(3)), ValueError, "extra_ids needs item_ids"),
    (dict(item_ids=torch.randn(4)), TypeError, "item_ids must be an integer"),
    (dict(query_ids=torch.arange(5)), ValueError, "query_ids must have shape"),
    (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=torch.tensor([0.1])), ValueError, "0-d"),
    (dict(temperature=torch.tensor(-1.0)), ValueError, "temperature must be > 0"),
    (dict(temperature="0.1"), TypeError, "temperature must be a float"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize("fn", [infonce, infonce_eager], ids=["infonce", "eager"])
@pytest.mark.parametrize("bad,exc,match", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_clear_errors(fn, bad: dict, exc: type, match: str) -> None:
    args = dict(q=torch.randn(4, 8), k=torch.randn(4, 8), temperature=0.1)
    args.update(bad)
    q, k = args.pop("q"), args.pop("k")
    with pytest.raises(exc, match=match):
        fn(q, k, **args)


def test_without_triton_nothing_runs_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infonce_mod, "_HAS_TRITON", False)
    assert not infonce_mod.kernel_available("cuda", torch.bfloat16)
    calls = []
    monkeypatch.setattr(kt, "forward_lse", lambda *a, **kw: calls.append(1))
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    loss = infonce(q, k, temperature=0.5)
    assert not calls
    assert loss.item() == pytest.approx(infonce_eager(q, k, temperature=0.5).item())


def test_kernels_compile_for_hopper_without_a_gpu() -> None:
    """The interpreter runs the kernels' Python, not Triton's compiler, so GPU-only compile errors
    (e.g. a non-constexpr global read inside a kernel) would pass every test above. Lower every kernel
    variant the heuristics can pick to Triton IR for sm_90 in a process without TRITON_INTERPRET."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.gpu.compile_infonce", "--stage", "ttir", "--dtypes", "bf16,fp32",
            "--dims", "64,256,320"
        ],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "0 failure(s)" in out.stdout
