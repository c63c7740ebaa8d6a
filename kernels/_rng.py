"""The counter-based random numbers every sampler uses, in plain NumPy (no Numba).

Each sampler draws its bits from splitmix64's output function applied to a counter:

    key    = fmix(seed_key(seed) + (row + 1) * ROW_STEP)      one independent stream per batch row
    bits_c = fmix(key + (c + 1) * GOLDEN)                       the c-th 64-bit word of that stream

so any word is a pure function of (seed, row, counter). Results do not depend on thread timing or on
how many words other rows consumed, the Numba kernels need no shared RNG state (they release the GIL
safely), and the NumPy functions in `samplers_eager` reproduce the kernels bit for bit.

Integers in [0, n) come from the top 32 bits by multiply-shift (Lemire): `((x >> 32) * n) >> 32`
(`bounded`). Each value then has floor or ceil of 2**32 / n preimages, a relative bias of up to
n / 2**32: 3.9e-7 at 1,682 items, 4.7e-6 at 20,000, 2.4e-4 just under 2**20, far under what a
training run resolves. The samplers draw through `uniform_below`, which from EXACT_FROM = 2**20
values on adds Lemire's rejection (the few words whose low product bits fall under 2**32 mod n are
rehashed and drawn again), so large catalogues are exactly uniform (without it 10**8 items would be
2% off, 1.5e9 items 30%); below that the draws are the plain multiply-shift's, bit for bit as
before. Hashing (the frequency estimator's buckets) keeps `bounded`. The low 32 bits give the alias
method's coin, so one word serves one alias draw.
"""

from __future__ import annotations

import numbers

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: splitmix64's increment
ROW_STEP = 0xD1B54A32D192ED03  # a second odd constant, so row keys and counters never line up
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
INV_2_32 = 1.0 / 4294967296.0
INV_2_53 = 1.0 / 9007199254740992.0
EXACT_FROM = 1 << 20  # from this many values on, uniform draws reject (see the module docstring)


def fmix_int(x: int) -> int:
    """splitmix64's output function on a Python int (mod 2**64)."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * MIX1) & MASK64
    x = ((x ^ (x >> 27)) * MIX2) & MASK64
    return x ^ (x >> 31)


def seed_key(seed: int) -> int:
    """Maps a user seed (any int, taken mod 2**64) to the 64-bit key the kernels start from.

    Raises:
        TypeError: `seed` is not an integer (a float or None would silently collapse streams).
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return fmix_int(int(seed) + GOLDEN)


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from `seed` and integer `parts` (e.g. epoch, batch index), for sub-streams."""
    key = seed_key(seed)
    for part in parts:
        key = fmix_int(key ^ fmix_int(int(part) + ROW_STEP))
    return key >> 1


# NumPy versions (uint64 arrays wrap modulo 2**64 without warnings).
_U = np.uint64


def fmix_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    x ^= x >> _U(30)
    x *= _U(MIX1)
    x ^= x >> _U(27)
    x *= _U(MIX2)
    x ^= x >> _U(31)
    return x


def row_keys_np(key: int, rows: np.ndarray) -> np.ndarray:
    """[R] uint64 stream keys of batch rows `rows` for a seed key."""
    return fmix_np(_U(key) + (rows.astype(np.uint64) + _U(1)) * _U(ROW_STEP))


def bits_np(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Word `counters` of streams `keys` (broadcast), uint64."""
    return fmix_np(keys.astype(np.uint64) + (counters.astype(np.uint64) + _U(1)) * _U(GOLDEN))


def bounded_np(x: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Integers in [0, n) from words `x` (n < 2**32), int64."""
    return (((x >> _U(32)) * np.asarray(n).astype(np.uint64)) >> _U(32)).astype(np.int64)


def uniform_below_np(x: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Uniform integers in [0, n) from words `x` (n < 2**32), int64: `bounded_np`, with Lemire's
    rejection from EXACT_FROM values on (the kernels' `uniform_below`, word for word)."""
    x = np.asarray(x, dtype=np.uint64)
    nn = np.broadcast_to(np.asarray(n).astype(np.uint64), x.shape)
    m = (x >> _U(32)) * nn
    big = nn >= _U(EXACT_FROM)
    if big.any():
        threshold = np.where(big, (_U(1 << 32) - nn) % np.maximum(nn, _U(1)), _U(0))
        redo = big & ((m & _U(0xFFFFFFFF)) < threshold)
        while redo.any():
            x = np.where(redo, fmix_np(x + _U(GOLDEN)), x)
            m = np.where(redo, (x >> _U(32)) * nn, m)
            redo &= (m & _U(0xFFFFFFFF)) < threshold
    return (m >> _U(32)).astype(np.int64)


def coin_np(x: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) from the low 32 bits of `x`, float64."""
    return (x & _U(0xFFFFFFFF)).astype(np.float64) * INV_2_32


def unit53_np(x: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) with 53 bits from the top of `x`, float64."""
    return (x >> _U(11)).astype(np.float64) * INV_2_53
