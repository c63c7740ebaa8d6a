"""Negative samplers for two-tower training: Numba kernels over plain arrays (`cache=True`, `nogil=True`).

Positives to exclude come as a CSR history `exclude=(indptr, indices)`: `indptr` int64 `[U + 1]`,
`indices` int32 (or int64) with each row sorted ascending and unique (what `twotower.data` builds; check
a history once with `validate_csr`), or, for repeated calls on the same history, as an `ExclusionIndex`
(`build_exclusion_index`: validated once, with precomputed bitmaps for the longer rows, so a membership
test is one bit instead of a binary search; several times faster on MovieLens-sized histories). Every
sampler is a deterministic function of its `seed`: batch row `r` reads its own counter-based stream (see
`_rng`), so results do not depend on threads, timing or the form of `exclude`, and the NumPy functions
in `twotower.kernels.samplers_eager` give the same ids bit for bit.

Samplers:
    uniform_negatives     uniform over items, optionally excluding each user's positives (rejection +
                          exact rank-selection fallback)
    popularity_negatives  proportional to count**alpha through a Vose alias table (O(N) build, O(1) draw),
                          optionally excluding positives
    shared_negatives      M ids drawn once per batch (uniform or alias) with their log sampling probability
    hard_negatives        from per-user candidate lists (e.g. top-K of the current model), minus positives,
                          optionally from ranks [a, b) only (semi-hard)
    StreamingFrequencyEstimator  streaming item-frequency estimate for logQ (Yi et al., RecSys 2019)
    uniform_log_q, popularity_log_q  log-probability of each per-row draw, for the logQ correction

All log-probabilities are natural logs of the probability of one draw (per-draw, not per-batch).

Example:
    >>> import numpy as np
    >>> from twotower.kernels.samplers import uniform_negatives
    >>> indptr = np.array([0, 2, 3], dtype=np.int64); indices = np.array([1, 3, 0], dtype=np.int32)
    >>> neg = uniform_negatives(np.array([0, 1, 0]), 5, 4, exclude=(indptr, indices), seed=0)
    >>> neg.shape, bool(np.isin(neg[0], [1, 3]).any())
    ((3, 4), False)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._rng import seed_key
from ._sampling_jit import (
    _build_row_bitmaps,
    _check_rows,
    _hard_kernel,
    _popularity_kernel,
    _row_mass,
    _shared_alias_kernel,
    _shared_uniform_kernel,
    _uniform_kernel,
    _vose_kernel,
)
from .codes import check_codes
from .frequency import StreamingFrequencyEstimator

__all__ = [
    "AliasTable",
    "ExclusionIndex",
    "StreamingFrequencyEstimator",
    "build_alias_table",
    "build_exclusion_index",
    "hard_negatives",
    "popularity_log_q",
    "popularity_negatives",
    "popularity_positive_mass",
    "popularity_weights",
    "shared_negatives",
    "uniform_log_q",
    "uniform_negatives",
    "validate_csr",
]

DEFAULT_MAX_TRIES = 16
_MAX_ITEMS = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _check_count(value: Any, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_num_items(num_items: Any) -> int:
    num_items = _check_count(num_items, "num_items", minimum=1)
    if num_items > _MAX_ITEMS:
        raise ValueError(f"num_items must be < 2**31, got {num_items}")
    return num_items


_NO_WORDS = np.zeros(0, dtype=np.uint64)
_NO_ROWS = np.zeros(0, dtype=np.int64)


def _check_csr_types(indptr: Any, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(indptr, np.ndarray) or indptr.dtype != np.int64 or indptr.ndim != 1 or indptr.size < 1:
        raise TypeError("exclude indptr must be a 1-D int64 ndarray [U + 1]")
    if not isinstance(indices, np.ndarray) or indices.dtype not in (np.int32, np.int64) or indices.ndim != 1:
        raise TypeError("exclude indices must be a 1-D int32 or int64 ndarray [nnz]")
    return np.ascontiguousarray(indptr), np.ascontiguousarray(indices)


def _check_exclude(
    exclude: Any, users: np.ndarray, num_items: int, validate: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, row_words, words) of `exclude` after checking it against `users`; the rows of
    `users` are validated when `validate` and `exclude` is a plain tuple (an index was validated once)."""
    if isinstance(exclude, ExclusionIndex):
        if exclude.num_items != num_items:
            raise ValueError(f"exclude index was built for num_items={exclude.num_items}, not {num_items}")
        indptr, indices, row_words, words = exclude.indptr, exclude.indices, exclude.row_words, exclude.words
        validate = False
    elif isinstance(exclude, tuple) and len(exclude) == 2:
        indptr, indices = _check_csr_types(*exclude)
        row_words, words = _NO_ROWS, _NO_WORDS
    else:
        raise TypeError(f"exclude must be a tuple (indptr, indices) or an ExclusionIndex, got {type(exclude).__name__}")
    num_rows = indptr.size - 1
    check_codes(users, "users (rows of exclude)", low=0, high=num_rows)
    if validate and users.size:
        code, row = _check_rows(np.unique(users), indptr, indices, num_items)
        _raise_csr_problem(code, row, num_items)
    return indptr, indices, row_words, words


def _raise_csr_problem(code: int, row: int, num_items: int) -> None:
    if code == 1:
        raise ValueError(f"exclude indptr is not a valid CSR offset array at row {row}")
    if code == 2:
        raise ValueError(f"exclude row {row} holds an item id outside [0, {num_items})")
    if code == 3:
        raise ValueError(f"exclude row {row} is not sorted ascending without duplicates")


def _resolve(
    exclude: Any, users: np.ndarray, num_items: int, validate: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(users, indptr, indices, row_words, words) for the kernels; without `exclude`, an all-empty
    history (every batch row reads row 0, which has no positives)."""
    if exclude is None:
        return (np.zeros(users.size, dtype=np.int64), np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int32),
                _NO_ROWS, _NO_WORDS)
    return (users, *_check_exclude(exclude, users, num_items, validate))


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def validate_csr(indptr: np.ndarray, indices: np.ndarray, num_items: int) -> None:
    """Checks a history once, in O(nnz): dtypes, offsets, ids in [0, num_items), rows sorted and unique.

    Raises:
        TypeError: wrong dtype or type.
        ValueError: names the first bad row.
    """
    num_items = _check_num_items(num_items)
    indptr, indices = _check_csr_types(indptr, indices)
    if indptr[0] != 0 or indptr[-1] != indices.size:
        raise ValueError(f"exclude indptr must start at 0 and end at nnz={indices.size}, got {indptr[0]}..{indptr[-1]}")
    code, row = _check_rows(np.arange(indptr.size - 1, dtype=np.int64), indptr, indices, num_items)
    _raise_csr_problem(code, row, num_items)


@dataclasses.dataclass(frozen=True, eq=False)
class ExclusionIndex:
    """A validated CSR history with precomputed bitmaps of its longer rows, for repeated sampling.

    Build with `build_exclusion_index`; pass as `exclude=` to any sampler (same ids as the plain tuple).

    Attributes:
        indptr: [U + 1] int64, indices: [nnz] int32: the history.
        num_items: N, the width of the bitmaps.
        row_words: [U] int64 offset of each row's ceil(N / 64)-word bitmap in `words`, -1 for none.
        words: [R * ceil(N / 64)] uint64 bitmaps of the R rows that have one.
    """

    indptr: np.ndarray
    indices: np.ndarray
    num_items: int
    row_words: np.ndarray
    words: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.indptr.size - 1)


def build_exclusion_index(
    indptr: np.ndarray, indices: np.ndarray, num_items: int, *, memory_ratio: float = 4.0
) -> ExclusionIndex:
    """Validates a history once (`validate_csr`) and precomputes bitmaps for its longer rows.

    A row of k ids gets a bitmap when N / 8 bytes <= memory_ratio * 4k bytes (its CSR size) and k <= N / 2
    (fuller rows skip rejection altogether), so the bitmaps take at most `memory_ratio` times the
    history's own memory; on MovieLens-100K (N = 1682) every row with 14 <= k <= 841 qualifies (all 943
    users, 204 KB). Heavy users, who also dominate training rows, get them first; the other rows keep
    the binary search (short rows, few steps).

    Args:
        indptr, indices: the history (indptr int64 [U + 1], indices int32 [nnz], sorted unique rows).
        num_items: N.
        memory_ratio: bitmap budget relative to the history (0 disables bitmaps).

    Example:
        >>> index = build_exclusion_index(np.array([0, 2, 3], dtype=np.int64), np.array([1, 3, 0], dtype=np.int32), 5)
        >>> index.row_words  # both rows get a one-word bitmap
        array([0, 1])
        >>> uniform_negatives(np.array([0, 1]), 5, 3, exclude=index, seed=0).shape
        (2, 3)
    """
    validate_csr(indptr, indices, num_items)
    if not np.isfinite(memory_ratio) or memory_ratio < 0:
        raise ValueError(f"memory_ratio must be finite and >= 0, got {memory_ratio}")
    indptr, indices = np.ascontiguousarray(indptr), np.ascontiguousarray(indices)
    width_bytes = ((num_items + 63) >> 6) * 8
    if memory_ratio == 0:
        row_words, words = np.full(indptr.size - 1, -1, dtype=np.int64), _NO_WORDS
    else:
        min_length = int(np.ceil(width_bytes / (memory_ratio * indices.itemsize)))
        row_words, words = _build_row_bitmaps(indptr, indices, num_items, min_length)
    return ExclusionIndex(indptr=indptr, indices=indices, num_items=int(num_items), row_words=row_words, words=words)


def uniform_negatives(
    users: np.ndarray,
    num_items: int,
    num_negatives: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | ExclusionIndex | None = None,
    seed: int,
    max_tries: int = DEFAULT_MAX_TRIES,
    validate: bool = True,
) -> np.ndarray:
    """Uniform negatives in [0, num_items), excluding each user's positives when `exclude` is given.

    Each draw is exactly uniform over the user's free ids (the N - k ids not among its k positives).
    While at least half the catalogue is free, a draw is by rejection: a uniform id, tested against the
    user's positives (one bit of the row's bitmap, or a binary search in the sorted row), retried up to
    `max_tries` times. When the tries run out, or when the user has more than half the catalogue (then
    rejection would waste tries), the draw is an exact rank selection instead: a uniform rank in
    [0, N - k) mapped to the rank-th free id by a binary search over the row, so users with almost every
    item cost O(log k) per draw, never a long or unbounded loop.

    Args:
        users: [B] row of `exclude` for each batch row (users may repeat; rows draw independently).
        num_items: catalogue size N.
        num_negatives: n draws per row, with replacement.
        exclude: CSR history (indptr int64 [U + 1], indices int32 [nnz], rows sorted and unique), or an
            `ExclusionIndex` of it (faster for repeated calls; same ids).
        seed: results are a pure function of (seed, batch row, arguments).
        max_tries: rejection tries per draw before the exact fallback (the result's distribution does
            not depend on it; only which of two exact methods produced a draw).
        validate: check the rows of `users` (O(their length)) of a tuple `exclude`; pass False after
            `validate_csr` (an `ExclusionIndex` is validated when built, never again).

    Returns:
        [B, n] int64 ids. A user whose history holds every item has no negative: its row is all -1
        (the batch iterator refuses such users up front; a direct caller masks or drops them).

    Example:
        >>> indptr = np.array([0, 3, 3], dtype=np.int64); indices = np.array([0, 1, 2], dtype=np.int32)
        >>> uniform_negatives(np.array([0, 0]), 4, 3, exclude=(indptr, indices), seed=7)  # only id 3 is free
        array([[3, 3, 3],
               [3, 3, 3]])
    """
    users = check_codes(users, "users")
    num_items = _check_num_items(num_items)
    num_negatives = _check_count(num_negatives, "num_negatives")
    max_tries = _check_count(max_tries, "max_tries")
    users_k, indptr, indices, row_words, words = _resolve(exclude, users, num_items, validate)
    out = np.empty((users.size, num_negatives), dtype=np.int64)
    _uniform_kernel(users_k, indptr, indices, row_words, words, num_items, np.uint64(seed_key(seed)), max_tries, out)
    return out


def uniform_log_q(
    users: np.ndarray, num_items: int, *, exclude: tuple[np.ndarray, np.ndarray] | ExclusionIndex | None = None
) -> np.ndarray:
    """[B] float32 log-probability of one `uniform_negatives` draw for each row: -log(N - |positives|).

    -inf never occurs for a valid draw; rows with no free item get +inf (they have no draw to correct).
    """
    users = check_codes(users, "users")
    num_items = _check_num_items(num_items)
    if exclude is None:
        return np.full(users.size, -np.log(num_items), dtype=np.float32)
    indptr = _check_exclude(exclude, users, num_items, False)[0]
    free = num_items - (indptr[users + 1] - indptr[users])
    with np.errstate(divide="ignore"):
        return (-np.log(free.astype(np.float64))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AliasTable:
    """Vose alias table of a distribution over N items.

    Attributes:
        prob: [N] float64 acceptance threshold of each column.
        alias: [N] int64 id drawn when column i's coin fails.
        p: [N] float64 target probabilities (weights / sum), exact; `log_p` is their log.
    """

    prob: np.ndarray
    alias: np.ndarray
    p: np.ndarray

    @property
    def num_items(self) -> int:
        return int(self.p.size)

    def log_prob(self, items: np.ndarray) -> np.ndarray:
        """[...] float32 log p of ids `items` (per-draw probability, natural log)."""
        with np.errstate(divide="ignore"):
            return np.log(self.p[np.asarray(items)]).astype(np.float32)


def popularity_weights(counts: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """[N] float64 weights count**alpha (word2vec's 0.75 by default; alpha=0 is uniform, 1 is popularity).

    Raises:
        ValueError: negative or non-finite counts, or alpha < 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array [N], got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise ValueError("counts must be finite and >= 0")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    return counts**alpha


def build_alias_table(weights: np.ndarray) -> AliasTable:
    """Builds a Vose alias table in O(N) for sampling ids with probability weights / sum(weights).

    Args:
        weights: [N] non-negative finite weights (e.g. `popularity_weights(counts, 0.75)`), N < 2**31.

    Raises:
        ValueError: empty, negative, non-finite or all-zero weights.

    Example:
        >>> table = build_alias_table(popularity_weights(np.array([9, 1, 0, 4]), alpha=0.5))
        >>> table.p  # 3 : 1 : 0 : 2
        array([0.5       , 0.16666667, 0.        , 0.33333333])
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D array [N], got shape {w.shape}")
    if w.size > _MAX_ITEMS:
        raise ValueError(f"weights must have fewer than 2**31 entries, got {w.size}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    if not w.max() > 0:
        raise ValueError("weights must not all be zero")
    w = w / w.max()  # finite weights near 1e308 would overflow their sum
    total = w.sum()
    p = w / total
    prob = np.empty(w.size, dtype=np.float64)
    alias = np.empty(w.size, dtype=np.int64)
    _vose_kernel(p, prob, alias)
    return AliasTable(prob=prob, alias=alias, p=p)


def _check_table(table: Any) -> AliasTable:
    if not isinstance(table, AliasTable):
        raise TypeError(f"table must be an AliasTable (from build_alias_table), got {type(table).__name__}")
    return table


def popularity_negatives(
    users: np.ndarray,
    table: AliasTable,
    num_negatives: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | ExclusionIndex | None = None,
    seed: int,
    max_tries: int = DEFAULT_MAX_TRIES,
    validate: bool = True,
    positive_mass: np.ndarray | None = None,
) -> np.ndarray:
    """Negatives drawn with probability `table.p` (e.g. count**0.75), excluding positives when given.

    With `exclude`, row r's draws follow p restricted to the user's free ids and renormalised: rejection
    of alias draws while the user's positives hold at most 3/4 of the mass, and an exact inverse-CDF
    draw over the free ids otherwise (or when `max_tries` run out).

    Args:
        users: [B] rows of `exclude` (only their count matters without `exclude`).
        table: from `build_alias_table`.
        num_negatives: n draws per row, with replacement.
        exclude, seed, max_tries, validate: as in `uniform_negatives`.
        positive_mass: [U] `popularity_positive_mass(exclude, table)`, computed once for many calls
            (else each row sums its positives' p, O(its length) per call). Same ids either way.

    Returns:
        [B, n] int64 ids; -1 for rows whose free ids all have zero weight.

    Example:
        >>> table = build_alias_table(np.array([3.0, 1.0, 0.0, 2.0]))
        >>> popularity_negatives(np.array([0, 1]), table, 4, seed=0)
        array([[0, 0, 0, 3],
               [0, 0, 0, 3]])
    """
    users = check_codes(users, "users")
    table = _check_table(table)
    num_negatives = _check_count(num_negatives, "num_negatives")
    max_tries = _check_count(max_tries, "max_tries")
    users_k, indptr, indices, row_words, words = _resolve(exclude, users, table.num_items, validate)
    mass = _check_mass(positive_mass, indptr.size - 1) if exclude is not None else _NO_MASS
    out = np.empty((users.size, num_negatives), dtype=np.int64)
    _popularity_kernel(
        users_k, indptr, indices, row_words, words, table.prob, table.alias, table.p, mass, np.uint64(seed_key(seed)),
        max_tries, out
    )
    return out


_NO_MASS = np.zeros(0, dtype=np.float64)


def _check_mass(positive_mass: Any, num_rows: int) -> np.ndarray:
    if positive_mass is None:
        return _NO_MASS
    if (not isinstance(positive_mass, np.ndarray) or positive_mass.dtype != np.float64
            or positive_mass.shape != (num_rows,)):
        raise TypeError(f"positive_mass must be a float64 ndarray [{num_rows}] (from popularity_positive_mass)")
    return positive_mass


def popularity_positive_mass(exclude: tuple[np.ndarray, np.ndarray] | ExclusionIndex, table: AliasTable) -> np.ndarray:
    """[U] float64 probability mass of each user's positives under `table.p` (summed in row order, as
    the sampler does), to compute once and pass to `popularity_negatives` / `popularity_log_q`."""
    table = _check_table(table)
    indptr, indices, _, _ = _check_exclude(exclude, np.zeros(0, dtype=np.int64), table.num_items, False)
    validate_csr(indptr, indices, table.num_items)
    return _row_mass(np.arange(indptr.size - 1, dtype=np.int64), indptr, indices, table.p)


def popularity_log_q(
    users: np.ndarray,
    negatives: np.ndarray,
    table: AliasTable,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | ExclusionIndex | None = None,
    positive_mass: np.ndarray | None = None,
) -> np.ndarray:
    """[B, n] float32 log-probability of each `popularity_negatives` draw: log p_i, minus
    log(1 - mass of the user's positives) when positives are excluded (`positive_mass` as there)."""
    users = check_codes(users, "users")
    table = _check_table(table)
    negatives = np.asarray(negatives)
    if negatives.ndim != 2 or negatives.shape[0] != users.size:
        raise ValueError(f"negatives must be [B={users.size}, n], got shape {negatives.shape}")
    if negatives.size and (
        negatives.dtype.kind not in "iu" or negatives.min() < -1 or negatives.max() >= table.num_items
    ):
        raise ValueError(f"negatives must be item ids in [0, {table.num_items}) or -1 (no draw)")
    none = negatives < 0
    with np.errstate(divide="ignore"):
        log_q = np.log(table.p[np.where(none, 0, negatives)])
        if exclude is not None:
            indptr, indices, _, _ = _check_exclude(exclude, users, table.num_items, False)
            mass = _check_mass(positive_mass, indptr.size - 1)
            taken = mass[users] if mass.size else _row_mass(users, indptr, indices, table.p)
            free = 1.0 - np.minimum(taken, 1.0)
            for r in np.flatnonzero(free < 1e-9):  # 1 - taken has lost its digits: sum the free mass itself
                allowed = np.ones(table.num_items, dtype=bool)
                allowed[indices[indptr[users[r]] : indptr[users[r] + 1]]] = False
                free[r] = table.p[allowed].sum()
            log_q = log_q - np.log(free)[:, None]
    return np.where(none, 0.0, log_q).astype(np.float32)  # rows without a draw: nothing to correct


def shared_negatives(
    num_samples: int,
    *,
    num_items: int | None = None,
    table: AliasTable | None = None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """M ids drawn once for a whole batch, uniformly (`num_items`) or from `table`, with replacement.

    Returns:
        ids [M] int64 and log_q [M] float32: the natural log of the per-draw probability of each id
        (log(1/N) or log p_i). For sampled softmax, subtract log_q from the logits (logQ correction);
        add log(M) for the expected-count form when mixing with other negative sources.

    Example:
        >>> ids, log_q = shared_negatives(4, table=build_alias_table(np.array([3.0, 1.0, 0.0, 2.0])), seed=1)
        >>> ids, np.exp(log_q).round(3)
        (array([0, 0, 3, 0]), array([0.5  , 0.5  , 0.333, 0.5  ], dtype=float32))
    """
    num_samples = _check_count(num_samples, "num_samples")
    if (num_items is None) == (table is None):
        raise ValueError("give exactly one of num_items (uniform) or table (alias)")
    out = np.empty(num_samples, dtype=np.int64)
    key = np.uint64(seed_key(seed))
    if table is None:
        num_items = _check_num_items(num_items)
        _shared_uniform_kernel(num_items, key, out)
        return out, np.full(num_samples, -np.log(num_items), dtype=np.float32)
    table = _check_table(table)
    _shared_alias_kernel(table.prob, table.alias, key, out)
    return out, table.log_prob(out)


def hard_negatives(
    users: np.ndarray,
    candidates: np.ndarray,
    num_negatives: int,
    *,
    num_items: int,
    exclude: tuple[np.ndarray, np.ndarray] | ExclusionIndex | None = None,
    rank_range: tuple[int, int | None] = (0, None),
    replace: bool = True,
    seed: int,
    max_tries: int = DEFAULT_MAX_TRIES,
    validate: bool = True,
) -> np.ndarray:
    """Negatives drawn uniformly from per-row candidate lists, minus the user's positives.

    Args:
        users: [B] rows of `exclude`.
        candidates: [B, C] item ids ranked best first (e.g. `topk` of the current model); -1 is padding.
        num_negatives: n per row.
        num_items: catalogue size N (ids are checked against it; the fallback draws from it).
        exclude: positives to skip, as in `uniform_negatives`.
        rank_range: (a, b): only ranks a <= rank < b are eligible (semi-hard negatives skip the top a,
            which are often unlabelled positives); b=None means C.
        replace: draw with replacement; without, the first min(n, eligible) draws are distinct ranks and
            any further draws repeat them uniformly.
        seed, max_tries, validate: as in `uniform_negatives`.

    Returns:
        [B, n] int64 ids. A row with no eligible candidate falls back to `uniform_negatives` for that
        row (same seed and row: the same ids that function returns), so a batch never has holes unless
        the user has every item (-1).

    Example:
        >>> cand = np.array([[5, 2, 7, 1, 4], [3, 0, 6, 2, -1]])  # e.g. each user's top-5
        >>> exclude = (np.array([0, 1, 2], dtype=np.int64), np.array([7, 3], dtype=np.int32))
        >>> hard_negatives(np.array([0, 1]), cand, 3, num_items=8, exclude=exclude, rank_range=(1, 4),
        ...                replace=False, seed=0)
        array([[2, 1, 2],
               [0, 2, 6]])
    """
    users = check_codes(users, "users")
    num_items = _check_num_items(num_items)
    num_negatives = _check_count(num_negatives, "num_negatives")
    max_tries = _check_count(max_tries, "max_tries")
    cand = np.asarray(candidates)
    if cand.ndim != 2 or cand.shape[0] != users.size:
        raise ValueError(f"candidates must be [B={users.size}, C], got shape {cand.shape}")
    if cand.size and not np.issubdtype(cand.dtype, np.integer):
        raise TypeError(f"candidates must hold integer ids, got dtype {cand.dtype}")
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    if cand.size and (cand.min() < -1 or cand.max() >= num_items):
        raise ValueError(f"candidates must be item ids in [0, {num_items}) or -1 (padding)")
    if not isinstance(rank_range, tuple) or len(rank_range) != 2:
        raise TypeError("rank_range must be a tuple (a, b)")
    lo = _check_count(rank_range[0], "rank_range[0]")
    hi = cand.shape[1] if rank_range[1] is None else _check_count(rank_range[1], "rank_range[1]")
    if rank_range[1] is not None and hi < lo:
        raise ValueError(f"rank_range must have a <= b, got {rank_range}")
    hi = min(hi, cand.shape[1])
    lo = min(lo, hi)
    users_k, indptr, indices, row_words, words = _resolve(exclude, users, num_items, validate)
    out = np.empty((users.size, num_negatives), dtype=np.int64)
    _hard_kernel(
        users_k, cand, indptr, indices, row_words, words, lo, hi, num_items, np.uint64(seed_key(seed)), max_tries,
        bool(replace), out
    )
    return out
