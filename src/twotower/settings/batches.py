"""How training batches are cut and which negatives come with them (`BatchConfig`); the batches
themselves are built by `twotower.training.batches`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

__all__ = ["LOG_Q_KINDS", "NEGATIVE_KINDS", "SHARED_KINDS", "BatchConfig"]

NEGATIVE_KINDS = ("none", "uniform", "popularity", "hard")
SHARED_KINDS = ("uniform", "popularity")
LOG_Q_KINDS = ("none", "static", "streaming")


@dataclass(frozen=True)
class BatchConfig:
    """How batches are cut and which negatives come with them.

    Attributes:
        batch_size: rows (user, positive item) per batch.
        num_negatives: n per-row negatives (0: none; in-batch negatives need nothing here).
        negative_kind: "none", "uniform", "popularity" (count**popularity_alpha) or "hard" (from
            candidate lists given with `BatchIterator.set_candidates`; uniform until then).
        exclude_positives: per-row negatives skip the user's training positives.
        mask_known_positives: the other candidates of a row (in-batch positives of other rows,
            pooled per-row negatives, shared negatives) that are among the row's user's training
            positives leave that row's loss, as accidental hits do
            (`twotower.training.known_positives`): drawn without looking at the user, they would
            be pushed below the positive. Learns faster early, ends level (a short-budget option;
            benchmarks/results/quality-gowalla-search.md).
        popularity_alpha: exponent of the popularity sampler (0.75 as in word2vec).
        num_shared_negatives: M negatives drawn once per batch and shared by all rows (0: none).
        shared_negative_kind: "uniform" or "popularity".
        log_q: "none"; "static" (item_log_q from training counts); or "streaming" (Yi et al. estimate,
            for catalogues too large or drifting for counts). Sampler log-probabilities (shared and
            per-row negatives) are exact and come whenever log_q is not "none"; hard negatives are
            mined, not drawn from a known distribution, and come without (the trainer leaves them
            uncorrected).
        hard_rank_range: (a, b): hard negatives come from candidate ranks a <= rank < b (None: all).
        streaming_buckets: hash buckets of the streaming estimator (its memory, and collisions).
        streaming_hashes: independent hashes of the streaming estimator (an item takes its smallest estimate).
        streaming_learning_rate: how fast the streaming estimator follows a changing frequency.
        shuffle: shuffle rows each epoch (off: file order, for evaluation-like passes).
        drop_last: drop the last, smaller batch of an epoch.
        prefetch: about this many batches are kept ready by the worker thread, built and handed over
            ceil(prefetch / 2) at a time (0: prepare each batch in the caller's thread).
        on_device: build every batch on the training device (`twotower.training.device_batches`):
            the pairs, histories and sampler tables live there and a step needs no host-to-device
            copy or host sync for its batch; meant for CUDA (on the CPU the Numba batches in a
            worker thread are the faster path).
        seed: the only source of randomness.
    """

    batch_size: int = 1024
    num_negatives: int = 0
    negative_kind: str = "none"
    exclude_positives: bool = True
    mask_known_positives: bool = False
    popularity_alpha: float = 0.75
    num_shared_negatives: int = 0
    shared_negative_kind: str = "uniform"
    log_q: str = "none"
    hard_rank_range: tuple[int, int | None] = (0, None)
    streaming_buckets: int = 1 << 20
    streaming_hashes: int = 2
    streaming_learning_rate: float = 0.05
    shuffle: bool = True
    drop_last: bool = False
    prefetch: int = 16
    on_device: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "batch_size", "num_negatives", "num_shared_negatives", "prefetch", "seed", "streaming_buckets",
            "streaming_hashes"
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise TypeError(f"BatchConfig.{name} must be an int, got {type(value).__name__}")
        if self.batch_size < 1:
            raise ValueError(f"BatchConfig.batch_size must be >= 1, got {self.batch_size}")
        for name in ("num_negatives", "num_shared_negatives", "prefetch"):
            if getattr(self, name) < 0:
                raise ValueError(f"BatchConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name, kinds in (
            ("negative_kind", NEGATIVE_KINDS), ("shared_negative_kind", SHARED_KINDS), ("log_q", LOG_Q_KINDS)
        ):
            if getattr(self, name) not in kinds:
                raise ValueError(f"BatchConfig.{name} must be one of {kinds}, got {getattr(self, name)!r}")
        if (self.negative_kind == "none") != (self.num_negatives == 0):
            raise ValueError(
                f"BatchConfig: negative_kind={self.negative_kind!r} with num_negatives={self.num_negatives}; "
                "set both (a kind and n > 0) or neither"
            )
        for name in ("exclude_positives", "mask_known_positives", "shuffle", "drop_last", "on_device"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"BatchConfig.{name} must be a bool")
        if not math.isfinite(self.popularity_alpha) or self.popularity_alpha < 0:
            raise ValueError(f"BatchConfig.popularity_alpha must be finite and >= 0, got {self.popularity_alpha}")
        if not isinstance(self.hard_rank_range, tuple) or len(self.hard_rank_range) != 2:
            raise TypeError(f"BatchConfig.hard_rank_range must be a tuple (a, b), got {self.hard_rank_range!r}")
        a, b = self.hard_rank_range
        if not isinstance(a, Integral) or not (b is None or isinstance(b, Integral)) or isinstance(a, bool):
            raise TypeError(f"BatchConfig.hard_rank_range must hold ints (b may be None), got {self.hard_rank_range!r}")
        if a < 0 or (b is not None and b < a):
            raise ValueError(f"BatchConfig.hard_rank_range must be (a, b) with 0 <= a <= b, got {self.hard_rank_range}")
