"""The C++ exact top-K scorer against the float64 oracle, on every SIMD path this CPU has and with 1
and 2 threads; its eager NumPy version (`topk_eager`) against the same oracle."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import twotower
from twotower.retrieval.exact_eager import topk_eager

from . import oracles

SIMD_PATHS = twotower.available_simd()
THREADS = [1, 2]
# float32 sums of D products vs float64: relative error grows ~ sqrt(D) * 2^-24; 1e-5 covers D <= 300.
SCORE_RTOL = 1e-5


def csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return indptr, indices


def exact_scores(queries: np.ndarray, items: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float64 inner products of each query with its returned ids (NaN where id == -1)."""
    out = np.full(ids.shape, np.nan)
    for b in range(ids.shape[0]):
        valid = ids[b] >= 0
        out[b, valid] = items[ids[b, valid]].astype(np.float64) @ queries[b].astype(np.float64)
    return out


def assert_matches_oracle(queries, items, k, got, exclude=None):
    """Ids agree with the float64 oracle except inside groups of near-tied scores; scores agree
    to SCORE_RTOL; every returned id is real, unique, not excluded, and scored correctly."""
    ref_scores, ref_ids = oracles.topk(queries, items, k, exclude=exclude)
    scores, ids = got
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (queries.shape[0], k)
    np.testing.assert_array_equal(ids == -1, ref_ids == -1)
    scale = np.abs(queries).astype(np.float64) @ np.abs(items).astype(np.float64).T if items.size else None
    for b in range(queries.shape[0]):
        valid = ids[b] >= 0
        row_scale = scale[b].max() if scale is not None and scale.shape[1] else 1.0
        tol = SCORE_RTOL * max(row_scale, 1e-30)
        assert len(set(ids[b, valid].tolist())) == valid.sum(), "duplicate ids"
        if exclude is not None:
            indptr, indices = exclude
            banned = set(np.asarray(indices)[indptr[b] : indptr[b + 1]].tolist())
            assert not banned & set(ids[b, valid].tolist()), "an excluded item was returned"
        np.testing.assert_allclose(scores[b, valid], ref_scores[b, valid], rtol=0, atol=tol)
        true = exact_scores(queries[b : b + 1], items, ids[b : b + 1])[0, valid]
        np.testing.assert_allclose(scores[b, valid], true, rtol=0, atol=tol)
        assert np.all(np.diff(scores[b, valid].astype(np.float64)) <= tol), "scores not sorted descending"
        # Where the oracle's score is isolated from its neighbours, the id must be the same.
        ref = ref_scores[b, valid].astype(np.float64)
        for j in range(valid.sum()):
            gap_prev = ref[j - 1] - ref[j] if j > 0 else np.inf
            gap_next = ref[j] - ref[j + 1] if j + 1 < valid.sum() else np.inf
            boundary = ref[j] - true.min() if j + 1 == valid.sum() else np.inf
            if min(gap_prev, gap_next) > 2 * tol and boundary >= 0:
                assert ids[b, j] == ref_ids[b, j], f"query {b} rank {j}: id {ids[b, j]} != {ref_ids[b, j]}"


SHAPES = [  # (B, N, D, k): ragged sizes around the panel (16), SIMD widths and block boundaries
    (1, 1, 1, 1),
    (1, 5000, 64, 100),
    (3, 17, 7, 5),
    (8, 33, 16, 40),
    (9, 1000, 300, 10),
    (17, 4097, 33, 50),
    (64, 2048, 129, 7),
    (130, 257, 3, 300),
    pytest.param((300, 1500, 65, 20), marks=pytest.mark.slow),  # the largest: CI only
]


@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-D{}-k{}".format(*s))
def test_random_float_inputs_match_oracle(simd, threads, shape):
    batch, num_items, dim, k = shape
    rng = np.random.default_rng([batch, num_items, dim, k])
    queries = rng.standard_normal((batch, dim), dtype=np.float32)
    items = rng.standard_normal((num_items, dim), dtype=np.float32)
    got = twotower.topk(queries, items, k, num_threads=threads, simd=simd)
    assert_matches_oracle(queries, items, k, got)
    packed = twotower.ExactIndex(items).search(queries, k, num_threads=threads, simd=simd)
    np.testing.assert_array_equal(packed[1], got[1])
    np.testing.assert_array_equal(packed[0], got[0])


@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("threads", THREADS)
def test_integer_inputs_give_exact_ties_broken_by_lower_id(simd, threads):
    """Small integer vectors make every score exact, so ids must match the oracle bit for bit,
    including many ties (duplicated items) broken by the lower id."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        batch, num_items, dim = rng.integers(1, 40), rng.integers(1, 400), rng.integers(1, 40)
        k = int(rng.integers(1, 60))
        queries = rng.integers(-2, 3, (batch, dim)).astype(np.float32)
        base = rng.integers(-2, 3, (max(1, num_items // 3), dim)).astype(np.float32)
        items = base[rng.integers(0, base.shape[0], num_items)]  # duplicated rows: exact ties
        lengths = rng.integers(0, 30, batch)
        exclude = (
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            rng.integers(0, num_items, lengths.sum()).astype(np.int32),  # unsorted, with duplicates
        )
        for ex in (None, exclude):
            want = oracles.topk(queries, items, k, exclude=ex)
            got = twotower.topk(queries, items, k, exclude=ex, num_threads=threads, simd=simd)
            np.testing.assert_array_equal(got[1], want[1], err_msg=f"trial {trial}")
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"trial {trial}")


@pytest.mark.parametrize("values", ["float", "integer"])  # integers: exact scores, many ties
@pytest.mark.parametrize("shape", SHAPES[:6], ids=lambda s: "B{}-N{}-D{}-k{}".format(*s))
def test_eager_topk_matches_the_oracle(shape, values):
    """`topk_eager` (public as `twotower.topk_eager`): the oracle's ids and scores, with exclusions."""
    batch, num_items, dim, k = shape
    rng = np.random.default_rng([7, *shape])
    queries = rng.standard_normal((batch, dim), dtype=np.float32)
    items = rng.standard_normal((num_items, dim), dtype=np.float32)
    if values == "integer":
        queries, items = np.round(queries), np.round(items)
        items[rng.random(num_items) < 0.05] = np.nan  # NaN scores rank last
    lengths = rng.integers(0, num_items + 1, batch)
    exclude = (np.concatenate([[0], np.cumsum(lengths)]), rng.integers(0, num_items, lengths.sum()))
    for ex in (None, exclude):
        want, got = oracles.topk(queries, items, k, exclude=ex), topk_eager(queries, items, k, exclude=ex)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert twotower.topk_reference is twotower.topk_eager  # the name earlier READMEs gave it


@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_exclusion_edge_cases(simd):
    rng = np.random.default_rng(3)
    items = rng.standard_normal((50, 8), dtype=np.float32)
    queries = rng.standard_normal((4, 8), dtype=np.float32)
    rows = [
        [],  # nothing excluded
        list(range(50)),  # everything excluded -> all padding
        [3, 3, 3, 49, 0, 0],  # duplicates, unsorted
        list(range(0, 50, 2)) + list(range(1, 50, 2))[:-3],  # all but three items
    ]
    exclude = csr(rows)
    for threads in THREADS:
        scores, ids = twotower.topk(queries, items, 10, exclude=exclude, num_threads=threads, simd=simd)
        assert np.all(ids[1] == -1) and np.all(np.isneginf(scores[1]))
        assert sorted(ids[3, :3].tolist()) == [45, 47, 49] and np.all(ids[3, 3:] == -1)
        assert not {0, 3, 49} & set(ids[2].tolist())
        assert_matches_oracle(queries, items, 10, (scores, ids), exclude=exclude)


@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_k_larger_than_catalogue_pads_with_minus_one(simd):
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    queries = np.array([[2.0, 1.0]], dtype=np.float32)
    scores, ids = twotower.topk(queries, items, 5, simd=simd)
    # 2*1+1*1 = 3 (item 2), 2*1 = 2 (item 0), 1*1 = 1 (item 1), then padding.
    assert ids.tolist() == [[2, 0, 1, -1, -1]]
    assert scores[0, :3].tolist() == [3.0, 2.0, 1.0] and np.all(np.isneginf(scores[0, 3:]))


@pytest.mark.parametrize("simd", SIMD_PATHS)
def test_nan_scores_rank_last_and_inf_is_a_number(simd):
    items = np.array([[np.nan], [1.0], [-np.inf], [2.0], [np.nan]], dtype=np.float32)
    queries = np.array([[1.0], [np.nan]], dtype=np.float32)
    scores, ids = twotower.topk(queries, items, 5, simd=simd)
    assert ids[0].tolist() == [3, 1, 2, 0, 4]  # 2, 1, -inf, then NaNs by id
    assert ids[1].tolist() == [0, 1, 2, 3, 4]  # every score NaN: id order
    assert np.isnan(scores[1]).all()
    want = oracles.topk(queries, items, 5)
    np.testing.assert_array_equal(ids, want[1])


def test_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(11)
    items = rng.standard_normal((3000, 40), dtype=np.float32)
    for batch in (1, 5, 100):  # item split, item split, query split
        queries = rng.standard_normal((batch, 40), dtype=np.float32)
        runs = [twotower.topk(queries, items, 25, num_threads=t) for t in (1, 2, 3, 7)]
        for scores, ids in runs[1:]:
            np.testing.assert_array_equal(ids, runs[0][1])
            np.testing.assert_array_equal(scores, runs[0][0])


def test_simd_paths_agree_within_rounding():
    rng = np.random.default_rng(5)
    items = rng.standard_normal((2000, 100), dtype=np.float32)
    queries = rng.standard_normal((20, 100), dtype=np.float32)
    results = {simd: twotower.topk(queries, items, 30, simd=simd) for simd in SIMD_PATHS}
    base_scores, base_ids = results[SIMD_PATHS[-1]]
    for scores, ids in results.values():
        np.testing.assert_allclose(scores, base_scores, rtol=1e-5, atol=1e-5)
        assert (ids == base_ids).mean() > 0.99  # differ only where scores tie within rounding


def test_any_strides_and_torch_tensors():
    rng = np.random.default_rng(9)
    big_items = rng.standard_normal((400, 60), dtype=np.float32)
    big_queries = rng.standard_normal((20, 90), dtype=np.float32)
    items = big_items[::-2, 5:35]  # negative row stride, column offset
    queries = big_queries[::3, 10:70:2]  # column stride 2 (copied for the kernel)
    assert not items.flags.c_contiguous and not queries.flags.c_contiguous
    got = twotower.topk(queries, items, 12)
    assert_matches_oracle(np.ascontiguousarray(queries), np.ascontiguousarray(items), 12, got)
    fortran = np.asfortranarray(items)
    np.testing.assert_array_equal(twotower.topk(queries, fortran, 12)[1], got[1])
    t_queries = torch.from_numpy(np.ascontiguousarray(queries)).requires_grad_(True)
    np.testing.assert_array_equal(twotower.topk(t_queries, torch.from_numpy(fortran), 12)[1], got[1])
    np.testing.assert_array_equal(twotower.ExactIndex(items.T.copy().T).search(queries, 12)[1], got[1])


def test_empty_batch_and_empty_catalogue():
    items = np.zeros((0, 4), dtype=np.float32)
    scores, ids = twotower.topk(np.ones((2, 4), np.float32), items, 3)
    assert ids.tolist() == [[-1] * 3] * 2 and np.isneginf(scores).all()
    scores, ids = twotower.topk(np.ones((0, 4), np.float32), np.ones((5, 4), np.float32), 3)
    assert scores.shape == ids.shape == (0, 3)


def test_forced_simd_path_via_environment(monkeypatch):
    monkeypatch.setenv("TWOTOWER_SIMD", "generic")
    assert twotower._C.selected_simd() == "generic"
    monkeypatch.setenv("TWOTOWER_SIMD", "sse9")
    with pytest.raises(ValueError, match="sse9"):
        twotower.topk(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), 1)


def test_default_thread_count_is_not_torchs(monkeypatch):
    """num_threads=None means OMP_NUM_THREADS or every core, even after torch.set_num_threads(1)
    (torch shares the OpenMP runtime; the trainer runs torch on one thread and must still evaluate on
    all cores)."""
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert twotower._C.default_num_threads() == cores
    finally:
        torch.set_num_threads(before)
    for value, want in (("3", 3), ("3,1", 3), ("many", cores), ("0", cores)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert twotower._C.default_num_threads() == want, value
