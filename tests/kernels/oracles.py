"""Test oracles of the tensor and grouping kernels: each op written from its definition, in float64,
row by row (Python loops over rows or entries, one small vector operation inside), sharing no code
with `kernels/`. Both the kernel and its eager fallback (`kernels/<op>_eager.py`) answer to these.

Differentiable ones return float64 tensors built through autograd-visible operations, so a test gets
the gradient of the definition by calling `.backward()` on the oracle's output.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _f64(x: Tensor) -> Tensor:
    """float64 view of a leaf for the oracle: the same values, autograd still reaches the leaf."""
    return x.double() if x.dtype != torch.float64 else x


# --- tensor kernels ---------------------------------------------------------------------------------


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """y[i] = x[i] / max(||x[i]||, eps); below eps the divisor is the constant eps (derivative g / eps)."""
    rows = []
    for row in _f64(x):
        norm = math.sqrt(sum(v * v for v in row.tolist()))
        rows.append(row / eps if norm < eps else row / torch.linalg.vector_norm(row))
    return torch.stack(rows) if rows else _f64(x).clone()


def gather_scores(query: Tensor, vectors: Tensor, index: Tensor) -> Tensor:
    """scores[b, j] = query[b] · vectors[index[b, j]], one row b at a time."""
    q, v = _f64(query), _f64(vectors)
    return torch.stack([v[index[b].long()] @ q[b] for b in range(q.shape[0])])


def embedding_scores(query: Tensor, weight: Tensor, ids: Tensor, index: Tensor, *, normalize: bool,
                     eps: float = 1e-12) -> Tensor:
    """scores[b, j] = query[b] · f(weight[ids[index[b, j]]]), f the L2 normalisation or the identity."""
    rows = _f64(weight)[ids.long()]
    return gather_scores(query, l2_normalize(rows, eps) if normalize else rows, index)


def bag_mean(table: Tensor, values: Tensor, offsets: Tensor, keep: Tensor | None = None) -> Tensor:
    """out[b] = mean of table[values[e]] over the kept entries e of bag b; zeros for an empty bag."""
    t = _f64(table)
    out = []
    for b in range(offsets.shape[0] - 1):
        rows = [int(values[e]) for e in range(int(offsets[b]), int(offsets[b + 1])) if keep is None or bool(keep[e])]
        out.append(t[rows].sum(0) / len(rows) if rows else t.new_zeros(t.shape[1]))
    return torch.stack(out) if out else t.new_zeros(0, t.shape[1])


def sparse_adam(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, grads: Tensor, *, step: int,
                lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                decoupled: bool = True, grad_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New (param, exp_avg, exp_avg_sq) as float64 arrays: the gradients of each distinct row summed,
    then Adam (L2 decay in the gradient) or AdamW (decoupled decay) on that row, a row at a time.
    Rows not in `rows` keep their values; the inputs are not changed."""
    p, m, v = (t.detach().double().numpy().copy() for t in (param, exp_avg, exp_avg_sq))
    summed: dict[int, np.ndarray] = {}
    for r, g in zip(rows.tolist(), grads.detach().double().numpy(), strict=True):
        summed[r] = summed.get(r, 0.0) + g
    for r, g_sum in summed.items():
        g = g_sum * grad_scale
        if weight_decay and not decoupled:
            g = g + weight_decay * p[r]
        m[r] = beta1 * m[r] + (1 - beta1) * g
        v[r] = beta2 * v[r] + (1 - beta2) * g * g
        if weight_decay and decoupled:
            p[r] *= 1 - lr * weight_decay
        m_hat, v_hat = m[r] / (1 - beta1**step), v[r] / (1 - beta2**step)
        p[r] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


def table_scores(query_table: Tensor, item_table: Tensor, query_ids: Tensor, item_ids: Tensor, index: Tensor, *,
                 normalize: bool, eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """(scores [B, C], query vectors [B, D], item vectors [U, D]): row q_b = f(query_table[query_ids[b]]),
    item u = f(item_table[item_ids[u]]), scores[b, j] = q_b · item index[b, j]."""
    def vectors(table: Tensor, ids: Tensor) -> Tensor:
        rows = _f64(table)[ids.long()]
        return l2_normalize(rows, eps) if normalize else rows

    query, items = vectors(query_table, query_ids), vectors(item_table, item_ids)
    return gather_scores(query, items, index), query, items


def table_gradients(query_table: Tensor, item_table: Tensor, query_ids: Tensor, item_ids: Tensor, index: Tensor,
                    grad: Tensor, *, normalize: bool, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Dense float64 gradients of sum(grad * scores) in both tables (zero rows where nothing was read)."""
    tables = [t.detach().double().requires_grad_() for t in (query_table, item_table)]
    scores, _, _ = table_scores(*tables, query_ids, item_ids, index, normalize=normalize, eps=eps)
    return torch.autograd.grad((scores * grad.double()).sum(), tables)


# --- InfoNCE ----------------------------------------------------------------------------------------


def accidental_hits(B: int, M: int, *, query_ids: Tensor | None, item_ids: Tensor | None,
                    extra_ids: Tensor | None, extra_query_ids: Tensor | None = None) -> list[list[bool]]:
    """hits[i][j]: candidate j leaves row i's softmax. In-batch j != i: same item as row i's positive
    or same query; extra j = B + m: extra_ids[m] is row i's positive item, or extra_query_ids[m] is
    row i's query (another process's row of the same user). The positive never leaves."""
    qid = None if query_ids is None else query_ids.tolist()
    iid = None if item_ids is None else item_ids.tolist()
    eid = None if extra_ids is None else extra_ids.tolist()
    eqid = None if extra_query_ids is None else extra_query_ids.tolist()
    hits = [[False] * (B + M) for _ in range(B)]
    for i in range(B):
        for j in range(B + M):
            if j < B:
                same_item = iid is not None and iid[j] == iid[i]
                same_query = qid is not None and qid[j] == qid[i]
                hits[i][j] = j != i and (same_item or same_query)
            else:
                same_item = eid is not None and iid is not None and eid[j - B] == iid[i]
                same_query = eqid is not None and qid is not None and eqid[j - B] == qid[i]
                hits[i][j] = same_item or same_query
    return hits


def infonce(q: Tensor, k: Tensor, *, temperature: float | Tensor, extra: Tensor | None = None,
            logq: Tensor | None = None, logq_extra: Tensor | None = None, correct_positive: bool = True,
            query_ids: Tensor | None = None, item_ids: Tensor | None = None, extra_ids: Tensor | None = None,
            reduction: str = "mean", symmetric: bool = False, extra_query_ids: Tensor | None = None,
            masked_pairs: Tensor | None = None) -> Tensor:
    """InfoNCE from its definition, row by row in float64: loss_i = log sum_{j kept} exp(s_ij) - s_ii,
    s_ij = q_i · c_j / tau - logq_j (the positive's correction only if `correct_positive`); with
    `symmetric`, plus the item -> query term of column i over the B queries (no logQ). A (row, column)
    pair of `masked_pairs` drops that candidate from that row, unless it is the row's positive."""
    cand = _f64(k) if extra is None or extra.shape[0] == 0 else torch.cat([_f64(k), _f64(extra)])
    B, M = q.shape[0], cand.shape[0] - k.shape[0]
    tau = _f64(temperature) if isinstance(temperature, Tensor) else float(temperature)
    logq_all = ([] if logq is None else logq.double().tolist()) + ([] if logq_extra is None or not M
                                                                  else logq_extra.double().tolist())
    hits = accidental_hits(B, M, query_ids=query_ids, item_ids=item_ids, extra_ids=extra_ids if M else None,
                           extra_query_ids=extra_query_ids if M else None)
    for i, j in ([] if masked_pairs is None else masked_pairs.tolist()):
        hits[i][j] = hits[i][j] or j != i
    u = torch.stack([cand @ _f64(q)[i] / tau for i in range(B)])  # u[i]: row i's raw logits [B + M]
    losses = []
    for i in range(B):
        correction = [0.0 if not logq_all or (j == i and not correct_positive) else logq_all[j] for j in range(B + M)]
        s = u[i] - torch.tensor(correction, dtype=torch.float64, device=u.device)
        kept = [j for j in range(B + M) if not hits[i][j]]
        loss = torch.logsumexp(s[kept], 0) - s[i]
        if symmetric:
            queries = [r for r in range(B) if not hits[r][i]]  # column i over the queries, same hits
            loss = loss + torch.logsumexp(u[queries, i], 0) - u[i, i]
        losses.append(loss)
    out = torch.stack(losses)
    return {"mean": out.mean, "sum": out.sum, "none": lambda: out}[reduction]()


# --- grouping and distinct ----------------------------------------------------------------------------


def distinct(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values in order of first occurrence, inverse with values[inverse] == ids), by a dict."""
    position: dict[int, int] = {}
    inverse = [position.setdefault(int(x), len(position)) for x in np.asarray(ids).tolist()]
    return np.array(list(position), dtype=np.int64), np.array(inverse, dtype=np.int64)


def stable_group_order(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Positions grouped by key in increasing key order, each group in input order."""
    groups: list[list[int]] = [[] for _ in range(num_keys)]
    for position, key in enumerate(np.asarray(keys).tolist()):
        groups[key].append(position)
    return np.array([p for group in groups for p in group], dtype=np.int64)


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the distinct (row, col) pairs, each row's columns ascending."""
    per_row: list[set[int]] = [set() for _ in range(num_rows)]
    for r, c in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True):
        per_row[r].add(c)
    indptr = np.cumsum([0] + [len(s) for s in per_row], dtype=np.int64)
    return indptr, np.array([c for s in per_row for c in sorted(s)], dtype=np.int32)
