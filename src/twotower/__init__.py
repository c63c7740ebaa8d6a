"""twotower: train, evaluate and serve two-tower (dual-encoder) retrieval models.

The package root stays light: it imports NumPy and the C++ scorer only. Torch-based parts
(model, losses, training) and the kernels load when their modules are imported.
"""

__version__ = "0.1.0"

from twotower.scorer import ExactIndex, topk, topk_reference

__all__ = ["ExactIndex", "topk", "topk_reference", "__version__"]
