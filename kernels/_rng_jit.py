"""Numba versions of the counter-based generator in `_rng` (same formulas, same bits)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._rng import EXACT_FROM, GOLDEN, MIX1, MIX2, ROW_STEP

# uint64 constants: mixing uint64 with int64 in Numba promotes to float64, so every operand is typed.
_GOLDEN = np.uint64(GOLDEN)
_ROW_STEP = np.uint64(ROW_STEP)
_MIX1 = np.uint64(MIX1)
_MIX2 = np.uint64(MIX2)
_ONE = np.uint64(1)
_S11 = np.uint64(11)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_INV_2_32 = 1.0 / 4294967296.0
_INV_2_53 = 1.0 / 9007199254740992.0


@njit(cache=True, nogil=True, inline="always")
def fmix(x):
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    return x ^ (x >> _S31)


@njit(cache=True, nogil=True, inline="always")
def row_key(key, row):
    return fmix(key + (np.uint64(row) + _ONE) * _ROW_STEP)


@njit(cache=True, nogil=True, inline="always")
def bits(key, counter):
    return fmix(key + (np.uint64(counter) + _ONE) * _GOLDEN)


@njit(cache=True, nogil=True, inline="always")
def bounded(x, n):
    """Integer in [0, n) (n < 2**32) from the top 32 bits of `x`, as int64."""
    return np.int64(((x >> _S32) * np.uint64(n)) >> _S32)


_EXACT_FROM = np.uint64(EXACT_FROM)
_TWO32 = np.uint64(1 << 32)


@njit(cache=True, nogil=True, inline="always")
def uniform_below(x, n):
    """Uniform integer in [0, n) (n < 2**32), as int64: `bounded`, made exact from EXACT_FROM values
    on by Lemire's rejection (a rejected word is rehashed; see `_rng`)."""
    nn = np.uint64(n)
    m = (x >> _S32) * nn
    if nn >= _EXACT_FROM:
        low = m & _LOW32
        if low < nn:
            threshold = (_TWO32 - nn) % nn
            while low < threshold:
                x = fmix(x + _GOLDEN)
                m = (x >> _S32) * nn
                low = m & _LOW32
    return np.int64(m >> _S32)


@njit(cache=True, nogil=True, inline="always")
def coin(x):
    return np.float64(x & _LOW32) * _INV_2_32


@njit(cache=True, nogil=True, inline="always")
def unit53(x):
    return np.float64(x >> _S11) * _INV_2_53
