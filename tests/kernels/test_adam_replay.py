"""adam_replay (Numba) and its eager torch version: lazy Adam(W) plus the replay of skipped steps
must land where dense Adam(W) lands, checked against the float64 oracle run densely (every row
stepped every step, zero gradients on the rows a batch did not touch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twotower.kernels.adam_replay import StepLog, replay_rows
from twotower.kernels.adam_replay_eager import replay_rows_eager
from twotower.kernels.sparse_adam import sparse_adam

from . import oracles

BETAS = (0.9, 0.999)


def _state(rows: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, dim, generator=g, dtype=torch.float64), torch.zeros(rows, dim, dtype=torch.float64),
            torch.zeros(rows, dim, dtype=torch.float64)]


def _lr(step: int, total: int) -> float:
    return 0.02 * 0.5 * (1 + math.cos(math.pi * step / total))  # a schedule that changes every step


def _touches(R: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Rows per step, with repeats: a few hot rows nearly every step, the rest rarely (long gaps)."""
    g = torch.Generator().manual_seed(seed)
    hot = torch.arange(min(3, R))
    return [torch.cat([hot, torch.randint(0, R, (max(1, R // 8),), generator=g)]) for _ in range(steps)]


def _dense(R, D, touches, grads, weight_decay, eps):
    p, m, v = _state(R, D, seed=R * 7 + D)
    for step, (rows, g) in enumerate(zip(touches, grads, strict=True), start=1):
        full = torch.zeros(R, D, dtype=torch.float64)
        full.index_add_(0, rows, g)
        p, m, v = (torch.from_numpy(a) for a in oracles.sparse_adam(
            p, m, v, torch.arange(R), full, step=step, lr=_lr(step, len(touches)), beta1=BETAS[0], beta2=BETAS[1],
            eps=eps, weight_decay=weight_decay, decoupled=True))
    return p, m, v


def _lazy_with_replay(R, D, touches, grads, weight_decay, eps, dtype, impl):
    p, m, v = (t.to(dtype) for t in _state(R, D, seed=R * 7 + D))
    last = torch.zeros(R, dtype=torch.int64)
    log = StepLog(*BETAS)
    for step, (rows, g) in enumerate(zip(touches, grads, strict=True), start=1):
        lr = _lr(step, len(touches))
        log.record(step, lr, weight_decay)
        impl(p, m, v, rows, last, log, through=step - 1, eps=eps)
        sparse_adam(p, m, v, rows, g.to(dtype), step=step, lr=lr, beta1=BETAS[0], beta2=BETAS[1], eps=eps,
                    weight_decay=weight_decay, decoupled=True)
        last[rows] = step
    impl(p, m, v, torch.arange(R), last, log, through=len(touches), eps=eps)
    assert (last == len(touches)).all()
    return p, m, v


@pytest.mark.parametrize("impl", [replay_rows, replay_rows_eager], ids=["kernel", "eager"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
@pytest.mark.parametrize("R,D,steps", [(1, 1, 5), (9, 4, 60), (64, 33, 300)])
def test_lazy_adam_with_replay_lands_on_dense_adam(R, D, steps, weight_decay, dtype, tol, impl):
    touches = _touches(R, steps, seed=R + steps)
    g = torch.Generator().manual_seed(D)
    grads = [torch.randn(len(rows), D, generator=g, dtype=torch.float64) for rows in touches]
    eps = 1e-12  # the replay takes eps where the row was touched; dense Adam at each skipped step
    want = _dense(R, D, touches, grads, weight_decay, eps)
    got = _lazy_with_replay(R, D, touches, grads, weight_decay, eps, dtype, impl)
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq"), got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


def test_without_replay_lazy_adam_is_not_dense_adam():
    """The property the replay adds: plain lazy steps leave rarely touched rows behind dense Adam."""
    R, D, steps = 9, 4, 60
    touches = _touches(R, steps, seed=1)
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(len(rows), D, generator=g, dtype=torch.float64) for rows in touches]
    want = _dense(R, D, touches, grads, 0.0, 1e-12)
    p, m, v = _state(R, D, seed=R * 7 + D)
    for step, (rows, gr) in enumerate(zip(touches, grads, strict=True), start=1):
        sparse_adam(p, m, v, rows, gr, step=step, lr=_lr(step, steps), eps=1e-12)
    assert (p - want[0]).abs().max() > 1e-3


def test_a_row_touched_every_step_is_not_replayed():
    p, m, v = _state(4, 3, seed=0)
    m += 0.5
    v += 0.25
    before = [t.clone() for t in (p, m, v)]
    log = StepLog(*BETAS)
    log.record(1, 0.01)
    last = torch.ones(4, dtype=torch.int64)
    replay_rows(p, m, v, torch.arange(4), last, log, through=1)
    for a, b in zip((p, m, v), before, strict=True):
        assert torch.equal(a, b)


def test_one_skipped_step_is_the_momentum_step():
    """By hand: a row current at step 1 brought to step 2 moves by lr a_2 * beta1 m / sqrt(beta2 v)."""
    f64 = torch.float64
    p = torch.zeros(1, 2, dtype=f64)
    m, v = torch.tensor([[0.1, -0.2]], dtype=f64), torch.tensor([[0.04, 0.01]], dtype=f64)
    log = StepLog(*BETAS)
    log.record(1, 0.01)
    log.record(2, 0.03)
    replay_rows(p, m, v, torch.tensor([0]), torch.tensor([1]), log, through=2, eps=1e-300)
    b1, b2 = BETAS
    size = 0.03 * math.sqrt(1 - b2**2) / (1 - b1**2)
    want = -size * b1 * np.array([0.1, -0.2]) / (math.sqrt(b2) * np.sqrt([0.04, 0.01]))
    np.testing.assert_allclose(p[0].numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(m[0].numpy(), [b1 * 0.1, -b1 * 0.2], rtol=1e-12)
    np.testing.assert_allclose(v[0].numpy(), [b2 * 0.04, b2 * 0.01], rtol=1e-12)


def test_a_log_started_after_a_resume():
    """A table restored at step 10 (every row current there) logs from step 10 on."""
    R, D = 5, 3
    log = StepLog(*BETAS, first=10)
    p, m, v = _state(R, D, seed=3)
    m += 0.1
    v += 0.01
    last = torch.full((R,), 10, dtype=torch.int64)
    for step in (11, 12, 13):
        log.record(step, 0.01)
    want = [t.clone() for t in (p, m, v)]
    replay_rows_eager(*want, torch.arange(R), last.clone(), log, through=13)
    replay_rows(p, m, v, torch.arange(R), last, log, through=13)
    for a, b in zip((p, m, v), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert (last == 13).all() and not torch.equal(p, _state(R, D, seed=3)[0])


def test_bad_inputs_are_named():
    p, m, v = _state(4, 2, seed=0)
    log = StepLog(*BETAS)
    log.record(1, 0.01)
    last = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="through"):
        replay_rows(p, m, v, torch.arange(4), last, log, through=2)
    with pytest.raises(ValueError, match=r"rows\[1\] = 3 is current through step 5"):
        replay_rows(p, m, v, torch.tensor([0, 3]), torch.tensor([0, 0, 0, 5]), log, through=1)
    with pytest.raises(IndexError, match="rows"):
        replay_rows(p, m, v, torch.tensor([4]), last, log, through=1)
    with pytest.raises(ValueError, match="last"):
        replay_rows(p, m, v, torch.arange(4), torch.zeros(3, dtype=torch.int64), log, through=1)
    with pytest.raises(ValueError, match="not the next step"):
        log.record(3, 0.01)
    with pytest.raises(ValueError, match=r"beta1 < sqrt\(beta2\)"):
        StepLog(0.99, 0.9)
