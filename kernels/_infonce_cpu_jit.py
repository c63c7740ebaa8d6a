"""Numba kernel behind `twotower.kernels.infonce_cpu`: the logits of a row block, in place, in one
pass (`cache=True`, `nogil=True`).

A block holds rows [r0, r0 + rows) of S = Q Cᵀ (raw dot products, from torch's GEMM) against all N
candidates; candidate r is row r's positive. Each entry becomes S * inv_t - lq[j] (the log-q
correction; zeros when off), or -inf when masked. Masks compare small integer codes (see
`infonce_cpu._Side`): candidate j is masked for row r when `cand_item[j] == row_item[r]` (the same
item as the row's positive: an accidental hit) or `cand_query[j] == row_query[r]` (an in-batch
candidate of the same user). Disabled masks use codes that never match. The positive itself is then
set apart: never masked, and corrected only when `correct_positive`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# fastmath without "ninf": masked logits are -inf on purpose.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def block_logits(s, r0, inv_t, lq, cand_item, row_item, cand_query, row_query, positive_lq):
    rows, n = s.shape
    minus_inf = -np.inf
    for i in range(rows):
        r = r0 + i
        raw_positive = s[i, r]
        ri, rq = row_item[r], row_query[r]
        for j in range(n):
            v = s[i, j] * inv_t - lq[j]
            keep = (cand_item[j] != ri) & (cand_query[j] != rq)
            s[i, j] = v if keep else minus_inf
        s[i, r] = raw_positive * inv_t - positive_lq[r]
