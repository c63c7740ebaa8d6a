"""What one batch offers a loss (`LossInputs`); which loss to train with is a setting
(`twotower.settings.loss.LossConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from twotower.losses._common import IndexedRows, Negatives

__all__ = ["LossInputs"]


@dataclass(frozen=True)
class LossInputs:
    """Everything a loss may need for one batch; each loss uses the fields that apply to it.

    Attributes:
        query: [B, D] query (user) vectors.
        positive: [B, D] positive item vectors, or `IndexedRows` with a [B, 1] index; in-batch
            kinds use the other rows as negatives. When the positives and the per-row negatives
            are rows of the same table, the per-row kinds score both in one pass.
        negatives: [B, n, D] per-row negatives, or the same as `IndexedRows` (rows of a [U, D]
            table, scored without materialising [B, n, D]). The in-batch kinds share them across
            the batch (every row sees every row's negatives, as DPR does with hard negatives).
        shared_negatives: [M, D] negatives shared by every row.
        user_ids: [B] query ids; in-batch kinds do not use a row of the same user as a negative.
        item_ids: [B] positive item ids (accidental-hit masking).
        negative_ids: [B, n] ids of `negatives`.
        shared_ids: [M] ids of `shared_negatives`.
        item_log_q: [B] log sampling probability of the positives (in-batch candidates).
        negative_log_q: [B, n] log sampling probability of `negatives`.
        shared_log_q: [M] log sampling probability of `shared_negatives`.
        shared_user_ids: [M] the query (user) id of each shared candidate that is another process's
            in-batch positive (distributed training gathers them into the shared set), -1 for
            sampled ones; in-batch kinds then drop a candidate of row i's user from row i's softmax,
            as they drop an in-batch row of the same user.
        row_scores: [B, 1 + n] dot products of each query with its positive (column 0) and its
            per-row negatives, computed outside autograd (`twotower.kernels.table_step`: the
            trainer's fused step of id-only towers); the per-row kinds then take their logits from
            them and differentiate only them (the temperature too, when learned). `positive` and
            `negatives` must still be the `IndexedRows` they were scored from (shapes, ids).
        known_positives: [P, 2] (row, column) pairs: column c of the batch's candidates (the B
            positives, then the per-row negatives flattened row by row, then the shared negatives)
            is one of row's user's known positives; it leaves that row's softmax (the per-row and
            in-batch softmax kinds, BCE, BPR, hinge and CCL alike; `twotower.losses.known_positives`).
    """

    query: Tensor
    positive: Tensor | IndexedRows
    negatives: Negatives | None = None
    shared_negatives: Tensor | None = None
    user_ids: Tensor | None = None
    item_ids: Tensor | None = None
    negative_ids: Tensor | None = None
    shared_ids: Tensor | None = None
    item_log_q: Tensor | None = None
    negative_log_q: Tensor | None = None
    shared_log_q: Tensor | None = None
    shared_user_ids: Tensor | None = None
    row_scores: Tensor | None = None
    known_positives: Tensor | None = None
