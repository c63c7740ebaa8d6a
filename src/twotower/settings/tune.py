"""The `[tune]` table of a config file: what `twotower tune` searches, and how.

    [tune]
    metric = "ndcg@20"          # default: train.select_metric
    trials = 40
    timeout = 3600              # seconds; optional
    seed = 0
    [tune.space]
    "loss.temperature" = { low = 0.03, high = 0.3, log = true }
    "model.embedding_dim" = { choices = [64, 128, 256] }
    "batches.num_shared_negatives" = { low = 256, high = 4096, step = 256 }

The rest of the file is the base configuration every trial starts from (`twotower train` reads the
same file and ignores `[tune]`). Each `[tune.space]` entry names a training setting by its dotted
name and gives either a range, `low` and `high` with an optional `step` or `log = true` (numeric
settings; the range is of integers where the setting is an integer), or a list of `choices` of the
setting's type. Without `[tune.space]`, `default_space` says what is searched. Every entry is
checked against the real settings, and its ends and choices are checked to give settings that can
train, before any trial runs.

Optuna is not imported here (`twotower.tune` runs the study), so a file is checked at no cost.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twotower.settings.checks import check_setting, union_members
from twotower.settings.cli import merge
from twotower.settings.model import RETIRED
from twotower.settings.train import NESTED, TUNE_SECTION, LoopConfig, TrainConfig, _build, read_toml, setting_names

__all__ = ["Param", "TuneConfig", "default_space", "read_tune", "trial_config"]

PRUNERS = ("median", "none")
KEEP_MODELS = ("best", "all")
_RANGE_KEYS = {"low", "high", "step", "log"}
# Settings a search may not change: the data and its split (trials must be compared on the same
# validation users) and the metric they are compared by (tune.metric sets it).
_FIXED = ("data.", "train.select_metric", "train.ks")


@dataclass(frozen=True)
class Param:
    """One searched setting: a range of numbers (`low`..`high`, optional `step`, or `log` spacing)
    or a list of `choices`. `integer` ranges hold integers (the setting is an integer)."""

    name: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def as_toml(self) -> dict[str, Any]:
        """The entry as written in `[tune.space]`."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        entry: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step is not None:
            entry["step"] = self.step
        if self.log:
            entry["log"] = True
        return entry


@dataclass
class TuneConfig:
    """How `twotower tune` searches: the `[tune]` table (`space` is `[tune.space]`).

    Attributes:
        metric: validation metric the search maximises ("": the base config's train.select_metric);
            every trial also picks its best epoch by it (the trials' train.select_metric).
        trials: finished trials (complete, pruned or failed) the study should hold; a trial cut
            short by an interruption does not count and runs again.
        timeout: seconds after which this invocation starts no new trial (none: no limit).
        seed: seed of the TPE sampler (a resumed study advances it by the trials it holds).
        startup_trials: trials sampled at random before TPE models the results.
        pruner: "median": stop a trial whose best validation value so far is below the median of
            the completed trials at the same epoch; "none": every trial runs to its end.
        prune_startup_trials: completed trials needed before any trial is pruned.
        prune_from_epoch: the earliest epoch at which a trial can be pruned.
        keep_models: "best": only the best trial keeps its model directory (every trial keeps its
            metrics.jsonl); "all": every completed trial keeps its model. Checkpoints are always
            removed once a trial ends.
        space: setting name -> range or choices (see the module docstring); empty: `default_space`.
    """

    metric: str = ""
    trials: int = 20
    timeout: float | None = None
    seed: int = 0
    startup_trials: int = 10
    pruner: str = "median"
    prune_startup_trials: int = 5
    prune_from_epoch: int = 3
    keep_models: str = "best"
    space: dict[str, Param] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, table: dict[str, Any], base: TrainConfig) -> TuneConfig:
        """The `[tune]` table checked against `base`, the configuration the trials start from;
        ValueError naming the key for anything wrong."""
        table = dict(table)
        space = table.pop("space", None)
        settings = _build(cls, table, TUNE_SECTION)
        settings.metric = settings.metric or base.train.select_metric
        settings.validate()
        if space is None:
            space = default_space(base)
        elif not isinstance(space, dict) or not space:
            raise ValueError(f"tune.space must be a table of settings to search; got {space!r}")
        settings.space = {name: _param(name, entry) for name, entry in space.items()}
        for param in settings.space.values():
            _check_ends(param, base, settings.metric)
        return settings

    def validate(self) -> None:
        """Raises ValueError naming the first bad scalar setting."""
        try:
            dataclasses.replace(LoopConfig(), select_metric=self.metric).validate()
        except ValueError as err:
            raise ValueError(f"tune.metric: {err}") from None
        if self.trials < 1:
            raise ValueError(f"tune.trials must be >= 1; got {self.trials}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"tune.timeout must be > 0 seconds (leave it out for no limit); got {self.timeout}")
        if self.startup_trials < 0 or self.prune_startup_trials < 0 or self.prune_from_epoch < 1:
            raise ValueError(
                "tune.startup_trials and tune.prune_startup_trials must be >= 0, tune.prune_from_epoch >= 1"
            )
        if self.pruner not in PRUNERS:
            raise ValueError(f"tune.pruner must be one of {PRUNERS}; got {self.pruner!r}")
        if self.keep_models not in KEEP_MODELS:
            raise ValueError(f"tune.keep_models must be one of {KEEP_MODELS}; got {self.keep_models!r}")


def read_tune(path: str | Path, base: TrainConfig) -> TuneConfig:
    """The `[tune]` table of the TOML file at `path` (defaults where it has none), checked against
    `base`; errors name the file and the key."""
    table = read_toml(path).get(TUNE_SECTION, {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [tune] must be a table; got {table!r}")
    try:
        return TuneConfig.from_dict(table, base)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def default_space(base: TrainConfig) -> dict[str, dict[str, Any]]:
    """The search space used when `[tune.space]` is absent, in its TOML form, for the settings
    `base`'s model and loss use. Change it here; `twotower tune` checks it like a user's space.

    Why these settings and ranges (evidence: the ML-100K search in
    benchmarks/results/quality-search.md, where the temperature moved validation NDCG@10 by 25%,
    the width by 3-4% and lr, batch and id dropout by about 1%; the Gowalla search in
    benchmarks/results/quality-gowalla-search.md, where temperature, width and the history gate
    carried and a 4x learning rate did not):
    - `loss.temperature` 0.05-0.4, log (softmax losses): the optimum was 0.2 on ML-100K and 0.1 on
      Gowalla, with 0.05 and 0.5 clearly worse; log, as it divides the scores.
    - `optim.lr` 1e-3 to 2e-2, log: the default 5e-3 times 1/5 to 4; beyond that Adam either
      stalls within the epoch budget or diverges.
    - `model.embedding_dim` 64 to 512: wider was better on ML-100K up to 256 and on Gowalla up to
      512; choices, since the cost grows with the width and widths are powers of two in practice.
    - `batches.num_shared_negatives` 256-4096, log (when the base uses shared negatives): more
      negatives sharpen the softmax at a cost linear in their number.
    - `model.id_dropout` 0-0.2 (when a tower has an id embedding): 0.1 was as good as 0.02.
    - `model.history_dropout` 0.1-0.8 (with `model.user_history` or `model.item_history`): the
      pooled history must not reveal the target; `model.history_weight` 0.2-0.8 (with the gate):
      SimpleX's share of it.
    - `optim.embedding_weight_decay` none or 1e-4 to 1e-1 in decades: decoupled decay on the rows a
      batch touches; off by default (on purpose: it is a choice), so the search decides.
    """
    space: dict[str, dict[str, Any]] = {}
    if base.loss.kind in ("infonce", "mixed", "sampled_softmax"):
        space["loss.temperature"] = {"low": 0.05, "high": 0.4, "log": True}
    space["optim.lr"] = {"low": 1e-3, "high": 2e-2, "log": True}
    space["model.embedding_dim"] = {"choices": [64, 128, 256, 512]}
    if base.batches.num_shared_negatives > 0:
        space["batches.num_shared_negatives"] = {"low": 256, "high": 4096, "log": True}
    if base.model.user.id_dim != 0 or base.model.item.id_dim != 0:
        space["model.id_dropout"] = {"low": 0.0, "high": 0.2}
    if base.model.user_history or base.model.item_history:
        space["model.history_dropout"] = {"low": 0.1, "high": 0.8}
        if base.model.history_combine == "gate":
            space["model.history_weight"] = {"low": 0.2, "high": 0.8}
    space["optim.embedding_weight_decay"] = {"choices": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]}
    return space


def trial_config(base: TrainConfig, params: dict[str, Any], metric: str) -> TrainConfig:
    """`base` with the settings `params` (dotted name -> value) and best epochs picked by `metric`:
    the configuration one trial trains, and what `best.toml` holds. ValueError if it cannot train."""
    changes: dict[str, Any] = {"train": {"select_metric": metric}}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = changes
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    config = TrainConfig.from_dict(merge(base.to_dict(), changes))
    config.validate()
    return config


def _owner(name: str) -> tuple[type, str]:
    """The settings class holding setting `name` and the field's name; ValueError if there is none."""
    cls: type | None = TrainConfig
    *parents, leaf = name.split(".")
    for part in parents:
        cls = NESTED.get(cls, {}).get(part) if cls is not None else None
    if cls is not None and leaf in {f.name for f in dataclasses.fields(cls)} and leaf not in NESTED.get(cls, {}):
        return cls, leaf
    if cls is not None and parents:  # a known section: list its settings
        section = ".".join(parents)
        known = [n for n in setting_names(cls, section + ".") if n.count(".") == name.count(".")]
        raise ValueError(f"tune.space: unknown setting {name!r}; [{section}] has {', '.join(known)}")
    close = difflib.get_close_matches(name, setting_names(), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"tune.space: unknown setting {name!r}{hint} (settings are named section.key, e.g. 'optim.lr')")


def _param(name: str, entry: Any) -> Param:
    """The `[tune.space]` entry for setting `name`, checked against the setting's type."""
    where = f"tune.space {name!r}"
    retired = name in {f"model.{key}" for key in RETIRED}
    if not retired:
        cls, leaf = _owner(name)
    if retired or name.startswith(_FIXED):
        raise ValueError(f"{where}: this setting cannot be searched (the data and split, the metric and the "
                         "model's own temperature settings are fixed for a study; loss.temperature is searchable)")
    if not isinstance(entry, dict):
        raise ValueError(
            f"{where} must be a table: {{ low = ..., high = ... }} or {{ choices = [...] }}; got {entry!r}"
        )
    options = [o for o in union_members(typing.get_type_hints(cls)[leaf]) if o is not type(None)]
    if not all(o in (int, float, bool, str) for o in options):
        raise ValueError(f"{where}: only settings holding one number, string or true/false can be searched")
    if "choices" in entry:
        return _choices(name, cls, leaf, entry, where)
    return _range(name, cls, leaf, options, entry, where)


def _choices(name: str, cls: type, leaf: str, entry: dict[str, Any], where: str) -> Param:
    if set(entry) != {"choices"}:
        raise ValueError(
            f"{where}: give either choices or a range (low, high, step, log), not both; got keys {sorted(entry)}"
        )
    choices = entry["choices"]
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"{where}: choices must be a non-empty list; got {choices!r}")
    return Param(
        name, choices=tuple(check_setting(cls, leaf, c, f"{where}: choices[{i}]") for i, c in enumerate(choices))
    )


def _range(name: str, cls: type, leaf: str, options: list[type], entry: dict[str, Any], where: str) -> Param:
    unknown = sorted(set(entry) - _RANGE_KEYS)
    if unknown or not {"low", "high"} <= set(entry):
        raise ValueError(
            f"{where}: a range needs low and high (optional step or log), or give choices; got keys {sorted(entry)}"
        )
    if options not in ([int], [float]):
        raise ValueError(f"{where}: a range needs a numeric setting; this one takes "
                         f"{' or '.join(o.__name__ for o in options)}: give choices")
    integer = options == [int]
    low, high = (check_setting(cls, leaf, entry[k], f"{where}: {k}") for k in ("low", "high"))
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false; got {log!r}")
    step = entry.get("step")
    if step is not None:
        step = check_setting(cls, leaf, step, f"{where}: step")
        if not step > 0 or (log and not (integer and step == 1)):
            raise ValueError(f"{where}: step must be > 0 and cannot go with log = true; got step {step}")
    if low > high:
        raise ValueError(f"{where}: low ({low}) is above high ({high})")
    if log and not low > 0:
        raise ValueError(f"{where}: log = true needs low > 0; got {low}")
    return Param(name, low=low, high=high, step=step, log=log, integer=integer)


def _check_ends(param: Param, base: TrainConfig, metric: str) -> None:
    """Each end of a range and each choice must give settings that can train, as far as the settings
    alone tell (a combination may still fail; that trial is then recorded as failed)."""
    values = param.choices if param.choices is not None else (param.low, param.high)
    for value in values:
        try:
            trial_config(base, {param.name: value}, metric)
        except (TypeError, ValueError) as err:
            raise ValueError(f"tune.space {param.name!r}: {value!r} gives settings that cannot train: {err}") from None
