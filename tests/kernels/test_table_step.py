"""table_step (Numba: scores of two embedding tables, their gradient and the row-sparse Adam step,
fused) and its eager fallback (autograd through F.embedding and F.normalize, then sparse_adam_eager)
against the float64 oracle: scores, the squared gradient norm and the updated tables and moments,
on ragged shapes, repeated ids on both sides, unused rows, zero rows, with and without
normalisation, weight decay of both kinds and a clip factor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.kernels.table_step import AdamTable, table_adam_step, table_grad_sq_norm, table_scores
from twotower.kernels.table_step_eager import table_adam_step_eager, table_grad_sq_norm_eager, table_scores_eager

from . import oracles

# (B, C, D, R, S, U): batch rows, candidates per row, width, query-table rows, item-table rows, item ids
# (the 300-row shape is slow: CI only)
SHAPES = [(1, 1, 1, 1, 1, 1), (3, 2, 5, 4, 6, 2), (7, 17, 1, 30, 40, 9), (130, 5, 33, 50, 500, 300),
          pytest.param((300, 17, 64, 2000, 2000, 1500), marks=pytest.mark.slow), (64, 3, 130, 20, 50, 40)]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 5e-5}  # relative; float32: roundings of float32 sums


def _inputs(B, C, D, R, S, U, seed):
    g = torch.Generator().manual_seed(seed)
    query_table = (torch.randn(R, D, generator=g, dtype=torch.float64)
                   * (0.5 + torch.rand(R, 1, generator=g, dtype=torch.float64)))
    item_table = (torch.randn(S, D, generator=g, dtype=torch.float64)
                  * (0.5 + torch.rand(S, 1, generator=g, dtype=torch.float64)))
    query_ids = torch.randint(0, R, (B,), generator=g)  # repeats: a user twice in a batch
    item_ids = torch.randint(0, S, (U,), generator=g)  # repeats: the unknown row id dropout maps to
    index = torch.randint(0, U, (B, C), generator=g)
    grad = torch.randn(B, C, generator=g, dtype=torch.float64)
    moments = [torch.randn(R, D, generator=g, dtype=torch.float64) * 0.1,
               torch.rand(R, D, generator=g, dtype=torch.float64),
               torch.randn(S, D, generator=g, dtype=torch.float64) * 0.1,
               torch.rand(S, D, generator=g, dtype=torch.float64)]
    return query_table, item_table, query_ids, item_ids, index, grad, moments


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = want.abs().max().item() or 1.0
    torch.testing.assert_close(got.double(), want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale, msg=what)


IMPLS = {"kernel": (table_scores, table_grad_sq_norm, table_adam_step),
         "eager": (table_scores_eager, table_grad_sq_norm_eager, table_adam_step_eager)}


def _oracle_adam_step(tables, moments, ids, index, grad, normalize, settings):
    """The oracle's step: float64 gradients of both tables as they are, then Adam on each distinct row."""
    grads = oracles.table_gradients(*tables, *ids, index, grad, normalize=normalize)
    for t, (table, table_ids, g) in enumerate(zip(tables, ids, grads, strict=True)):
        rows = torch.unique(table_ids)
        new = oracles.sparse_adam(table, *moments[2 * t:2 * t + 2], rows, g[rows], grad_scale=0.3, **settings)
        tables[t], moments[2 * t], moments[2 * t + 1] = (torch.from_numpy(a) for a in new)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_scores_norm_and_adam_step_match_the_oracle(shape, normalize, dtype, impl):
    scores_fn, sq_norm_fn, adam_fn = IMPLS[impl]
    qt, it, qids, iids, index, grad, moments = _inputs(*shape, seed=sum(shape))
    got_tables, want_tables = [qt.to(dtype), it.to(dtype)], [qt.clone(), it.clone()]
    got_moments, want_moments = [m.to(dtype) for m in moments], [m.clone() for m in moments]
    got = scores_fn(*got_tables, qids, iids, index, normalize=normalize)
    want = oracles.table_scores(*want_tables, qids, iids, index, normalize=normalize)
    for name, a, b in zip(("scores", "query vectors", "item vectors"), got[:3], want, strict=True):
        _close(a, b, dtype, name)
    want_grads = oracles.table_gradients(*want_tables, qids, iids, index, grad, normalize=normalize)
    # (absolute part: with D = 1 a normalised row's gradient is exactly 0, float32 rounding is not)
    assert sq_norm_fn(got, grad.to(dtype)) == pytest.approx(
        float(sum(g.square().sum() for g in want_grads)), rel=TOLERANCE[dtype],
        abs=TOLERANCE[dtype] * float(grad.square().sum()))
    settings = {"step": 3, "lr": 0.05, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}
    for decoupled in (True, False):  # two steps, each from fresh scores of the tables as they are
        if not decoupled:
            got = scores_fn(*got_tables, qids, iids, index, normalize=normalize)
        kw = dict(settings, weight_decay=0.1, decoupled=decoupled)
        adam_fn(got, grad.to(dtype), AdamTable(got_tables[0], *got_moments[:2], **kw),
                AdamTable(got_tables[1], *got_moments[2:], **kw), grad_scale=0.3)
        _oracle_adam_step(want_tables, want_moments, (qids, iids), index, grad, normalize, kw)
    for name, a, b in zip(("query table", "item table"), got_tables, want_tables, strict=True):
        _close(a, b, dtype, name)
    for name, a, b in zip(
        ("query exp_avg", "query exp_avg_sq", "item exp_avg", "item exp_avg_sq"), got_moments, want_moments, strict=True
    ):
        _close(a, b, dtype, name)


def test_untouched_rows_are_left_alone_and_the_scratch_comes_back_clean():
    qt, it, qids, iids, index, grad, moments = _inputs(20, 4, 8, 300, 400, 30, seed=7)
    qt, it = qt.float(), it.float()
    moments = [m.float() for m in moments]
    before = [t.clone() for t in (qt, it, *moments)]
    slots = [np.full(300, -1, dtype=np.int64), np.full(400, -1, dtype=np.int64)]
    saved = table_scores(qt, it, qids, iids, index, normalize=True)
    table_adam_step(saved, grad.float(), AdamTable(qt, *moments[:2], step=1, lr=0.1, slots=slots[0]),
                    AdamTable(it, *moments[2:], step=1, lr=0.1, slots=slots[1]))
    assert all((s == -1).all() for s in slots)
    for now, then, ids, rows in ((qt, before[0], qids, 300), (it, before[1], iids, 400)):
        untouched = sorted(set(range(rows)) - set(ids.tolist()))
        touched = sorted(set(ids.tolist()))
        assert torch.equal(now[untouched], then[untouched])
        assert not torch.equal(now[touched], then[touched])


def test_a_zero_row_takes_pytorchs_clamped_derivative():
    qt, it, qids, iids, index, grad, moments = _inputs(6, 3, 4, 5, 7, 4, seed=2)
    qt[qids[0]] = 0.0
    it[iids[1]] = 0.0
    got = table_scores(qt.clone(), it.clone(), qids, iids, index, normalize=True, eps=1e-3)
    want, _, _ = oracles.table_scores(qt, it, qids, iids, index, normalize=True, eps=1e-3)
    torch.testing.assert_close(got.scores, want)
    grads = oracles.table_gradients(qt, it, qids, iids, index, grad, normalize=True, eps=1e-3)
    assert table_grad_sq_norm(got, grad) == pytest.approx(float(sum(g.square().sum() for g in grads)), rel=1e-10)


def test_dirty_scratch_is_refused_before_anything_changes():
    qt, it, qids, iids, index, grad, moments = _inputs(10, 3, 4, 30, 40, 8, seed=3)
    saved = table_scores(qt, it, qids, iids, index, normalize=False)
    before = [t.clone() for t in (qt, it)]
    slots = np.full(40, -1, dtype=np.int64)
    slots[int(iids[0])] = 5  # a mark no call of this batch made
    with pytest.raises(ValueError, match="slots must be all -1"):
        table_adam_step(saved, grad, AdamTable(qt, *moments[:2], step=1, lr=0.1),
                        AdamTable(it, *moments[2:], step=1, lr=0.1, slots=slots))
    assert (slots == -1).all(), "the scratch is made usable again"
    assert torch.equal(qt, before[0]) and torch.equal(it, before[1])


@pytest.mark.parametrize("case,error,match", [
    ("float ids", TypeError, "query_ids must be an integer tensor"),
    ("mixed dtypes", TypeError, "share one floating dtype"),
    ("width", ValueError, "item_table D"),
    ("one table", ValueError, "are one table"),
    ("index rows", ValueError, "index has 2 rows"),
    ("id out of range", IndexError, r"item_ids\[1\] = 99 is outside \[0, 40\)"),
    ("index out of range", IndexError, r"index\[0, 1\] = 8 is outside \[0, 8\)"),
])
def test_bad_arguments_are_named(case, error, match):
    qt, it, qids, iids, index, grad, moments = _inputs(10, 3, 4, 30, 40, 8, seed=4)
    if case == "float ids":
        qids = qids.double()
    elif case == "mixed dtypes":
        it = it.float()
    elif case == "one table":
        it = qt
    elif case == "width":
        it = it[:, :3].contiguous()
    elif case == "index rows":
        index = index[:2]
    elif case == "id out of range":
        iids[1] = 99
    else:
        index[0, 1] = 8
    with pytest.raises(error, match=match):
        table_scores(qt, it, qids, iids, index, normalize=True)


def test_adam_step_checks_its_tables_and_settings():
    qt, it, qids, iids, index, grad, moments = _inputs(10, 3, 4, 30, 40, 8, seed=5)
    saved = table_scores(qt, it, qids, iids, index, normalize=True)
    good = [AdamTable(qt, *moments[:2], step=1, lr=0.1), AdamTable(it, *moments[2:], step=1, lr=0.1)]
    with pytest.raises(ValueError, match="not the table the scores were computed from"):
        table_adam_step(saved, grad, good[1], good[0])
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        table_adam_step(saved, grad, good[0]._replace(step=0), good[1])
    with pytest.raises(ValueError, match="lr out of range"):
        table_adam_step(saved, grad, good[0], good[1]._replace(lr=-1.0))
    with pytest.raises(ValueError, match="exp_avg_sq must be a contiguous"):
        table_adam_step(saved, grad, good[0], good[1]._replace(exp_avg_sq=moments[3][:5]))
    with pytest.raises(ValueError, match="grad must be a tensor of the scores' shape"):
        table_adam_step(saved, grad[:, :2], *good)
    with pytest.raises(ValueError, match="grad_scale must be positive"):
        table_adam_step(saved, grad, *good, grad_scale=0.0)
