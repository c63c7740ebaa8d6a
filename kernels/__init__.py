"""twotower.kernels: Numba samplers and Triton kernels, usable without the rest of twotower.

Submodules are imported lazily so that `import twotower.kernels` needs neither Numba nor Triton:
`twotower.kernels.samplers` needs Numba, `twotower.kernels.infonce` needs torch (and Triton on CUDA
or under TRITON_INTERPRET=1). Nothing here imports from `twotower` itself.
"""

import importlib
from typing import Any

_KERNELS = ("samplers", "frequency", "infonce", "gather_scores", "distinct", "sparse_adam", "l2_normalize",
            "embedding_scores", "grouping", "table_step", "bag_mean", "adam_replay")
# `<op>_eager`: the same op in eager PyTorch/NumPy (fallback off the kernel's path, benchmark baseline).
_EAGER = tuple(op for op in _KERNELS if op != "frequency")  # the estimator's loops live in samplers_eager
_SUBMODULES = (*_KERNELS, *(f"{op}_eager" for op in _EAGER), "codes")  # codes: the one integer-code check


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
