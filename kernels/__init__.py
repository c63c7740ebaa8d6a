"""twotower.kernels: Numba samplers and Triton kernels, usable without the rest of twotower.

Submodules are imported lazily so that `import twotower.kernels` needs neither Numba nor Triton:
`twotower.kernels.samplers` needs Numba, `twotower.kernels.infonce` needs torch (and Triton on CUDA
or under TRITON_INTERPRET=1). Nothing here imports from `twotower` itself.
"""

import importlib
from typing import Any

_SUBMODULES = ("samplers", "samplers_reference", "frequency", "infonce", "infonce_reference", "gather_scores",
               "gather_scores_reference", "distinct", "distinct_reference", "sparse_adam", "sparse_adam_reference",
               "l2_normalize", "embedding_scores", "embedding_scores_reference", "grouping", "grouping_reference",
               "table_step", "table_step_reference", "bag_mean", "bag_mean_reference")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
