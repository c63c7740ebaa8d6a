"""One loss object chosen by config, so the training loop never branches on the kind of loss.

    loss_fn = make_loss(LossConfig(kind="mixed", learn_temperature=True)).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()])
    loss = loss_fn(LossInputs(query=u, positive=v, shared_negatives=e, item_ids=items, ...))

`loss_fn` is an `nn.Module` for every kind: its `parameters()` hold the learned temperature when
`learn_temperature` is set and are empty otherwise, and its `state_dict()` goes into checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from twotower.losses._common import (
    IndexedRows,
    Negatives,
    Temperature,
    check_indexed_rows,
    check_query,
    check_side,
    check_vectors,
    negative_logits,
    negatives_shape,
    positive_logits,
    reduce,
)
from twotower.losses.functional import bce_rows, bpr_rows, ccl_rows, directau, hinge_rows, softmax_loss
from twotower.losses.inputs import LossInputs
from twotower.losses.known_positives import check_known_positives, per_row_mask
from twotower.settings.loss import LossConfig

__all__ = ["Loss", "make_loss"]


def _require(kind: str, why: str, fields: dict[str, Tensor | None]) -> None:
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise ValueError(f"loss kind={kind!r} {why} needs LossInputs.{', LossInputs.'.join(missing)}")


def _check_set(q: Tensor, vectors: object, shape: str, name: str) -> None:
    if shape == "[B, n, D]" and isinstance(vectors, IndexedRows):
        check_indexed_rows(q, vectors, f"LossInputs.{name}")
        return
    b, d = q.shape
    ok = isinstance(vectors, Tensor) and (
        (vectors.dim() == 3 and vectors.shape[0] == b and vectors.shape[2] == d)
        if shape == "[B, n, D]"
        else (vectors.dim() == 2 and vectors.shape[1] == d)
    )
    if not ok:
        seen = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"LossInputs.{name} must be {shape} with B = {b}, D = {d}, got {seen}")
    if vectors.dtype != q.dtype or vectors.device != q.device:
        raise TypeError(
            f"LossInputs.{name} ({vectors.dtype}, {vectors.device}) must match query ({q.dtype}, {q.device})"
        )


def _check_inputs(x: LossInputs) -> None:
    """Shapes, dtypes and devices of every field given, with the field's name in the error."""
    q = x.query
    if isinstance(x.positive, IndexedRows):
        b = check_query(q)[0]
        check_indexed_rows(q, x.positive, "LossInputs.positive")
        if x.positive.index.shape[1] != 1:
            raise ValueError(f"LossInputs.positive.index must be [B, 1], got shape {tuple(x.positive.index.shape)}")
    else:
        b = check_vectors(q, x.positive)[0]
    if x.negatives is not None:
        _check_set(q, x.negatives, "[B, n, D]", "negatives")
        n = x.negatives.index.shape[1] if isinstance(x.negatives, IndexedRows) else x.negatives.shape[1]
        check_side(x.negative_ids, (b, n), "LossInputs.negative_ids", q, integer=True)
        check_side(x.negative_log_q, (b, n), "LossInputs.negative_log_q", q, integer=False)
    if x.shared_negatives is not None:
        _check_set(q, x.shared_negatives, "[M, D]", "shared_negatives")
        m = x.shared_negatives.shape[0]
        check_side(x.shared_ids, (m,), "LossInputs.shared_ids", q, integer=True)
        check_side(x.shared_log_q, (m,), "LossInputs.shared_log_q", q, integer=False)
        check_side(x.shared_user_ids, (m,), "LossInputs.shared_user_ids", q, integer=True)
    elif x.shared_user_ids is not None:
        raise ValueError("LossInputs.shared_user_ids was given without LossInputs.shared_negatives")
    if x.row_scores is not None:
        _check_row_scores(x, b)
    check_side(x.user_ids, (b,), "LossInputs.user_ids", q, integer=True)
    check_side(x.item_ids, (b,), "LossInputs.item_ids", q, integer=True)
    check_side(x.item_log_q, (b,), "LossInputs.item_log_q", q, integer=False)
    check_known_positives(x)


def _check_row_scores(x: LossInputs, b: int) -> None:
    """Precomputed scores stand for the joint [positive | per-row negatives] rows, nothing else."""
    joint = (isinstance(x.positive, IndexedRows) and isinstance(x.negatives, IndexedRows)
             and x.positive.vectors is x.negatives.vectors and x.shared_negatives is None)
    if not joint:
        raise ValueError("LossInputs.row_scores needs the positive and the per-row negatives as IndexedRows of one "
                         "table and no shared negatives (the scores cover exactly those columns)")
    n = x.negatives.index.shape[1]
    check_side(x.row_scores, (b, 1 + n), "LossInputs.row_scores", x.query, integer=False)


def _logq_in_use(kind: str, candidates: dict[str, Tensor | None]) -> bool:
    """logQ correction is on when any candidate set carries log-q; then every set must."""
    if all(v is None for v in candidates.values()):
        return False
    _require(kind, "with logQ correction (some log-q given)", candidates)
    return True


class _Candidates(NamedTuple):
    """One set of negatives with its ids and log-q (either may be None)."""

    vectors: Negatives
    ids: Tensor | None
    log_q: Tensor | None
    name: str  # "negative" or "shared": the LossInputs field prefix, for error messages


def _candidate_sets(x: LossInputs, flatten_per_row: bool) -> list[_Candidates]:
    """The per-row and shared negative sets present in `x`; per-row ones flattened to [B * n, D]
    (with their ids and log-q) when `flatten_per_row`."""
    sets = []
    if x.negatives is not None:
        vectors, ids, log_q = x.negatives, x.negative_ids, x.negative_log_q
        if flatten_per_row:
            if isinstance(vectors, IndexedRows):
                vectors = vectors.gathered()
            vectors = vectors.reshape(-1, vectors.shape[-1])
            ids = None if ids is None else ids.reshape(-1)
            log_q = None if log_q is None else log_q.reshape(-1)
        sets.append(_Candidates(vectors, ids, log_q, "negative"))
    if x.shared_negatives is not None:
        sets.append(_Candidates(x.shared_negatives, x.shared_ids, x.shared_log_q, "shared"))
    return sets


def _extra_query_ids(x: LossInputs, extras: list[_Candidates]) -> Tensor | None:
    """The query id of every extra candidate of the in-batch kinds ([n * B + M]), when the shared set
    holds other processes' in-batch rows (`LossInputs.shared_user_ids`); sampled ones get -1."""
    if x.shared_user_ids is None:
        return None
    if x.user_ids is None:
        raise ValueError("LossInputs.shared_user_ids needs LossInputs.user_ids (the query of each row)")
    ids = x.shared_user_ids.to(x.user_ids.dtype)
    return _cat([ids if c.name == "shared" else ids.new_full((c.vectors.shape[0],), -1) for c in extras], dim=0)


def _dense_positive(x: LossInputs) -> Tensor:
    """The [B, D] positives, gathered when they come as `IndexedRows`."""
    p = x.positive
    return p.gathered()[:, 0] if isinstance(p, IndexedRows) else p


def _joint_rows(x: LossInputs, first: _Candidates) -> IndexedRows | None:
    """The positive and the per-row negatives as one [B, 1 + n] index into their common table, when
    both are rows of the same table (the trainer's case): one `gather_scores` then scores them all
    and the table's gradient is accumulated once."""
    p, n = x.positive, first.vectors
    if first.name != "negative" or not isinstance(p, IndexedRows) or not isinstance(n, IndexedRows):
        return None
    if p.vectors is not n.vectors:
        return None
    return IndexedRows(p.vectors, torch.cat([p.index, n.index.to(p.index.dtype)], dim=1))


def _cat(tensors: list[Tensor], dim: int) -> Tensor | None:
    if not tensors:
        return None
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


class Loss(nn.Module):
    """The loss chosen by a `LossConfig`; call it with a `LossInputs`. Build it with `make_loss`."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        if not isinstance(config, LossConfig):
            raise TypeError(f"config must be a LossConfig, got {type(config).__name__}")
        self.config = config
        if config.learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(config.resolved_temperature)))
        else:
            self.register_parameter("log_temperature", None)

    @property
    def temperature(self) -> Temperature:
        """The float temperature, or the learned one as a 0-d tensor that carries its gradient."""
        if self.log_temperature is None:
            return self.config.resolved_temperature
        return self.log_temperature.exp().clamp(min=self.config.min_temperature)

    def forward(self, inputs: LossInputs) -> Tensor:
        """The loss of one batch: 0-d for reduction "mean"/"sum", [B] for "none"."""
        if not isinstance(inputs, LossInputs):
            raise TypeError(f"a loss is called with LossInputs, got {type(inputs).__name__}")
        _check_inputs(inputs)
        return _DISPATCH[self.config.kind](self, inputs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())

    def _in_batch(self, x: LossInputs) -> Tensor:
        from twotower.kernels.infonce import infonce

        cfg, kind = self.config, self.config.kind
        if x.row_scores is not None:
            raise ValueError(f"LossInputs.row_scores serves the per-row kinds; kind={kind!r} needs the vectors")
        if kind == "mixed":
            _require(kind, "(in-batch + shared negatives with logQ)", {
                "shared_negatives": x.shared_negatives,
                "shared_log_q": x.shared_log_q,
                "item_log_q": x.item_log_q,
            })
        # Candidates beyond the batch's positives; per-row negatives are flattened and shared by all rows.
        extras = _candidate_sets(x, flatten_per_row=True)
        logq_sets = {"item_log_q": x.item_log_q, **{f"{c.name}_log_q": c.log_q for c in extras}}
        use_logq = _logq_in_use(kind, logq_sets)
        mask = cfg.remove_accidental_hits
        if mask:
            _require(kind, "with remove_accidental_hits", {
                "item_ids": x.item_ids, **{f"{c.name}_ids": c.ids for c in extras},
            })
        return infonce(
            x.query,
            _dense_positive(x),
            temperature=self.temperature,
            extra=_cat([c.vectors for c in extras], dim=0),
            logq=x.item_log_q if use_logq else None,
            logq_extra=_cat([c.log_q for c in extras], dim=0) if use_logq else None,
            correct_positive=cfg.correct_positive,
            query_ids=x.user_ids if mask else None,
            item_ids=x.item_ids if mask else None,
            extra_ids=_cat([c.ids for c in extras], dim=0) if mask else None,
            reduction=cfg.reduction,
            symmetric=cfg.symmetric,
            extra_query_ids=_extra_query_ids(x, extras) if mask else None,
            masked_pairs=x.known_positives,  # its columns are the kernel's: positives, then the extras in order
        )

    def _row_logits(self, x: LossInputs, corrects: bool) -> tuple[Tensor, Tensor | None]:
        """Logits [B, 1 + n + M], the positive's in column 0, and the accidental-hit mask of the
        negatives' columns [B, n + M] (or None)."""
        cfg, kind = self.config, self.config.kind
        sets = _candidate_sets(x, flatten_per_row=False)
        if not sets:
            raise ValueError(
                f"loss kind={kind!r} needs negatives: LossInputs.negatives [B, n, D] and/or "
                "LossInputs.shared_negatives [M, D]; got neither"
            )
        use_logq = False
        if corrects:
            logq_sets = {f"{c.name}_log_q": c.log_q for c in sets}
            if cfg.correct_positive:
                logq_sets = {"item_log_q": x.item_log_q, **logq_sets}
            use_logq = _logq_in_use(kind, logq_sets)
        mask = cfg.remove_accidental_hits
        if mask:
            _require(kind, "with remove_accidental_hits", {
                "item_ids": x.item_ids, **{f"{c.name}_ids": c.ids for c in sets},
            })
        t = self.temperature
        logq_pos = x.item_log_q if use_logq and cfg.correct_positive else None
        # Scores computed outside (the table step) stand for the joint rows: no index to build.
        joint = x.positive if x.row_scores is not None else _joint_rows(x, sets[0])
        if joint is not None:
            first = sets.pop(0)
            logq = None
            if use_logq:  # every set carries log-q then; the positive's column only with correct_positive
                pos_q = logq_pos if logq_pos is not None else x.query.new_zeros(x.query.shape[0])
                logq = torch.cat([pos_q.unsqueeze(1).to(first.log_q.dtype), first.log_q], dim=1)
            logits, _ = negative_logits(x.query, joint, t, logq, scores=x.row_scores)
            masks = [first.ids != x.item_ids.unsqueeze(1)] if mask else []
        else:
            logits = positive_logits(x.query, _dense_positive(x), t, logq_pos).unsqueeze(1)
            masks = []
        parts = [logits]
        for c in sets:
            s_neg, valid = negative_logits(
                x.query, c.vectors, t, c.log_q if use_logq else None,
                x.item_ids if mask else None, c.ids if mask else None,
            )
            parts.append(s_neg)
            masks.append(valid)
        valid = _cat(masks, dim=1) if mask else None
        n = 0 if x.negatives is None else negatives_shape(x.query, x.negatives)[1]
        m = 0 if x.shared_negatives is None else x.shared_negatives.shape[0]
        return _cat(parts, dim=1), per_row_mask(x, valid, n, m)

    def _sampled_softmax(self, x: LossInputs) -> Tensor:
        logits, valid = self._row_logits(x, corrects=True)
        return softmax_loss(logits, valid, self.config.reduction)

    def _bce(self, x: LossInputs) -> Tensor:
        logits, valid = self._row_logits(x, corrects=True)
        return reduce(bce_rows(logits[:, 0], logits[:, 1:], valid), self.config.reduction)

    def _bpr(self, x: LossInputs) -> Tensor:
        logits, valid = self._row_logits(x, corrects=False)
        return reduce(bpr_rows(logits[:, 0], logits[:, 1:], valid), self.config.reduction)

    def _hinge(self, x: LossInputs) -> Tensor:
        logits, valid = self._row_logits(x, corrects=False)
        return reduce(
            hinge_rows(logits[:, 0], logits[:, 1:], valid, self.config.resolved_margin), self.config.reduction
        )

    def _ccl(self, x: LossInputs) -> Tensor:
        cfg = self.config
        logits, valid = self._row_logits(x, corrects=False)
        rows = ccl_rows(logits[:, 0], logits[:, 1:], valid, cfg.resolved_margin, float(cfg.negative_weight))
        return reduce(rows, cfg.reduction)

    def _directau(self, x: LossInputs) -> Tensor:
        if x.row_scores is not None or x.negatives is not None or x.shared_negatives is not None:
            raise ValueError("loss kind='directau' takes no negatives and no precomputed scores: it compares the "
                             "batch's users and items with each other (set batches.num_negatives and "
                             "batches.num_shared_negatives to 0)")
        return directau(x.query, _dense_positive(x), uniformity_weight=float(self.config.uniformity_weight),
                        reduction=self.config.reduction)


_DISPATCH: dict[str, Callable[[Loss, LossInputs], Tensor]] = {
    "infonce": Loss._in_batch,
    "mixed": Loss._in_batch,
    "sampled_softmax": Loss._sampled_softmax,
    "bpr": Loss._bpr,
    "hinge": Loss._hinge,
    "bce": Loss._bce,
    "ccl": Loss._ccl,
    "directau": Loss._directau,
}


def make_loss(config: LossConfig) -> Loss:
    """Build the loss module for `config`; the trainer calls it with `LossInputs` for every kind.

    Args:
        config: the loss settings.

    Returns:
        A `Loss` (nn.Module). Move it to the model's device and add its `parameters()` (the learned
        temperature, if any) to the optimizer.

    Example:
        >>> loss_fn = make_loss(LossConfig(kind="bpr"))
        >>> q, v, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 3, 8)
        >>> ids, nids = torch.arange(4), torch.arange(12).view(4, 3) + 4
        >>> loss_fn(LossInputs(query=q, positive=v, negatives=n, item_ids=ids, negative_ids=nids)).shape
        torch.Size([])
    """
    return Loss(config)
