"""Exact top-K retrieval by inner product, with per-query exclusion (the C++ scorer).

`topk` scores a batch of queries against a raw item matrix; `ExactIndex` packs the item matrix once
and answers many batches. Both never materialise the [B, N] score matrix: a register-blocked kernel
(AVX-512, AVX2+FMA or portable, picked at run time) keeps each query's k best in a bounded heap.

On CPUs with AVX-512 VNNI the default path screens first: an int8 copy of the items (one scale per
row) is scanned at ~2.5x the multiply-adds per cycle, giving each score a rigorous lower and upper
bound; only items whose upper bound reaches the k-th best lower bound are rescored in float32, in
the same order of operations as the AVX-512 kernel. The answer is therefore the float32 answer, ids
and scores bit for bit, not an approximation; a query whose candidates do not fit a bounded list
(near-identical items) is rescanned in float32. `ExactIndex` stores the codes when the CPU can
screen (about 1.25 x N x D x 4 bytes: codes plus a float32 copy for rescoring). The default path
screens where it was measured to be faster (at least 16,384 items and N x D >= 4,000 k ln(N / k);
for `topk` on a raw matrix, which is coded on the fly, from 128 queries); simd="avx512_vnni"
screens wherever it applies.

Order of results: higher score first, then lower item id (so results do not depend on the thread
count); a NaN score ranks after every number, -inf included. Slots that no item can fill (k larger
than the items left after exclusion) hold id -1 and score -inf.

Advanced: `simd` ("avx512_vnni", "avx512", "avx2", "generic") or the TWOTOWER_SIMD environment
variable force a kernel; "avx512" is the same float32 answer without the screening pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower import _C
from twotower.retrieval.exact_eager import topk_eager

__all__ = ["ExactIndex", "available_simd", "topk", "topk_eager"]

Exclude = tuple[Any, Any]


def _host_array(x: Any) -> Any:
    """CPU torch tensors (even ones that require grad) become NumPy views; anything else passes."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return x


def _split_exclude(exclude: Exclude | None) -> tuple[Any, Any]:
    if exclude is None:
        return None, None
    if not isinstance(exclude, (tuple, list)) or len(exclude) != 2:
        raise TypeError("exclude must be a pair (indptr, indices) in CSR form, e.g. (csr.indptr, csr.indices)")
    return _host_array(exclude[0]), _host_array(exclude[1])


def topk(
    queries: Any,
    items: Any,
    k: int,
    *,
    exclude: Exclude | None = None,
    num_threads: int | None = None,
    simd: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k items for each query by inner product.

    Args:
        queries: [B, D] float32 (NumPy, CPU torch tensor, or any buffer); any strides.
        items: [N, D] float32; any strides (packed block by block on the fly).
        k: results per query; k > N is allowed and pads.
        exclude: optional per-query CSR `(indptr int64 [B+1], indices int32/int64)` of item ids to skip,
            e.g. the items each user already interacted with. Unsorted rows and duplicates are fine.
        num_threads: OpenMP threads (default: OMP_NUM_THREADS or all cores).
        simd: force a kernel ("avx512_vnni", "avx512", "avx2", "generic"); default: the best this CPU has.

    Returns:
        (scores float32 [B, k] sorted descending, ids int64 [B, k]).

    Example:
        >>> import numpy as np, twotower
        >>> items = np.eye(3, dtype=np.float32)
        >>> scores, ids = twotower.topk(np.array([[0.1, 0.9, 0.5]], np.float32), items, 2)
        >>> ids.tolist()
        [[1, 2]]
    """
    indptr, indices = _split_exclude(exclude)
    return _C.topk(
        _host_array(queries), _host_array(items), k,
        exclude_indptr=indptr, exclude_indices=indices, num_threads=num_threads, simd=simd or "",
    )


class ExactIndex:
    """An item matrix packed once for repeated exact top-k searches (evaluation, serving).

    Packing copies the items into the kernel's layout, so later searches stream memory in order and
    skip the per-call packing that `topk` does: float32 panels (N * D * 4 bytes), or, with
    `screening` (the default where the CPU has AVX-512 VNNI), int8 codes for the screening pass plus
    a row-major float32 copy for rescoring (about N * D * 5 bytes). Both give the same results.

    Example:
        >>> import numpy as np, twotower
        >>> index = twotower.ExactIndex(np.eye(4, dtype=np.float32))
        >>> index.search(np.array([[0, 0, 1, 0]], np.float32), 1)[1].tolist()
        [[2]]
    """

    def __init__(self, items: Any, *, num_threads: int | None = None, screening: bool | None = None) -> None:
        self._packed = _C.PackedItems(_host_array(items), num_threads=num_threads, screening=screening)

    @property
    def screening(self) -> bool:
        """Whether the items are stored for the int8 screening pass (see the module docstring)."""
        return self._packed.screening

    @property
    def num_items(self) -> int:
        return self._packed.num_items

    @property
    def dim(self) -> int:
        return self._packed.dim

    @property
    def nbytes(self) -> int:
        return self._packed.nbytes

    def __len__(self) -> int:
        return self.num_items

    def __repr__(self) -> str:
        return f"ExactIndex(num_items={self.num_items}, dim={self.dim}, screening={self.screening})"

    def search(
        self,
        queries: Any,
        k: int,
        *,
        exclude: Exclude | None = None,
        num_threads: int | None = None,
        simd: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as `topk(queries, items, k, ...)` for the packed items."""
        indptr, indices = _split_exclude(exclude)
        return self._packed.search(
            _host_array(queries), k,
            exclude_indptr=indptr, exclude_indices=indices, num_threads=num_threads, simd=simd or "",
        )


def available_simd() -> list[str]:
    """The kernels this CPU can run, best first (always ends with "generic")."""
    return list(_C.available_simd())
