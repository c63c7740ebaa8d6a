"""The model: towers, the two-tower module, and its files.

    towers.py      one tower: id embedding + side features (+ pooled history) -> MLP -> vector
    two_tower.py   `TwoTowerModel`: both towers, the scoring, the temperature it trained with
    io.py          `save_model` / `load_model`: config.json + model.safetensors, the weights checksum
    model_dir.py   the directory a finished run leaves (model, vocabularies, seen items, results)

The names below load on first use, so that importing one module does not load the others; the
settings classes are re-exported so that `twotower.model` is the one import a trainer needs.
"""

from twotower._lazy import lazy_exports

_LAZY = {
    "FeatureLayout": "twotower.settings.model",
    "ModelConfig": "twotower.settings.model",
    "TowerConfig": "twotower.settings.model",
    "TowerInputs": "twotower.model.towers",
    "TwoTowerModel": "twotower.model.two_tower",
    "inner_product_form": "twotower.retrieval.scoring",
    "load_model": "twotower.model.io",
    "save_model": "twotower.model.io",
}

__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
