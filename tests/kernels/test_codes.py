"""check_codes: the one check of integer codes (kernels and twotower both call it)."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.kernels.codes import check_codes


@pytest.mark.parametrize("values", [[0, 3, 4], np.array([4, 0], np.int32), np.array([1], np.uint8), []])
def test_codes_in_range_come_back_as_contiguous_int64(values):
    out = check_codes(values, "items", low=0, high=5)
    assert out.dtype == np.int64 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.asarray(values))


def test_a_strided_view_is_copied_contiguous():
    out = check_codes(np.arange(10)[::3], "rows", low=0, high=10)
    assert out.flags.c_contiguous and out.tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize(
    "values,low,high,match",
    [
        ([0, 5, 1], 0, 5, r"items must be in \[0, 5\); found 5 at position 1"),
        ([2, -1, -3], 0, 5, r"items must be in \[0, 5\); found -1 at position 1"),
        ([-2], -1, 5, r"items must be in \[-1, 5\); found -2 at position 0"),
        ([0, 1, -7], 0, None, r"items must be >= 0; found -7 at position 2"),
        ([9], None, 3, r"items must be < 3; found 9 at position 0"),
    ],
)
def test_the_first_code_out_of_range_is_named_with_its_position(values, low, high, match):
    with pytest.raises(ValueError, match=match):
        check_codes(values, "items", low=low, high=high)


def test_open_bounds_accept_any_integer():
    assert check_codes([-5, 2**40], "keys").tolist() == [-5, 2**40]
    assert check_codes([-1, 4], "codes", low=-1, high=5).tolist() == [-1, 4]


@pytest.mark.parametrize(
    "values,error,match",
    [
        (np.zeros((2, 2), np.int64), ValueError, r"users must be a 1-d integer array, got shape \(2, 2\)"),
        (np.int64(3), ValueError, r"got shape \(\)"),
        (np.array([0.0, 1.0]), TypeError, "users must be a 1-d integer array, got dtype float64"),
        (np.array([True, False]), TypeError, "got dtype bool"),
    ],
)
def test_shape_and_dtype_errors_name_the_argument(values, error, match):
    with pytest.raises(error, match=match):
        check_codes(values, "users", low=0)
