"""The Triton kernels of the fused InfoNCE loss (FlashAttention-2 layout, no atomics); their tile
sizes come from `infonce_triton_tiles`, their launches from `infonce_triton`.

Notation (all kernels). Anchors A [B, D] (queries), in-batch candidates P [B, D] (row i's positive is
P[i]), extra candidates E [M, D]; N = B + M candidates C = P ++ E; temperature tau.

    u_ij = <A_i, C_j> / tau                      uncorrected logit
    s_ij = u_ij - logq_j    (masked: -inf)       logit in the row softmax (logq_i skipped on the
                                                 diagonal when correct_positive=False)
    lse_i = log sum_j exp(s_ij)                  row log-sum-exp, fp32, the only thing saved (in
                                                 base 2, lse_i * log2(e), so that backward's
                                                 exp2(t - lse2) sees the forward's exact numbers)
    loss_i = lse_i - s_ii

Logits live in base 2 inside the kernels: t = s * log2(e), computed as <A_i, C_j> * (log2(e) / tau)
- logq_j * log2(e), so every exponential is one exp2. The logits matrix S is never written.

Backward. With g_i the upstream gradient of loss_i and p_ij = exp(s_ij - lse_i):

    dS_ij = g_i (p_ij - [i == j])                d loss / d s_ij, recomputed tile by tile
    dA_i  = sum_j dS_ij C_j / tau                row pass  (_bwd_dq_kernel)
    dC_j  = sum_i dS_ij A_i / tau                column pass (_bwd_dc_kernel, once for P, once for E)
    dtau  = sum_ij dS_ij d s_ij / d tau = -(1/tau) sum_ij dS_ij u_ij
            (logq_j does not depend on tau), accumulated per row in the row pass as rowdot_i =
            sum_j dS_ij u_ij and summed on the host in a fixed order.

Work: forward 1 GEMM-equivalent (A Cᵀ), row pass 2 (recomputed S, dS C), column pass 2 (recomputed
Sᵀ, dSᵀ A): 10·B·N·D FLOPs in all, O(B + N) extra memory. When B alone does not fill the GPU the
streamed axis is split over several programs per block, whose partial (max, sum) pairs or fp32
gradient partials are combined in a fixed order: results are bitwise reproducible run to run.

Symmetric (CLIP-style) adds the item -> query direction over the in-batch block: column j softmaxes
over the B anchors with the uncorrected logits u (no logQ; extra columns take no part), lse'_j is
saved, and the in-batch block's dS gains g_j (p'_ij - [i == j]) with p'_ij = exp(u_ij - lse'_j).
The same kernels compute lse' by swapping the roles of A and P.

Masks (accidental hits, shared queries) set logits to -inf; the online log-sum-exp guards the
all-masked-so-far case so that -inf - -inf never forms a NaN, and the positive is never masked, so
every lse is finite (a row whose negatives are all masked has lse_i = s_ii and loss 0).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# The same constants as compile-time values for the kernels (plain globals are not visible there).
_K_LOG2E = tl.constexpr(LOG2E)
_K_LN2 = tl.constexpr(LN2)


# ---------------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _mma(a, b, acc, INTERPRET: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b in fp32. The interpreter's bf16 dot is broken (triton issue 11584): there both
    operands go to fp32 first, which gives the same numbers as fp16/bf16 tensor cores with fp32
    accumulation (products of two half-precision values are exact in fp32)."""
    if INTERPRET:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _tile_scores(
    x,
    X_ptr,
    offs_x,
    x_ok,
    stride_x,
    Y_ptr,
    offs_y,
    y_ok,
    stride_y,
    D,
    BLOCK_X: tl.constexpr,
    BLOCK_Y: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    INTERPRET: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Returns (X[offs_x] @ Y[offs_y]ᵀ as [BLOCK_X, BLOCK_Y] fp32, the Y tile [BLOCK_Y, BLOCK_D]).

    With SINGLE_D, `x` is the program's resident [BLOCK_X, BLOCK_D] tile of X and the returned Y tile
    covers all of D (the caller reuses it for its gradient GEMM). Otherwise D is streamed in BLOCK_D
    chunks (`x` is unused) and the second value is a placeholder.
    """
    offs_d = tl.arange(0, BLOCK_D)
    if SINGLE_D:
        y = tl.load(
            Y_ptr + offs_y[:, None] * stride_y + offs_d[None, :],
            mask=y_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
        acc = _mma(x, tl.trans(y), tl.zeros([BLOCK_X, BLOCK_Y], dtype=tl.float32), INTERPRET, PRECISION)
    else:
        acc = tl.zeros([BLOCK_X, BLOCK_Y], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            x_c = tl.load(
                X_ptr + offs_x[:, None] * stride_x + dd[None, :],
                mask=x_ok[:, None] & (dd[None, :] < D),
                other=0.0,
            )
            y_c = tl.load(
                Y_ptr + offs_y[:, None] * stride_y + dd[None, :],
                mask=y_ok[:, None] & (dd[None, :] < D),
                other=0.0,
            )
            acc = _mma(x_c, tl.trans(y_c), acc, INTERPRET, PRECISION)
        y = tl.zeros([1], dtype=tl.float32)  # placeholder: callers reload the chunk they need
    return acc, y


@triton.jit
def _online_lse(m_i, l_i, t):
    """One step of the base-2 online log-sum-exp over a [BLOCK_M, BLOCK_N] tile `t` (may hold -inf)."""
    m_new = tl.maximum(m_i, tl.max(t, axis=1))
    # A row masked so far has m_new = -inf: shift by 0 instead, so exp2(-inf - 0) = 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(t - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return m_new, l_i


@triton.jit
def _inbatch_keep(
    offs_r, offs_c, r_ok, c_ok, IDS_ptr, QIDS_ptr, HAS_IDS: tl.constexpr, HAS_QIDS: tl.constexpr
):
    """[R, C] bool: which in-batch (anchor r, candidate c) pairs enter the softmax. The relation is
    symmetric, so it serves both directions and both orientations of a tile."""
    diag = offs_r[:, None] == offs_c[None, :]
    keep = r_ok[:, None] & c_ok[None, :]
    if HAS_IDS:
        id_r = tl.load(IDS_ptr + offs_r, mask=r_ok, other=0)
        id_c = tl.load(IDS_ptr + offs_c, mask=c_ok, other=0)
        keep = keep & ((id_r[:, None] != id_c[None, :]) | diag)
    if HAS_QIDS:
        qid_r = tl.load(QIDS_ptr + offs_r, mask=r_ok, other=0)
        qid_c = tl.load(QIDS_ptr + offs_c, mask=c_ok, other=0)
        keep = keep & ((qid_r[:, None] != qid_c[None, :]) | diag)
    return keep, diag


@triton.jit
def _extra_keep(
    offs_r, offs_c, r_ok, c_ok, IDS_ptr, EIDS_ptr, QIDS_ptr, EQIDS_ptr, HAS_EIDS: tl.constexpr,
    HAS_EQIDS: tl.constexpr
):
    """[R, C] bool: which (anchor r, extra c) pairs enter the softmax: not an extra equal to the
    row's positive (HAS_EIDS), not an extra that is another process's row of the same query
    (HAS_EQIDS)."""
    keep = r_ok[:, None] & c_ok[None, :]
    if HAS_EIDS:
        id_r = tl.load(IDS_ptr + offs_r, mask=r_ok, other=0)
        id_e = tl.load(EIDS_ptr + offs_c, mask=c_ok, other=0)
        keep = keep & (id_r[:, None] != id_e[None, :])
    if HAS_EQIDS:
        qid_r = tl.load(QIDS_ptr + offs_r, mask=r_ok, other=0)
        qid_e = tl.load(EQIDS_ptr + offs_c, mask=c_ok, other=0)
        keep = keep & (qid_r[:, None] != qid_e[None, :])
    return keep


# ---------------------------------------------------------------------------------------------------
# Forward: row log-sum-exp and per-row loss
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_kernel(
    A_ptr, P_ptr, E_ptr,  # [B, D], [B, D], [M, D] (E unused unless HAS_EXTRA)
    LQP_ptr, LQE_ptr,  # [B], [M] log sampling probabilities (unused unless HAS_LOGQ)
    IDS_ptr, QIDS_ptr, EIDS_ptr,  # [B] item ids, [B] query ids, [M] extra ids (each optional)
    EQIDS_ptr,  # [M] the query each extra belongs to (HAS_EQIDS: other processes' in-batch rows)
    TEMP_ptr,  # 0-d fp32 temperature
    LSE_ptr, LOSS_ptr,  # [B] fp32 outputs (one split): base-2 lse, natural-log loss
    PART_ptr,  # [3, n_splits, B] fp32 partial (max2, sum, positive) outputs (IS_SPLIT)
    B, M, D,
    stride_a, stride_p, stride_e,
    cols_per_split, n_splits,
    HAS_EXTRA: tl.constexpr, HAS_LOGQ: tl.constexpr, CORRECT_POS: tl.constexpr,
    HAS_IDS: tl.constexpr, HAS_QIDS: tl.constexpr, HAS_EIDS: tl.constexpr, HAS_EQIDS: tl.constexpr,
    IS_SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr,
    INTERPRET: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = offs_m < B
    offs_d = tl.arange(0, BLOCK_D)
    scale = _K_LOG2E / tl.load(TEMP_ptr).to(tl.float32)  # log2(e) / tau folded into one multiply
    a = 0.0
    if SINGLE_D:  # the whole D of this row block stays on chip for the entire column sweep
        a = tl.load(
            A_ptr + offs_m[:, None] * stride_a + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    pos = tl.zeros([BLOCK_M], dtype=tl.float32)

    # This program's share of the concatenated candidate axis [0, B + M).
    col_lo = pid_s * cols_per_split
    col_hi = tl.minimum(col_lo + cols_per_split, B + M)

    # 1. In-batch candidates P: columns [col_lo, min(col_hi, B)).
    k_hi = tl.minimum(col_hi, B)
    for n0 in range(col_lo, k_hi, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = offs_n < k_hi
        acc, _unused = _tile_scores(
            a, A_ptr, offs_m, row_ok, stride_a, P_ptr, offs_n, col_ok, stride_p, D,
            BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, INTERPRET, PRECISION,
        )
        t = acc * scale
        keep, diag = _inbatch_keep(offs_m, offs_n, row_ok, col_ok, IDS_ptr, QIDS_ptr, HAS_IDS, HAS_QIDS)
        if HAS_LOGQ:
            lq = tl.load(LQP_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32) * _K_LOG2E
            if CORRECT_POS:
                t = t - lq[None, :]
            else:
                t = t - tl.where(diag, 0.0, lq[None, :])
        t = tl.where(keep, t, float("-inf"))
        # 2. The positive logit comes from the same accumulator, on the tile that holds the diagonal.
        if (n0 < pid_m * BLOCK_M + BLOCK_M) & (n0 + BLOCK_N > pid_m * BLOCK_M):
            pos += tl.sum(tl.where(diag & keep, t, 0.0), axis=1)
        m_i, l_i = _online_lse(m_i, l_i, t)

    # 3. Extra candidates E: columns [max(col_lo, B), col_hi) of the concatenated axis.
    if HAS_EXTRA:
        e_lo = tl.maximum(col_lo, B) - B
        e_hi = col_hi - B
        for n0 in range(e_lo, e_hi, BLOCK_N):
            offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = offs_n < e_hi
            acc, _unused = _tile_scores(
                a, A_ptr, offs_m, row_ok, stride_a, E_ptr, offs_n, col_ok, stride_e, D,
                BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, INTERPRET, PRECISION,
            )
            t = acc * scale
            if HAS_LOGQ:
                lq = tl.load(LQE_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32) * _K_LOG2E
                t = t - lq[None, :]
            keep = _extra_keep(offs_m, offs_n, row_ok, col_ok, IDS_ptr, EIDS_ptr, QIDS_ptr, EQIDS_ptr,
                               HAS_EIDS, HAS_EQIDS)
            t = tl.where(keep, t, float("-inf"))
            m_i, l_i = _online_lse(m_i, l_i, t)

    if not IS_SPLIT:
        lse2 = m_i + tl.log2(tl.where(row_ok, l_i, 1.0))  # padding rows: avoid log2(0)
        tl.store(LSE_ptr + offs_m, lse2, mask=row_ok)
        tl.store(LOSS_ptr + offs_m, (lse2 - pos) * _K_LN2, mask=row_ok)
    else:
        part = PART_ptr + pid_s * B + offs_m
        tl.store(part, m_i, mask=row_ok)
        tl.store(part + n_splits * B, l_i, mask=row_ok)
        tl.store(part + 2 * n_splits * B, pos, mask=row_ok)


@triton.jit
def _fwd_combine_kernel(PART_ptr, LSE_ptr, LOSS_ptr, B, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """Merges the SPLITS partial (max2, sum, positive) triples of each row in a fixed order:
    lse2 = m + log2(sum_s l_s 2^(m_s - m)), m = max_s m_s. Deterministic; no atomics."""
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    ok = offs < B
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        m = tl.maximum(m, tl.load(PART_ptr + s * B + offs, mask=ok, other=0.0))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l_sum = tl.zeros([BLOCK], dtype=tl.float32)
    pos = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        m_s = tl.load(PART_ptr + s * B + offs, mask=ok, other=0.0)
        l_sum += tl.load(PART_ptr + (SPLITS + s) * B + offs, mask=ok, other=0.0) * tl.exp2(m_s - m_safe)
        pos += tl.load(PART_ptr + (2 * SPLITS + s) * B + offs, mask=ok, other=0.0)
    lse2 = m + tl.log2(tl.where(ok, l_sum, 1.0))
    tl.store(LSE_ptr + offs, lse2, mask=ok)
    tl.store(LOSS_ptr + offs, (lse2 - pos) * _K_LN2, mask=ok)


# ---------------------------------------------------------------------------------------------------
# Backward row pass: dQ (and the per-row temperature term)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dq_kernel(
    Q_ptr, K_ptr, E_ptr,
    LQK_ptr, LQE_ptr,
    IDS_ptr, QIDS_ptr, EIDS_ptr, EQIDS_ptr,
    TEMP_ptr,
    LSE_ptr, LSEC_ptr, G_ptr,  # [B] fp32: row lse2, column lse2 (SYMMETRIC), upstream grad per row
    DQ_ptr,  # [B, D] in q's dtype (one split) or [n_splits, B, D] fp32 partials
    DT_ptr,  # [n_splits, B] fp32 rowdot_i = sum_j dS_ij u_ij (COMPUTE_DTAU)
    B, M, D,
    stride_q, stride_k, stride_e, stride_dq, stride_dq_split,
    cols_per_split,
    HAS_EXTRA: tl.constexpr, HAS_LOGQ: tl.constexpr, CORRECT_POS: tl.constexpr,
    HAS_IDS: tl.constexpr, HAS_QIDS: tl.constexpr, HAS_EIDS: tl.constexpr, HAS_EQIDS: tl.constexpr,
    SYMMETRIC: tl.constexpr, COMPUTE_DTAU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr,
    INTERPRET: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)  # which BLOCK_D chunk of dQ this program writes (0 when SINGLE_D)
    pid_s = tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = offs_m < B
    offs_d = tl.arange(0, BLOCK_D)
    offs_do = pid_d * BLOCK_D + offs_d
    do_ok = offs_do < D
    temp = tl.load(TEMP_ptr).to(tl.float32)
    scale = _K_LOG2E / temp
    a = 0.0
    if SINGLE_D:
        a = tl.load(
            Q_ptr + offs_m[:, None] * stride_q + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
    lse2 = tl.load(LSE_ptr + offs_m, mask=row_ok, other=0.0)
    g = tl.load(G_ptr + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    rowdot = tl.zeros([BLOCK_M], dtype=tl.float32)
    col_lo = pid_s * cols_per_split
    col_hi = tl.minimum(col_lo + cols_per_split, B + M)

    k_hi = tl.minimum(col_hi, B)
    for n0 in range(col_lo, k_hi, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = offs_n < k_hi
        acc, c = _tile_scores(
            a, Q_ptr, offs_m, row_ok, stride_q, K_ptr, offs_n, col_ok, stride_k, D,
            BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, INTERPRET, PRECISION,
        )
        u2 = acc * scale  # u * log2(e)
        keep, diag = _inbatch_keep(offs_m, offs_n, row_ok, col_ok, IDS_ptr, QIDS_ptr, HAS_IDS, HAS_QIDS)
        t = u2
        if HAS_LOGQ:
            lq = tl.load(LQK_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32) * _K_LOG2E
            if CORRECT_POS:
                t = t - lq[None, :]
            else:
                t = t - tl.where(diag, 0.0, lq[None, :])
        t = tl.where(keep, t, float("-inf"))
        onehot = tl.where(diag & keep, 1.0, 0.0)
        # dS_ij = g_i (p_ij - [i == j]), p recomputed from the saved lse.
        ds = g[:, None] * (tl.exp2(t - lse2[:, None]) - onehot)
        if SYMMETRIC:
            lsec2 = tl.load(LSEC_ptr + offs_n, mask=col_ok, other=0.0)
            g_c = tl.load(G_ptr + offs_n, mask=col_ok, other=0.0)
            pc = tl.exp2(tl.where(keep, u2, float("-inf")) - lsec2[None, :])
            ds += g_c[None, :] * (pc - onehot)
        if COMPUTE_DTAU:
            rowdot += tl.sum(ds * u2, axis=1)
        if not SINGLE_D:
            c = tl.load(
                K_ptr + offs_n[:, None] * stride_k + offs_do[None, :],
                mask=col_ok[:, None] & do_ok[None, :],
                other=0.0,
            )
        dq = _mma(ds.to(c.dtype), c, dq, INTERPRET, PRECISION)

    if HAS_EXTRA:
        e_lo = tl.maximum(col_lo, B) - B
        e_hi = col_hi - B
        for n0 in range(e_lo, e_hi, BLOCK_N):
            offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = offs_n < e_hi
            acc, c = _tile_scores(
                a, Q_ptr, offs_m, row_ok, stride_q, E_ptr, offs_n, col_ok, stride_e, D,
                BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D, INTERPRET, PRECISION,
            )
            u2 = acc * scale
            t = u2
            if HAS_LOGQ:
                lq = tl.load(LQE_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32) * _K_LOG2E
                t = t - lq[None, :]
            keep = _extra_keep(offs_m, offs_n, row_ok, col_ok, IDS_ptr, EIDS_ptr, QIDS_ptr, EQIDS_ptr,
                               HAS_EIDS, HAS_EQIDS)
            t = tl.where(keep, t, float("-inf"))
            ds = g[:, None] * tl.exp2(t - lse2[:, None])
            if COMPUTE_DTAU:
                rowdot += tl.sum(ds * u2, axis=1)
            if not SINGLE_D:
                c = tl.load(
                    E_ptr + offs_n[:, None] * stride_e + offs_do[None, :],
                    mask=col_ok[:, None] & do_ok[None, :],
                    other=0.0,
                )
            dq = _mma(ds.to(c.dtype), c, dq, INTERPRET, PRECISION)

    dq = dq / temp
    out = DQ_ptr + pid_s * stride_dq_split + offs_m[:, None] * stride_dq + offs_do[None, :]
    tl.store(out, dq.to(DQ_ptr.dtype.element_ty), mask=row_ok[:, None] & do_ok[None, :])
    if COMPUTE_DTAU:
        if pid_d == 0:
            tl.store(DT_ptr + pid_s * B + offs_m, rowdot * _K_LN2, mask=row_ok)


# ---------------------------------------------------------------------------------------------------
# Backward column pass: dK (IS_EXTRA = False) or dExtra (IS_EXTRA = True)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dc_kernel(
    Q_ptr, C_ptr,  # [B, D] anchors, [NC, D] this launch's candidates (k, or extra)
    LQC_ptr,  # [NC] log sampling probabilities of these candidates (HAS_LOGQ)
    IDS_ptr, QIDS_ptr, CIDS_ptr,  # [B] item ids, [B] query ids, [NC] extra ids (IS_EXTRA)
    CQIDS_ptr,  # [NC] the query each extra belongs to (IS_EXTRA and HAS_CQIDS)
    TEMP_ptr,
    LSE_ptr, LSEC_ptr, G_ptr,
    DC_ptr,  # [NC, D] in the candidates' dtype (one split) or [n_splits, NC, D] fp32 partials
    B, NC, D,
    stride_q, stride_c, stride_dc, stride_dc_split,
    rows_per_split,
    IS_EXTRA: tl.constexpr, HAS_LOGQ: tl.constexpr, CORRECT_POS: tl.constexpr,
    HAS_IDS: tl.constexpr, HAS_QIDS: tl.constexpr, HAS_CIDS: tl.constexpr, HAS_CQIDS: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr,
    INTERPRET: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)  # which share of the anchor rows this program sweeps
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_ok = offs_n < NC
    offs_d = tl.arange(0, BLOCK_D)
    offs_do = pid_d * BLOCK_D + offs_d
    do_ok = offs_do < D
    temp = tl.load(TEMP_ptr).to(tl.float32)
    scale = _K_LOG2E / temp
    c = 0.0
    if SINGLE_D:
        c = tl.load(
            C_ptr + offs_n[:, None] * stride_c + offs_d[None, :],
            mask=col_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
    if HAS_LOGQ:
        lq = tl.load(LQC_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32) * _K_LOG2E
    if IS_EXTRA:
        if HAS_CIDS:
            id_c = tl.load(CIDS_ptr + offs_n, mask=col_ok, other=0)
        if HAS_CQIDS:
            qid_c = tl.load(CQIDS_ptr + offs_n, mask=col_ok, other=0)
    else:
        if SYMMETRIC:
            lsec2 = tl.load(LSEC_ptr + offs_n, mask=col_ok, other=0.0)
            g_c = tl.load(G_ptr + offs_n, mask=col_ok, other=0.0)
    dc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    row_lo = pid_s * rows_per_split
    row_hi = tl.minimum(row_lo + rows_per_split, B)
    # Tiles are oriented [candidates, anchors] so that dC += dSᵀ Q needs no transpose of dS.
    for m0 in range(row_lo, row_hi, BLOCK_M):
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = offs_m < row_hi
        acc, qt = _tile_scores(
            c, C_ptr, offs_n, col_ok, stride_c, Q_ptr, offs_m, row_ok, stride_q, D,
            BLOCK_N, BLOCK_M, BLOCK_D, SINGLE_D, INTERPRET, PRECISION,
        )
        u2 = acc * scale  # [BLOCK_N, BLOCK_M]
        lse2 = tl.load(LSE_ptr + offs_m, mask=row_ok, other=0.0)
        g = tl.load(G_ptr + offs_m, mask=row_ok, other=0.0)
        t = u2
        if IS_EXTRA:
            if HAS_LOGQ:
                t = t - lq[:, None]
            keep = col_ok[:, None] & row_ok[None, :]
            if HAS_CIDS:
                id_r = tl.load(IDS_ptr + offs_m, mask=row_ok, other=0)
                keep = keep & (id_c[:, None] != id_r[None, :])
            if HAS_CQIDS:
                qid_r = tl.load(QIDS_ptr + offs_m, mask=row_ok, other=0)
                keep = keep & (qid_c[:, None] != qid_r[None, :])
            t = tl.where(keep, t, float("-inf"))
            dst = g[None, :] * tl.exp2(t - lse2[None, :])
        else:
            keep, diag = _inbatch_keep(offs_n, offs_m, col_ok, row_ok, IDS_ptr, QIDS_ptr, HAS_IDS, HAS_QIDS)
            if HAS_LOGQ:
                if CORRECT_POS:
                    t = t - lq[:, None]
                else:
                    t = t - tl.where(diag, 0.0, lq[:, None])
            t = tl.where(keep, t, float("-inf"))
            onehot = tl.where(diag & keep, 1.0, 0.0)
            dst = g[None, :] * (tl.exp2(t - lse2[None, :]) - onehot)
            if SYMMETRIC:
                pc = tl.exp2(tl.where(keep, u2, float("-inf")) - lsec2[:, None])
                dst += g_c[:, None] * (pc - onehot)
        if not SINGLE_D:
            qt = tl.load(
                Q_ptr + offs_m[:, None] * stride_q + offs_do[None, :],
                mask=row_ok[:, None] & do_ok[None, :],
                other=0.0,
            )
        dc = _mma(dst.to(qt.dtype), qt, dc, INTERPRET, PRECISION)
    dc = dc / temp
    tl.store(
        DC_ptr + pid_s * stride_dc_split + offs_n[:, None] * stride_dc + offs_do[None, :],
        dc.to(DC_ptr.dtype.element_ty),
        mask=col_ok[:, None] & do_ok[None, :],
    )
