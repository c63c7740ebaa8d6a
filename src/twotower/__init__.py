"""twotower: train, evaluate and serve two-tower (dual-encoder) retrieval models.

The package root stays light: `import twotower` loads nothing heavy. The exact top-K scorer (C++)
loads on first use of `twotower.topk` / `twotower.ExactIndex`; torch-based parts (model, losses,
training, `twotower.Recommender`) load on first use or when their modules are imported.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ExactIndex": "twotower.retrieval.exact",
    "available_simd": "twotower.retrieval.exact",
    "topk": "twotower.retrieval.exact",
    "topk_eager": "twotower.retrieval.exact",
    "Recommender": "twotower.retrieval.recommend",
    "UnknownIdError": "twotower.retrieval.recommend",
}

__all__ = [*_LAZY, "__version__"]

# `topk_eager`'s name in earlier READMEs; still importable, no longer listed.
_RENAMED = {"topk_reference": "topk_eager"}


def __getattr__(name: str) -> Any:
    name = _RENAMED.get(name, name)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'twotower' has no attribute {name!r}")
