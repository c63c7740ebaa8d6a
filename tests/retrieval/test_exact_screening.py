"""The int8 screening path (simd="avx512_vnni") is exact by construction: on every shape, thread
layout and awkward input it must return the float32 AVX-512 path's ids and scores bit for bit, and
it must actually screen (or say why not) rather than quietly fall back."""

from __future__ import annotations

import numpy as np
import pytest

import twotower
from tests.retrieval.test_exact import assert_matches_oracle
from twotower import _C

pytestmark = pytest.mark.skipif(
    "avx512_vnni" not in twotower.available_simd(), reason="the screening kernel needs AVX-512 VNNI"
)
THREADS = [1, 2]


def fresh_rng() -> np.random.Generator:
    """New inputs on every run; the seed is printed, so pytest shows it with a failure."""
    seed = np.random.SeedSequence().entropy
    print(f"numpy seed: {seed}")
    return np.random.default_rng(seed)


def float32_path(queries, items, k, exclude=None, threads=1):
    indptr, indices = exclude if exclude is not None else (None, None)
    return _C.topk(
        queries, items, k, exclude_indptr=indptr, exclude_indices=indices, num_threads=threads, simd="avx512"
    )


def screened(queries, items, k, exclude=None, threads=1, raw=False):
    """(scores, ids, report) of the screening path, on a raw matrix or a screening ExactIndex."""
    indptr, indices = exclude if exclude is not None else (None, None)
    kwargs = dict(exclude_indptr=indptr, exclude_indices=indices, num_threads=threads, simd="avx512_vnni", report=True)
    if raw:
        return _C.topk(queries, items, k, **kwargs)
    return _C.PackedItems(items, screening=True).search(queries, k, **kwargs)


def assert_same(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])  # bit for bit: NaN == NaN here


def random_exclusions(rng, batch, num_items, per_query):
    lengths = rng.integers(0, per_query + 1, batch)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return indptr, rng.integers(0, num_items, lengths.sum()).astype(np.int32)  # unsorted, duplicates


SHAPES = [  # (B, N, D, k): ragged around the panel (16), the 4-byte groups and both thread layouts
    (1, 4000, 64, 10),
    (3, 2000, 1, 5),
    (5, 3001, 3, 1),
    (17, 5000, 33, 50),
    (128, 4096, 17, 7),
    (200, 2500, 100, 20),
    (131, 1700, 300, 3),
    (129, 8000, 5, 100),
]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-D{}-k{}".format(*s))
def test_screening_gives_the_float32_answer_bit_for_bit(shape, threads):
    batch, num_items, dim, k = shape
    rng = fresh_rng()
    queries = rng.standard_normal((batch, dim), dtype=np.float32)
    items = rng.standard_normal((num_items, dim), dtype=np.float32)
    exclude = random_exclusions(rng, batch, num_items, 40)
    for ex in (None, exclude):
        want = float32_path(queries, items, k, ex, threads)
        for raw in (False, True):
            *got, report = screened(queries, items, k, ex, threads, raw=raw)
            assert report["screened"] and report["fallback_queries"] == 0
            assert_same(got, want)


def test_screening_matches_the_float64_oracle():
    rng = fresh_rng()
    queries = rng.standard_normal((40, 48), dtype=np.float32)
    items = rng.standard_normal((3000, 48), dtype=np.float32) * rng.lognormal(0, 1, (3000, 1)).astype(np.float32)
    exclude = random_exclusions(rng, 40, 3000, 100)
    *got, report = screened(queries, items, 25, exclude, threads=2)
    assert report["screened"]
    assert_matches_oracle(queries, items, 25, tuple(got), exclude=exclude)


def test_item_norms_spread_over_four_orders_of_magnitude():
    """Popular items in dot-product models have large norms: the bounds are per item, so the
    screening still works (and stays exact) when norms differ by 10^4."""
    rng = fresh_rng()
    items = rng.standard_normal((6000, 32), dtype=np.float32)
    items *= (10.0 ** rng.uniform(-2, 2, (6000, 1))).astype(np.float32)
    queries = rng.standard_normal((150, 32), dtype=np.float32)
    for threads in THREADS:
        for raw in (False, True):
            *got, report = screened(queries, items, 30, threads=threads, raw=raw)
            assert report["screened"] and report["fallback_queries"] == 0
            assert_same(got, float32_path(queries, items, 30, threads=threads))


def test_exact_ties_are_broken_by_the_lower_id():
    """Integer vectors with duplicated rows: many exactly tied scores, ordered by id as the float32
    path orders them."""
    rng = fresh_rng()
    base = rng.integers(-3, 4, (40, 12)).astype(np.float32)
    items = base[rng.integers(0, 40, 2000)]
    queries = rng.integers(-3, 4, (130, 12)).astype(np.float32)
    for threads in THREADS:
        for raw in (False, True):
            *got, _ = screened(queries, items, 60, threads=threads, raw=raw)
            assert_same(got, float32_path(queries, items, 60, threads=threads))


def test_near_identical_items_overflow_the_candidates_and_fall_back():
    """When thousands of items score within the bounds' width of each other, no bounded candidate
    list can hold them: those queries are rescanned in float32, and the answer is unchanged."""
    rng = fresh_rng()
    centre = rng.standard_normal(24).astype(np.float32)
    items = centre + 1e-4 * rng.standard_normal((5000, 24), dtype=np.float32)
    queries = rng.standard_normal((130, 24), dtype=np.float32)
    exclude = random_exclusions(rng, 130, 5000, 20)
    for threads in THREADS:
        for raw in (False, True):
            *got, report = screened(queries, items, 10, exclude, threads=threads, raw=raw)
            assert report["screened"] and report["fallback_queries"] == 130
            assert_same(got, float32_path(queries, items, 10, exclude, threads))


def test_zero_and_non_finite_queries_are_answered_in_float32():
    rng = fresh_rng()
    items = rng.standard_normal((3000, 16), dtype=np.float32)
    queries = rng.standard_normal((130, 16), dtype=np.float32)
    queries[3] = 0.0
    queries[7, 2] = np.nan
    queries[9, 0] = np.inf
    for threads in THREADS:
        for raw in (False, True):
            *got, report = screened(queries, items, 20, threads=threads, raw=raw)
            assert report["screened"] and report["fallback_queries"] == 3
            assert_same(got, float32_path(queries, items, 20, threads=threads))


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e36], ids=["nan", "inf", "huge"])
def test_items_the_bounds_cannot_cover_are_answered_in_float32(value):
    """Non-finite items, or items large enough for float32 scores to overflow: an ExactIndex does not
    screen at all; a raw matrix learns it while coding and rescans every query."""
    rng = fresh_rng()
    items = rng.standard_normal((3000, 16), dtype=np.float32)
    items[1234, 5] = value
    queries = rng.standard_normal((130, 16), dtype=np.float32)
    want = float32_path(queries, items, 20, threads=2)
    *got, report = screened(queries, items, 20, threads=2)
    assert not report["screened"]
    assert_same(got, want)
    *got, report = screened(queries, items, 20, threads=2, raw=True)
    assert report["screened"] and report["fallback_queries"] == 130
    assert_same(got, want)


def test_tiny_values_near_the_float32_underflow():
    """Scores near the float32 underflow, and subnormal rows (too small for the AVX-512 coder, which
    leaves them to the portable one)."""
    rng = fresh_rng()
    items = rng.standard_normal((3000, 16), dtype=np.float32) * np.float32(1e-19)
    items[::7] *= np.float32(1e-20)  # subnormal entries
    queries = rng.standard_normal((130, 16), dtype=np.float32) * np.float32(1e-19)
    queries[::5] *= np.float32(1e-20)
    for raw in (False, True):
        *got, report = screened(queries, items, 10, threads=2, raw=raw)
        assert report["screened"]
        assert_same(got, float32_path(queries, items, 10, threads=2))


@pytest.mark.slow  # a 100k-item catalogue: CI only
def test_the_default_path_screens_only_where_it_pays_off():
    """Asked for by name, the screening runs wherever it applies; by default only where it is faster:
    a large catalogue per result (N * D against k * ln(N / k)) and, for a raw matrix, 128 queries."""
    rng = fresh_rng()
    items = rng.standard_normal((100_000, 32), dtype=np.float32)
    queries = rng.standard_normal((200, 32), dtype=np.float32)
    index = _C.PackedItems(items, screening=True)
    want = float32_path(queries, items, 10)
    for k, raw, batch, expected in [(10, False, 200, True), (10, True, 200, True), (10, True, 100, False),
                                    (2000, False, 200, False)]:
        search = (lambda q, kk, **kw: _C.topk(q, items, kk, **kw)) if raw else index.search
        *got, report = search(queries[:batch], k, num_threads=2, report=True)
        assert report["screened"] == expected, (k, raw, batch)
        assert_same(got, float32_path(queries[:batch], items, k, threads=2))
        *got, report = search(queries[:batch], k, num_threads=2, report=True, simd="avx512_vnni")
        assert report["screened"], (k, raw, batch)
    np.testing.assert_array_equal(index.search(queries, 10)[1], want[1])


def test_rows_too_long_for_int8_codes_are_scanned_in_float32():
    rng = fresh_rng()
    items = rng.standard_normal((40, 16385), dtype=np.float32)
    queries = rng.standard_normal((2, 16385), dtype=np.float32)
    for raw in (False, True):
        *got, report = screened(queries, items, 3, raw=raw)
        assert not report["screened"]
        assert_same(got, float32_path(queries, items, 3))
    assert not twotower.ExactIndex(items, screening=True).screening  # stored as float32 panels


def test_exact_index_layouts_agree():
    rng = fresh_rng()
    items = rng.standard_normal((4000, 40), dtype=np.float32)
    queries = rng.standard_normal((50, 40), dtype=np.float32)
    screening = twotower.ExactIndex(items, screening=True)
    panels = twotower.ExactIndex(items, screening=False)
    assert screening.screening and not panels.screening
    assert screening.nbytes > panels.nbytes  # codes + a float32 copy vs float32 panels
    for simd in twotower.available_simd():
        assert_same(screening.search(queries, 15, simd=simd), panels.search(queries, 15, simd=simd))
    with pytest.raises(TypeError, match="screening"):
        twotower.ExactIndex(items, screening="yes")


def test_strided_items_are_coded_and_rescored_in_place():
    """Raw matrices with any strides: a Fortran-order copy, a reversed view with a column offset."""
    rng = fresh_rng()
    base = rng.standard_normal((6000, 70), dtype=np.float32)
    queries = rng.standard_normal((150, 33), dtype=np.float32)
    for items in (np.asfortranarray(base[:, :33]), base[::-2, 7:40]):
        assert not items.flags.c_contiguous
        want = float32_path(queries, np.ascontiguousarray(items), 12, threads=2)
        for raw in (True, False):
            *got, report = screened(queries, items, 12, threads=2, raw=raw)
            assert report["screened"] and report["fallback_queries"] == 0
            assert_same(got, want)
