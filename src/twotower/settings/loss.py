"""Which loss to train with (`LossConfig`), its checks, and the temperature the loss owns: its
value, whether it is learned, and the rule that sets it from the training data (`data_temperature`).
The losses' own module (`twotower.losses`) runs them; the trained model records the temperature."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["IN_BATCH_KINDS", "KINDS", "REDUCTIONS", "LossConfig", "check_ccl", "check_margin",
           "check_temperature_value", "check_weight", "data_temperature"]

REDUCTIONS = ("mean", "sum", "none")
KINDS = ("infonce", "mixed", "sampled_softmax", "bpr", "hinge", "bce", "ccl", "directau")
# Kinds computed over the batch's own rows: they need the positives as vectors, not as table rows.
IN_BATCH_KINDS = ("infonce", "mixed", "directau")
_SOFTMAX_KINDS = ("infonce", "mixed", "sampled_softmax")
_SYMMETRIC_KINDS = ("infonce", "mixed")
_SOFTMAX_DEFAULT_TEMPERATURE = 0.1
_DEFAULT_MARGINS = {"hinge": 1.0, "ccl": 0.9}
# The data-set temperature's constant: chosen on validation across ML-100K, ml-latest-small, Last.fm
# and Gowalla (benchmarks/results/quality-gowalla-search.md, "Temperature from the data").
DATA_TEMPERATURE_SCALE = 0.75
DATA_TEMPERATURE_RANGE = (0.05, 0.5)


def data_temperature(num_items: int, positives_per_user: float) -> float:
    """The softmax temperature for a catalogue of `num_items` whose users have `positives_per_user`
    training items on average: DATA_TEMPERATURE_SCALE / ln(num_items / positives_per_user), within
    DATA_TEMPERATURE_RANGE.

    Why: with unit vectors a logit lies in [-1/tau, 1/tau], so the softmax can raise an item above
    another by at most a factor e^(2/tau). To give a user's ~k items most of the mass against the
    N - k others, that factor must reach about N / k: the smaller the share of the catalogue a user
    covers, the lower the temperature needs to be. The best of 0.1, 0.15, 0.2 (0.05 ... 0.5 on
    ML-100K) on validation follows the rule: 0.2 on ML-100K (ln(N / k) = 3.0), 0.15 on
    ml-latest-small (4.2) and Last.fm (6.0), 0.1 on Gowalla (7.4); the scale gives 0.25, 0.18,
    0.13 and 0.10.

    Example:
        >>> round(data_temperature(40_981, 24.1), 3)
        0.101
    """
    if num_items < 1 or not positives_per_user > 0:
        raise ValueError(f"data_temperature needs num_items >= 1 and positives_per_user > 0; got {num_items}, "
                         f"{positives_per_user}")
    low, high = DATA_TEMPERATURE_RANGE
    spread = math.log(num_items / positives_per_user)
    if spread <= 0:  # users cover the whole catalogue: nothing to separate, the mildest temperature
        return high
    return min(high, max(low, DATA_TEMPERATURE_SCALE / spread))


@dataclass(frozen=True)
class LossConfig:
    """Which loss to train with and its options; saved into every checkpoint.

    Attributes:
        kind: "infonce": in-batch softmax (the other rows' positives are the negatives), plus any
            shared or per-row negatives given. "mixed": the same loss, checked to have shared extra
            negatives and the log-q of every candidate (mixed negative sampling, Yang et al. 2020).
            "sampled_softmax", "bpr", "hinge", "bce", "ccl" (SimpleX's cosine contrastive loss):
            per-row losses over explicit negatives (see `twotower.losses.functional`).
            "directau": alignment + uniformity over the batch's rows (Wang et al. 2022), no negatives.
        temperature: logits are q·k / temperature. None picks 0.1 for the softmax kinds (infonce,
            mixed, sampled_softmax; suits L2-normalised towers) and 1.0, raw scores, for bpr,
            hinge, bce and ccl (directau uses none); the trainer sets the softmax kinds' None from
            the training data instead (`for_data`). With `learn_temperature` it is the initial value.
        learn_temperature: learn log(temperature) as a parameter of the loss module.
        min_temperature: lower clamp of a learned temperature (as CLIP caps its logit scale at 100).
        margin: "hinge": the gap required between positive and negative scores (>= 0; None: 1.0).
            "ccl": the score above which a negative is penalised (None: 0.9, a cosine).
        negative_weight: "ccl": weight of the mean over negatives against the positive's term.
        uniformity_weight: "directau": gamma, the weight of the uniformity term.
        correct_positive: with logQ correction, correct the positive's logit too (Yi et al. 2019).
            logQ correction is on when the inputs carry log-q arrays; bpr and hinge ignore them.
        symmetric: add the item-to-query direction (CLIP style); infonce and mixed only.
        remove_accidental_hits: mask negatives whose item id equals the row's positive id (and, for
            the in-batch kinds, other rows of the same user); needs the ids in `LossInputs`.
        reduction: "mean" (over rows) | "sum" | "none" (per-row losses [B]).
    """

    kind: str = "infonce"
    temperature: float | None = None
    learn_temperature: bool = False
    min_temperature: float = 0.01
    margin: float | None = None
    negative_weight: float = 1.0
    uniformity_weight: float = 1.0
    correct_positive: bool = True
    symmetric: bool = False
    remove_accidental_hits: bool = True
    reduction: str = "mean"

    def __post_init__(self) -> None:
        for name in ("learn_temperature", "correct_positive", "symmetric", "remove_accidental_hits"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"LossConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.kind not in KINDS:
            raise ValueError(f"loss kind must be one of {KINDS}, got {self.kind!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.temperature is not None:
            check_temperature_value(self.temperature)
        check_temperature_value(self.min_temperature)
        if self.kind == "ccl":
            check_ccl(self.resolved_margin, self.negative_weight)
        elif self.margin is not None:
            check_margin(self.margin)
        check_weight(self.negative_weight, "negative_weight")
        check_weight(self.uniformity_weight, "uniformity_weight")
        if self.learn_temperature and self.resolved_temperature < self.min_temperature:
            raise ValueError(
                f"temperature {self.resolved_temperature} is below min_temperature {self.min_temperature}"
            )
        if self.symmetric and self.kind not in _SYMMETRIC_KINDS:
            raise ValueError(
                f"symmetric applies to the in-batch softmax kinds {_SYMMETRIC_KINDS}, not kind={self.kind!r}"
            )

    @property
    def resolved_temperature(self) -> float:
        """The temperature in use (or the initial one when learned), after the per-kind default."""
        if self.temperature is not None:
            return float(self.temperature)
        return _SOFTMAX_DEFAULT_TEMPERATURE if self.kind in _SOFTMAX_KINDS else 1.0

    def for_data(self, num_items: int, positives_per_user: float) -> LossConfig:
        """This config with a softmax kind's unset temperature taken from the data
        (`data_temperature`); any other config unchanged."""
        if self.temperature is not None or self.kind not in _SOFTMAX_KINDS:
            return self
        return dataclasses.replace(self, temperature=data_temperature(num_items, positives_per_user))

    @property
    def resolved_margin(self) -> float:
        """The margin in use, after the per-kind default (hinge 1.0, ccl 0.9)."""
        return float(self.margin) if self.margin is not None else _DEFAULT_MARGINS.get(self.kind, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        """Inverse of `to_dict`; unknown keys raise a ValueError that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown loss config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


def check_temperature_value(temperature: float) -> None:
    """A fixed temperature is a positive finite float (a learned one, a tensor, is checked by
    `twotower.losses` where tensors exist)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float or a 0-d tensor, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")


def check_ccl(margin: float, negative_weight: float) -> None:
    """A CCL margin is any finite float (cosines live in [-1, 1]); its weight a finite float >= 0."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"ccl margin must be a finite float, got {margin!r}")
    check_weight(negative_weight, "negative_weight")


def check_weight(value: float, name: str) -> None:
    """A loss weight is a finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def check_margin(margin: float) -> None:
    """A hinge margin is a finite float >= 0."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a float, got {type(margin).__name__}")
    if not (margin >= 0 and margin != float("inf")):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
