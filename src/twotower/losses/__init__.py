"""Training losses for two-tower models.

- `sampled_softmax`, `bpr`, `hinge`, `bce`, `ccl`: losses over explicit per-row [B, n, D] (or
  `IndexedRows`) or shared [M, D] negatives, with logQ correction and accidental-hit masking
  (`twotower.losses.functional`); `directau`: alignment + uniformity over the batch, no negatives.
- In-batch InfoNCE (fused Triton kernel on CUDA): `twotower.kernels.infonce.infonce`.
- `make_loss(LossConfig(...))`: one `nn.Module` for any kind, called with `LossInputs`, so the
  training loop never branches on the loss (`twotower.losses.select`).
"""

from twotower.losses._common import EmbeddingRows, IndexedRows
from twotower.losses.functional import bce, bpr, ccl, directau, hinge, sampled_softmax
from twotower.losses.inputs import LossInputs
from twotower.losses.select import Loss, make_loss
from twotower.settings.loss import IN_BATCH_KINDS, KINDS, LossConfig, data_temperature

__all__ = ["EmbeddingRows", "IN_BATCH_KINDS", "IndexedRows", "KINDS", "Loss", "LossConfig", "LossInputs", "bce", "bpr",
           "ccl", "data_temperature", "directau", "hinge", "make_loss", "sampled_softmax"]
