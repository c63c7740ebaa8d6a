"""What a resumed run must share with the checkpoint it resumes (and a tuning study with the
trials it continues): every setting but those that change neither what is trained nor what is
selected."""

from __future__ import annotations

import json
from typing import Any

from twotower.settings import TrainConfig
from twotower.settings.data import DataSource

__all__ = ["COSMETIC", "changed_settings", "semantic_settings"]


# Settings that do not change what is trained or selected: a resumed run may differ in them (so a
# finished run can be resumed with --train.refit to add its refit, or with --model.graph_filter to
# add the graph filter's blend, which comes after training).
# (eval.exclude concerns the test ranking only; unknown_targets and repeat_targets change the
# validation metric, hence the best epoch and early stopping. Where the data files are does not
# matter: the data fingerprint, checked apart, says whether they hold the same data.)
COSMETIC = {"train": ("progress", "num_threads", "keep_checkpoints", "fused_step", "checkpoint_every",
                       "keep_optimizer_state", "refit", "tune_allocator", "distributed_eval"),
             "eval": ("exclude",), "data": DataSource.FILES,
             "model": ("graph_filter", "graph_filter_weights", "graph_filter_sharpening", "graph_filter_rank",
                       "graph_filter_ideal_weight")}


def semantic_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint; a config saved before a section
    existed reads with that section's defaults."""
    try:
        config = TrainConfig.from_dict(config).to_dict()
    except (TypeError, ValueError):
        pass  # compared as saved: the comparison then names the difference as different settings
    config = json.loads(json.dumps(config))  # tuples as lists, as a saved config has them
    return {**config, **{section: {k: v for k, v in config.get(section, {}).items() if k not in names}
                         for section, names in COSMETIC.items()}}


def changed_settings(saved: Any, given: Any, name: str = "") -> list[str]:
    """'section.key: saved -> given' for every setting that differs (nested sections walked)."""
    if isinstance(saved, dict) and isinstance(given, dict):
        changed = []
        for key in sorted(set(saved) | set(given), key=str):
            where = f"{name}.{key}" if name else str(key)
            changed += changed_settings(saved.get(key, "(unset)"), given.get(key, "(unset)"), where)
        return changed
    return [] if saved == given else [f"{name}: {saved!r} -> {given!r}"]
