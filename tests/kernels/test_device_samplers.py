"""The device samplers (`twotower.kernels.device_samplers`, torch ops of fixed shapes) on the CPU:
segment counts against a per-segment NumPy search, exclusion that never leaks, goodness of fit of
every law (uniform over the free items, weights over the free items, inverse CDF), reproducibility
from a seed, and the static-shape distinct ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.kernels import device_samplers as ds

from .test_samplers import chi2_fits, make_history

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU check runs these on CUDA


def segments_of(rng: np.random.Generator, sizes, num_items: int) -> tuple[ds.Segments, list[np.ndarray]]:
    indptr, indices = make_history(rng, len(sizes), num_items, sizes)
    shuffled = indices.copy()
    for u in range(len(sizes)):  # from_csr sorts each row itself
        rng.shuffle(shuffled[indptr[u]:indptr[u + 1]])
    rows = [indices[indptr[u]:indptr[u + 1]].astype(np.int64) for u in range(len(sizes))]
    return ds.Segments.from_csr(indptr, shuffled, DEV), rows


def test_segment_count_le_matches_a_search_of_each_segment() -> None:
    rng = np.random.default_rng(1)
    sizes = [0, 1, 2, 3, 7, 64, 65, 200]
    values = [np.sort(rng.integers(0, 50, size=k)) for k in sizes]  # repeats included
    flat = torch.from_numpy(np.concatenate(values)).to(DEV)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    seg_of = rng.integers(0, len(sizes), size=5000)
    x = rng.integers(-2, 53, size=5000)
    lo, hi = (torch.from_numpy(indptr[s]).to(DEV) for s in (seg_of, seg_of + 1))
    got = ds.segment_count_le(flat, lo, hi, torch.from_numpy(x).to(DEV), max(1, max(sizes).bit_length()))
    expected = [np.searchsorted(values[s], v, side="right") for s, v in zip(seg_of, x, strict=True)]
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


def test_uniform_excluding_never_draws_a_positive_and_is_uniform_over_the_rest() -> None:
    rng = np.random.default_rng(2)
    num_items = 60
    segments, rows = segments_of(rng, [0, 1, 30, 59, 12], num_items)
    users = torch.arange(5, device=DEV).repeat_interleave(4000)
    ids, log_q = ds.uniform_excluding(segments, users, 3, num_items, torch.Generator(device=DEV).manual_seed(0))
    assert ids.shape == (20000, 3) and ids.dtype == torch.int64
    for u, positives in enumerate(rows):
        drawn = ids[users == u].cpu().numpy()
        free = np.setdiff1d(np.arange(num_items), positives)
        assert not np.isin(drawn, positives).any()
        if free.size > 1:
            stat, threshold = chi2_fits(drawn, free, np.ones(free.size))
            assert stat < threshold, (u, stat, threshold)
        else:
            assert (drawn == free[0]).all()
        assert log_q[users == u][0].item() == pytest.approx(-np.log(free.size), rel=1e-6)


def test_weighted_excluding_follows_the_weights_over_the_free_items() -> None:
    rng = np.random.default_rng(3)
    num_items = 80
    segments, rows = segments_of(rng, [0, 5, 40, 79, 3], num_items)
    weights = rng.random(num_items) ** 3
    free3 = np.setdiff1d(np.arange(num_items), rows[3])  # user 3's one free item
    zero = np.setdiff1d([7, 8, 50], free3)
    weights[zero] = 0.0  # never drawn
    table = ds.WeightTable.build(weights, segments)
    users = torch.arange(5, device=DEV).repeat_interleave(6000)
    ids, log_q = ds.weighted_excluding(table, segments, users, 2, torch.Generator(device=DEV).manual_seed(1))
    for u, positives in enumerate(rows):
        drawn = ids[users == u].cpu().numpy()
        assert not np.isin(drawn, positives).any() and not np.isin(drawn, zero).any()
        free = np.setdiff1d(np.arange(num_items), positives)
        free = free[weights[free] > 0]
        if free.size > 1:
            stat, threshold = chi2_fits(drawn, free, weights[free])
            assert stat < threshold, (u, stat, threshold)
        p = weights[drawn] / weights[free].sum()
        np.testing.assert_allclose(log_q[users == u].cpu().numpy(), np.log(p), rtol=1e-5, atol=1e-6)


def test_weighted_draws_follow_the_weights() -> None:
    rng = np.random.default_rng(4)
    weights = rng.random(300) ** 2
    weights[:10] = 0.0
    segments, _ = segments_of(rng, [1], 300)
    table = ds.WeightTable.build(weights, segments)
    ids, log_q = ds.weighted(table, 200_000, torch.Generator(device=DEV).manual_seed(2))
    support = np.nonzero(weights)[0]
    stat, threshold = chi2_fits(ids.cpu().numpy(), support, weights[support])
    assert stat < threshold
    np.testing.assert_allclose(log_q.cpu().numpy(), np.log(weights[ids.cpu().numpy()] / weights.sum()), rtol=1e-5)


def test_a_seed_reproduces_the_draws_and_another_seed_does_not() -> None:
    rng = np.random.default_rng(5)
    segments, _ = segments_of(rng, [4, 9, 0], 40)
    table = ds.WeightTable.build(rng.random(40) + 0.1, segments)
    users = torch.tensor([0, 1, 2, 1], device=DEV)

    def draw(seed: int) -> list[torch.Tensor]:
        g = torch.Generator(device=DEV).manual_seed(seed)
        return [ds.uniform_excluding(segments, users, 8, 40, g)[0],
                ds.weighted_excluding(table, segments, users, 8, g)[0], ds.weighted(table, 16, g)[0],
                ds.uniform(16, 40, g, DEV)[0]]

    for a, b in zip(draw(7), draw(7), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(draw(7), draw(8), strict=True))


def test_distinct_rows_has_a_fixed_length_and_maps_back_to_the_ids() -> None:
    generator = torch.Generator(device=DEV).manual_seed(3)
    for length in (1, 2, 17, 500):
        ids = torch.randint(0, max(2, length // 3), (length,), generator=generator)
        distinct, rows = ds.distinct_rows(ids)
        assert distinct.shape == ids.shape and rows.shape == ids.shape
        assert torch.equal(distinct[rows], ids)
        unique = torch.unique(ids)
        assert torch.equal(distinct[: unique.numel()], unique)  # distinct first, in increasing order
        assert (distinct[unique.numel():] == unique[0]).all()  # then padding no row refers to
        assert int(rows.max()) == unique.numel() - 1


def test_a_draw_rounded_onto_a_positive_moves_to_the_next_free_item() -> None:
    """The rounding fallback of `weighted_excluding`: a positive id maps to the smallest free item
    above it, or the largest free one when none is above."""
    segments = ds.Segments.from_csr(np.array([0, 4]), np.array([2, 3, 4, 9]), DEV)  # items 0-9; free: 0 1 5 6 7 8
    ids = torch.tensor([[2, 3, 4, 9]], device=DEV)
    lo, hi = segments.indptr[:1], segments.indptr[1:]
    at_or_below = ds.segment_count_le(segments.items, lo[:, None], hi[:, None], ids, segments.depth)
    moved = ds._next_free(segments, lo, hi, ids, at_or_below, 10)
    assert moved.cpu().tolist() == [[5, 5, 5, 8]]
