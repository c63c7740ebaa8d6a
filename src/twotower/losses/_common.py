"""Shared steps of the per-row losses: argument checks, logits, logQ correction, accidental-hit
masks, the masked mean and the reduction. Each step is small and pure so that the losses in
`functional.py` and the selector in `select.py` compose the same pieces."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from twotower.kernels.embedding_scores import embedding_scores
from twotower.kernels.gather_scores import gather_scores
from twotower.kernels.l2_normalize import l2_normalize
from twotower.settings.loss import REDUCTIONS, check_temperature_value

Temperature = float | Tensor


class EmbeddingRows(NamedTuple):
    """Vectors left in an embedding table until they are scored: vector u is f(weight[ids[u]]),
    f = L2 normalisation when `normalize`, else the identity. What an id-only item tower's vectors
    are (see `TwoTowerModel.item_table_rows`); as the `vectors` of `IndexedRows`, per-row losses score
    them with `twotower.kernels.embedding_scores` (lookup, normalisation and scores in one pass).

    Attributes:
        weight: [R, D] table (e.g. an `nn.Embedding`'s weight).
        ids: [U] integer rows of `weight`.
        normalize: L2-normalise each row (cosine scoring).
        sparse: `weight` gets a sparse COO gradient (as `nn.Embedding(sparse=True)`).
    """

    weight: Tensor
    ids: Tensor
    normalize: bool
    sparse: bool = True

    def materialize(self) -> Tensor:
        """The [U, D] vectors as a tensor (differentiable in `weight`)."""
        rows = F.embedding(self.ids, self.weight, sparse=self.sparse)
        return l2_normalize(rows) if self.normalize else rows


class IndexedRows(NamedTuple):
    """Per-row candidates given as rows of a table instead of a [B, n, D] tensor: row b's j-th
    candidate is `vectors[index[b, j]]`. The trainer passes the batch's distinct item vectors this
    way (as a tensor, or as `EmbeddingRows` still in the item table), so losses score them with
    `twotower.kernels.gather_scores` / `embedding_scores` and never materialise (or scatter the
    gradient of) the gathered [B, n, D] copy.

    Attributes:
        vectors: [U, D] vectors (e.g. each distinct item of the batch once), or `EmbeddingRows`.
        index: [B, n] integer rows of `vectors`.
    """

    vectors: Tensor | EmbeddingRows
    index: Tensor

    def table(self) -> Tensor:
        """The [U, D] vectors as a tensor."""
        return self.vectors.materialize() if isinstance(self.vectors, EmbeddingRows) else self.vectors

    def gathered(self) -> Tensor:
        """The [B, n, D] tensor these rows stand for (for code that needs it materialised)."""
        return self.table()[self.index]

    def scores(self, q: Tensor) -> Tensor:
        """[B, n] dot products of each query row with its own rows, without gathering them."""
        v = self.vectors
        if isinstance(v, EmbeddingRows):
            return embedding_scores(q, v.weight.to(q.dtype), v.ids, self.index, normalize=v.normalize, sparse=v.sparse)
        return gather_scores(q, v.to(q.dtype), self.index)


Negatives = Tensor | IndexedRows


def check_reduction(reduction: str) -> None:
    """Reject anything but "mean", "sum" or "none"."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_temperature(temperature: Temperature) -> None:
    """A temperature is a positive finite float, or a 0-d floating tensor (learned; not checked
    for sign, which would need a host sync on every step)."""
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0:
            raise ValueError(f"temperature tensor must be 0-d, got shape {tuple(temperature.shape)}")
        if not temperature.is_floating_point():
            raise TypeError(f"temperature tensor must be floating point, got {temperature.dtype}")
        return
    check_temperature_value(temperature)


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp16/bf16 inputs are scored and reduced in fp32; fp32 and fp64 stay as they are."""
    return torch.promote_types(x.dtype, torch.float32)


def check_query(q: Tensor) -> tuple[int, int]:
    """Check queries `q`: a floating [B, D] tensor with B > 0; return (B, D)."""
    if not isinstance(q, Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if not q.is_floating_point():
        raise TypeError(f"q must be floating point, got {q.dtype}")
    if q.dim() != 2:
        raise ValueError(f"q must be [B, D], got shape {tuple(q.shape)}")
    if q.shape[0] == 0:
        raise ValueError("q is an empty batch (B = 0); there is no loss to compute")
    return q.shape[0], q.shape[1]


def check_vectors(q: Tensor, pos: Tensor) -> tuple[int, int]:
    """Check queries `q` [B, D] and positives `pos` [B, D]; return (B, D)."""
    if not isinstance(pos, Tensor):
        raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
    if not pos.is_floating_point():
        raise TypeError(f"pos must be floating point, got {pos.dtype}")
    if isinstance(q, Tensor) and q.dim() == 2 and pos.shape != q.shape:
        raise ValueError(f"pos must have the shape of q {tuple(q.shape)}, got {tuple(pos.shape)}")
    b, d = check_query(q)
    if pos.dtype != q.dtype or pos.device != q.device:
        raise TypeError(f"pos ({pos.dtype}, {pos.device}) must match q ({q.dtype}, {q.device})")
    return b, d


def check_negatives(q: Tensor, neg: Negatives, name: str = "neg") -> None:
    """Negatives are per-row [B, n, D] (or `IndexedRows`) or shared by every row [M, D]."""
    if isinstance(neg, IndexedRows):
        check_indexed_rows(q, neg, name)
        return
    if not isinstance(neg, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(neg).__name__}")
    if neg.dtype != q.dtype or neg.device != q.device:
        raise TypeError(f"{name} ({neg.dtype}, {neg.device}) must match q ({q.dtype}, {q.device})")
    b, d = q.shape
    per_row_ok = neg.dim() == 3 and neg.shape[0] == b and neg.shape[2] == d
    shared_ok = neg.dim() == 2 and neg.shape[1] == d
    if not (per_row_ok or shared_ok):
        raise ValueError(
            f"{name} must be per-row [B, n, D] = [{b}, n, {d}] or shared [M, D] = [M, {d}], "
            f"got shape {tuple(neg.shape)}"
        )


def check_indexed_rows(q: Tensor, neg: IndexedRows, name: str) -> None:
    """`neg.vectors` [U, D] (or the table of `EmbeddingRows`) matches q's dtype, device and D;
    `neg.index` is integer [B, n]."""
    vectors, index = neg
    what = f"{name}.vectors"
    if isinstance(vectors, EmbeddingRows):
        ids = vectors.ids
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"{what}.ids must be a 1-d integer tensor")
        vectors, what = vectors.weight, f"{what}.weight"
    if not isinstance(vectors, Tensor) or not isinstance(index, Tensor):
        raise TypeError(f"{name}: IndexedRows needs tensors, got {type(vectors).__name__}, {type(index).__name__}")
    if vectors.dtype != q.dtype or vectors.device != q.device:
        raise TypeError(f"{what} ({vectors.dtype}, {vectors.device}) must match q ({q.dtype}, {q.device})")
    b, d = q.shape
    if vectors.dim() != 2 or vectors.shape[1] != d:
        raise ValueError(f"{what} must be [U, D] = [U, {d}], got shape {tuple(vectors.shape)}")
    if index.dim() != 2 or index.shape[0] != b:
        raise ValueError(f"{name}.index must be [B, n] = [{b}, n], got shape {tuple(index.shape)}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"{name}.index must be an integer tensor, got {index.dtype}")
    if index.device != q.device:
        raise TypeError(f"{name}.index is on {index.device}, q on {q.device}")


def check_side(t: Tensor | None, shape: tuple[int, ...], name: str, q: Tensor, integer: bool) -> None:
    """Check an optional ids (`integer`) or log-q (floating) array against its expected shape."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if not integer and not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != q.device:
        raise TypeError(f"{name} is on {t.device}, q on {q.device}")


def negatives_shape(q: Tensor, neg: Negatives) -> tuple[int, ...]:
    """Shape of the ids / log-q arrays that go with `neg`: [B, n] per-row, [M] shared."""
    if isinstance(neg, IndexedRows):
        return tuple(neg.index.shape)
    return tuple(neg.shape[:2]) if neg.dim() == 3 else (neg.shape[0],)


def positive_logits(
    q: Tensor, pos: Tensor, temperature: Temperature, logq_pos: Tensor | None = None
) -> Tensor:
    """Logits of the positives [B]: q_b . pos_b / tau, minus log Q(pos_b) when `logq_pos` is given."""
    c = compute_dtype(q)
    with torch.autocast(q.device.type, enabled=False):
        s = (q.to(c) * pos.to(c)).sum(-1) / temperature
    if logq_pos is not None:
        s = s - logq_pos.to(s.dtype)
    return s


def negative_logits(
    q: Tensor,
    neg: Negatives,
    temperature: Temperature,
    logq_neg: Tensor | None = None,
    pos_ids: Tensor | None = None,
    neg_ids: Tensor | None = None,
    scores: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Logits of the negatives [B, n] (or [B, M] for shared `neg` [M, D]) and their validity mask.
    Per-row negatives given as `IndexedRows` are scored in place by `gather_scores`; `scores`, when
    given, are those dot products already computed (`LossInputs.row_scores`).

    The mask is True where the negative is kept; it is False for accidental hits, negatives whose id
    equals the row's positive id. It is None when no ids were given (every negative kept).
    """
    c = compute_dtype(q)
    # Scores in fp32 even under AMP: a bf16 score carries ~3 significant digits, too few for a loss.
    with torch.autocast(q.device.type, enabled=False):
        if scores is not None:
            s = scores.to(c)
        elif isinstance(neg, IndexedRows):
            s = neg.scores(q.to(c))
        elif neg.dim() == 3:
            s = (neg.to(c) * q.to(c).unsqueeze(1)).sum(-1)  # twice as fast as bmm for [B, n, D] on CPU
        else:
            s = q.to(c) @ neg.to(c).t()
        s = s / temperature
    if logq_neg is not None:
        s = s - logq_neg.to(s.dtype)
    valid = None
    if pos_ids is not None and neg_ids is not None:
        valid = neg_ids != pos_ids.unsqueeze(1)
    return s, valid


def masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean over the valid entries of each row [B, n] -> [B]; 0 for a row with none (or n = 0)."""
    if valid is None:
        n = values.shape[1]
        return values.sum(dim=1) / max(n, 1)
    kept = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum(dim=1) / valid.sum(dim=1).clamp(min=1).to(values.dtype)


def reduce(per_row: Tensor, reduction: str) -> Tensor:
    """Reduce per-row losses [B]: "mean" -> 0-d mean over rows, "sum" -> 0-d sum, "none" -> [B]."""
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row
