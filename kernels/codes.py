"""The one check of integer codes (ids, rows, keys) that kernels and twotower alike take from callers.

A code array is 1-d, of an integer dtype (an empty array of any dtype passes: it holds no wrong
value), and every value lies in [low, high); either bound may be left open. Errors name the
argument, and a range error the first offending value and its position, so a caller sees which
input was wrong and where. Imports NumPy only, so that every layer can use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_codes"]


def check_codes(values: Any, name: str, *, low: int | None = None, high: int | None = None) -> np.ndarray:
    """`values` as a contiguous int64 array, after checking that it holds integer codes in [low, high).

    Args:
        values: array-like [n] of integer codes.
        name: the argument as the caller's user knows it, e.g. "users" or "history item codes".
        low: smallest allowed code (None: no lower bound).
        high: one past the largest allowed code (None: no upper bound).

    Raises:
        ValueError: `values` is not 1-d, or a value lies outside [low, high).
        TypeError: `values` is non-empty and not of an integer dtype.

    Example:
        >>> check_codes([3, 0, 2], "items", low=0, high=4)
        array([3, 0, 2])
        >>> check_codes([3, 7], "items", low=0, high=4)
        Traceback (most recent call last):
        ValueError: items must be in [0, 4); found 7 at position 1
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-d integer array, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a 1-d integer array, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    if not array.size:
        return array
    below = low is not None and int(array.min()) < low
    above = high is not None and int(array.max()) >= high
    if below or above:
        bad = (array < low if low is not None else False) | (array >= high if high is not None else False)
        position = int(np.flatnonzero(bad)[0])
        bounds = f">= {low}" if high is None else f"< {high}" if low is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be {bounds}; found {int(array[position])} at position {position}")
    return array
