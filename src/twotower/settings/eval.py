"""The evaluation protocol: which of a user's known items each ranking leaves out, and what becomes
of validation / test rows the model cannot score. Papers differ on both, and the difference is
larger than most gains they report, so every rule is a setting (`[eval]`, `--eval.*`) and the
common papers' rules are named presets (`twotower evaluate MODEL --protocol NAME`).

Presets (valid rankings always leave out the user's train items):

| preset | test leaves out | unknown targets | a target the user already has |
| --- | --- | --- | --- |
| "twotower" (the defaults) | train + valid items | dropped | left out (never hit) |
| "lightgcn" | train + valid items | kept (never hit) | left out (never hit) |
| "lightgcn++" | train items only | kept (never hit) | left out (never hit) |
| "recbole" | train + valid items | kept (never hit) | ranked (can be hit) |

Metrics are the same under every preset (`twotower.metrics`): recall = hits / the user's targets,
NDCG's ideal DCG over min(targets, K) positions, users without targets skipped.

Example:
    >>> preset("lightgcn").unknown_targets
    'keep'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

EXCLUDE = ("train+valid", "train")
UNKNOWN_TARGETS = ("drop", "keep")
REPEAT_TARGETS = ("exclude", "rank")


@dataclass
class EvalConfig:
    """The evaluation protocol (see `twotower.settings.eval`): what each ranking leaves out, what counts.

    Attributes:
        exclude: items left out of each user's test ranking: "train+valid" (every item the user
            has in train or valid) or "train" (train items only: valid items stay rankable, as in
            LightGCN++'s code). Validation rankings always leave out train items.
        unknown_targets: valid / test rows whose user or item has no training row: "drop" (left
            out of the metrics) or "keep" (relevant items no ranking can hit: they count in recall's
            denominator and NDCG's ideal, and a user unknown to training counts with zeros).
        repeat_targets: a valid / test item the user already has in a left-out split: "exclude"
            (left out of the ranking like the user's other known items, so never hit, yet
            relevant) or "rank" (it stays in that user's ranking and can be hit, as in RecBole).
    """

    exclude: str = "train+valid"
    unknown_targets: str = "drop"
    repeat_targets: str = "exclude"

    def validate(self) -> None:
        """Raises ValueError naming the setting whose value is not one of its choices."""
        for name, choices in (("exclude", EXCLUDE), ("unknown_targets", UNKNOWN_TARGETS),
                              ("repeat_targets", REPEAT_TARGETS)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"eval.{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


PRESETS: dict[str, EvalConfig] = {
    "twotower": EvalConfig(),
    "lightgcn": EvalConfig(unknown_targets="keep"),
    "lightgcn++": EvalConfig(exclude="train", unknown_targets="keep"),
    "recbole": EvalConfig(unknown_targets="keep", repeat_targets="rank"),
}

# One line per preset for --help.
PRESET_HELP = {
    "twotower": "the defaults: test leaves out train + valid items, unknown targets dropped",
    "lightgcn": "LightGCN's code, whose train is our train + valid: test leaves out train + valid items, "
    "unknown targets kept and never hit",
    "lightgcn++": "LightGCN++'s code: test leaves out train items only, unknown targets kept and never hit",
    "recbole": "RecBole's full-sort: test leaves out train + valid items but never a target, unknown "
    "targets kept and never hit",
}


def preset(name: str) -> EvalConfig:
    """A fresh copy of the named preset's settings.

    Raises:
        ValueError: `name` is not a preset (the message lists them).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
