"""Bad arguments to the scorer raise a Python exception naming the argument, never crash."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twotower
from twotower import _C

Q = np.ones((2, 4), np.float32)
ITEMS = np.ones((10, 4), np.float32)
GOOD_INDPTR = np.array([0, 1, 2], np.int64)
GOOD_INDICES = np.array([3, 4], np.int64)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"queries": Q.astype(np.float64)}, TypeError, "queries must be float32"),
        ({"items": ITEMS.astype(np.float16)}, TypeError, "items must be float32"),
        ({"queries": np.ones(4, np.float32)}, ValueError, "queries must be a 2-D"),
        ({"items": np.ones((2, 3, 4), np.float32)}, ValueError, "items must be a 2-D"),
        ({"queries": np.ones((2, 5), np.float32)}, ValueError, "same dimension D"),
        ({"queries": np.ones((2, 0), np.float32)}, ValueError, "D >= 1"),
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 2.5}, TypeError, "k must be an int"),
        ({"k": True}, TypeError, "k must be an int"),
        ({"k": np.bool_(True)}, TypeError, "k must be an int"),
        ({"k": np.float64(3)}, TypeError, "k must be an int"),
        ({"k": 1 << 70}, ValueError, "k is too large"),
        ({"k": 1 << 62}, ValueError, "larger than"),
        ({"num_threads": 0}, ValueError, "num_threads"),
        ({"num_threads": "2"}, TypeError, "num_threads"),
        ({"num_threads": np.int64(0)}, ValueError, "num_threads"),
        ({"num_threads": 1 << 70}, ValueError, "num_threads"),
        ({"exclude": (GOOD_INDPTR,)}, TypeError, "exclude must be a pair"),
        ({"exclude": (np.array([0, 1], np.int64), GOOD_INDICES)}, ValueError, "B \\+ 1"),
        ({"exclude": (np.array([1, 1, 2], np.int64), GOOD_INDICES)}, ValueError, "indptr\\[0\\] must be 0"),
        ({"exclude": (np.array([0, 2, 1], np.int64), GOOD_INDICES)}, ValueError, "non-decreasing"),
        ({"exclude": (np.array([0, 1, 3], np.int64), GOOD_INDICES)}, ValueError, "len\\(indices\\)"),
        ({"exclude": (GOOD_INDPTR, np.array([3, 10], np.int64))}, ValueError, "\\[0, 10\\); found 10"),
        ({"exclude": (GOOD_INDPTR, np.array([-1, 2], np.int32))}, ValueError, "found -1"),
        ({"exclude": (GOOD_INDPTR, np.array([1.0, 2.0]))}, TypeError, "exclude indices must be int32 or int64"),
        ({"exclude": (GOOD_INDPTR.astype(np.float32), GOOD_INDICES)}, TypeError, "exclude indptr must be int32"),
        ({"exclude": (GOOD_INDPTR, GOOD_INDICES.reshape(2, 1))}, ValueError, "exclude indices must be 1-D"),
        ({"simd": "avx9000"}, ValueError, "avx9000"),
        ({"queries": "not an array"}, TypeError, "queries must be float32"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, error, match):
    args = {"queries": Q, "items": ITEMS, "k": 3, **kwargs}
    with pytest.raises(error, match=match):
        twotower.topk(args.pop("queries"), args.pop("items"), args.pop("k"), **args)


@pytest.mark.parametrize("integer", [np.int64, np.int32, np.uint16, int])
def test_integer_scalars_of_any_kind_are_accepted(integer):
    """k and num_threads taken from NumPy (e.g. max() of an array of Ks) work like Python ints, in the
    function and in a packed index alike (the HNSW index's exact fallback passes k on unchanged)."""
    expected = twotower.topk(Q, ITEMS, 3, num_threads=1)
    for got in (twotower.topk(Q, ITEMS, integer(3), num_threads=integer(1)),
                twotower.ExactIndex(ITEMS, num_threads=integer(1)).search(Q, integer(3))):
        np.testing.assert_array_equal(got[1], expected[1])


def test_index_rejects_mismatched_queries():
    index = twotower.ExactIndex(ITEMS)
    with pytest.raises(ValueError, match="same dimension D"):
        index.search(np.ones((1, 3), np.float32), 2)
    with pytest.raises(TypeError, match="items must be float32"):
        twotower.ExactIndex(ITEMS.astype(np.float64))


arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
)
anything = st.one_of(
    arrays, st.none(), st.integers(-5, 5), st.floats(), st.text(max_size=3), st.lists(st.integers(), max_size=3)
)


@settings(max_examples=300, deadline=None)
@given(queries=anything, items=anything, k=anything, indptr=anything, indices=anything, threads=anything)
def test_malformed_arguments_raise_cleanly(queries, items, k, indptr, indices, threads):
    """Whatever is thrown at the binding, it either answers or raises TypeError/ValueError."""
    try:
        _C.topk(queries, items, k, exclude_indptr=indptr, exclude_indices=indices, num_threads=threads)
    except (TypeError, ValueError):
        pass


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(0, 5),
    num_items=st.integers(0, 20),
    lengths=st.lists(st.integers(-3, 6), min_size=0, max_size=7),
    ids=st.lists(st.integers(-30, 30), min_size=0, max_size=30),
    dtype=st.sampled_from([np.int32, np.int64]),
)
def test_malformed_exclusion_lists_raise_cleanly(batch, num_items, lengths, ids, dtype):
    """Structurally plausible but wrong CSR lists (bad lengths, out-of-range ids) never crash."""
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(dtype)
    try:
        scores, got = twotower.topk(
            np.ones((batch, 3), np.float32), np.ones((num_items, 3), np.float32), 4,
            exclude=(indptr, np.array(ids, dtype=dtype)),
        )
    except ValueError:
        return
    assert got.shape == (batch, 4)
