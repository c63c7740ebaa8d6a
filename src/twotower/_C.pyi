"""Type stub of twotower's C++ extension (csrc/bindings.cpp): the exact top-K scorer.

Arrays are NumPy arrays (or anything exposing a float32 / int buffer): queries [B, D] and items [N, D]
float32; exclusion lists as CSR (indptr int64 [B + 1], indices int32 or int64). Users call it
through `twotower.topk` and `twotower.ExactIndex` (`twotower.retrieval.exact`), which check the
inputs; tests/retrieval/test_c_stub.py keeps this file in step with the module.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

_Floats = npt.ArrayLike
_Result = (
    tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
    | tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], dict[str, Any]]
)

def topk(
    queries: _Floats,
    items: _Floats,
    k: int,
    *,
    exclude_indptr: npt.ArrayLike | None = None,
    exclude_indices: npt.ArrayLike | None = None,
    num_threads: int | None = None,
    simd: str = "",
    report: bool = False,
) -> _Result:
    """Exact top-k of queries [B, D] against items [N, D]: (scores [B, k], ids [B, k]), plus the
    screening report with report=True."""

class PackedItems:
    """An item matrix packed once into the scan kernels' panel layout."""

    def __init__(self, items: _Floats, *, num_threads: int | None = None, screening: bool | None = None) -> None: ...
    def search(
        self,
        queries: _Floats,
        k: int,
        *,
        exclude_indptr: npt.ArrayLike | None = None,
        exclude_indices: npt.ArrayLike | None = None,
        num_threads: int | None = None,
        simd: str = "",
        report: bool = False,
    ) -> _Result: ...
    @property
    def num_items(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def screening(self) -> bool: ...

def available_simd() -> list[str]:
    """SIMD paths this CPU supports, best first."""

def default_num_threads() -> int:
    """Threads a call with num_threads=None uses: OMP_NUM_THREADS when set, else every core."""

def selected_simd(simd: str = "") -> str:
    """The SIMD path a call with this `simd` argument would use (honours TWOTOWER_SIMD)."""
