"""twotower: train, evaluate and serve two-tower (dual-encoder) retrieval models.

The package root stays light: `import twotower` loads nothing heavy. The exact top-K scorer (C++)
loads on first use of `twotower.topk` / `twotower.ExactIndex`; torch-based parts (model, losses,
training, `twotower.Recommender`) load on first use or when their modules are imported.
"""

from twotower._lazy import lazy_exports

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

# `topk_reference`: `topk_eager`'s name in earlier READMEs, still importable, no longer listed.
__getattr__, __dir__ = lazy_exports(globals(), {**_LAZY, "topk_reference": "twotower.retrieval.exact:topk_eager"})
