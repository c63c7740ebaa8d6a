"""`batches.mask_known_positives`: the step names each batch's known positives over the loss's
candidate order (checked against a membership loop written here), on the CPU kernel's path and the
device path's key search alike; the masked loss is the loss of those pairs and differs from the
unmasked one; the fused table step gives way where it could not mask; a run trains with it."""

from __future__ import annotations

import dataclasses as dc

import numpy as np
import torch

from twotower.data import build_dataset, generate
from twotower.kernels.known_positives_eager import history_keys
from twotower.losses import make_loss
from twotower.training.batches import BatchIterator
from twotower.training.fused_step import TableStep
from twotower.training.known_positives import KnownPositives
from twotower.training.loop import build_model, fit, training_loss
from twotower.training.optim import make_optimizer
from twotower.training.step import batch_inputs, batch_loss

from .conftest import tiny_config

CPU = torch.device("cpu")


def setup(num_negatives: int = 2):
    config = tiny_config()
    config.batches = dc.replace(config.batches, batch_size=64, num_shared_negatives=48, num_negatives=num_negatives,
                                negative_kind="uniform" if num_negatives else "none", log_q="static",
                                mask_known_positives=True)
    config.loss = dc.replace(config.loss, kind="mixed", temperature=0.2)
    dataset = build_dataset(generate(60, 40, interactions_per_user=12, seed=5), seed=0)
    torch.manual_seed(0)
    model = build_model(config, dataset)
    loss_fn = make_loss(training_loss(config, dataset))
    batches = BatchIterator(dataset.train.users, dataset.train.items, num_items=dataset.num_items,
                            config=config.batches, history=dataset.train_history)
    with batches.epoch(0) as epoch:
        batch = next(iter(epoch))
    return config, dataset, model, loss_fn, batches, batch


def oracle_pairs(batch, indptr, indices) -> list[tuple[int, int]]:
    candidates = [*batch.items.tolist(), *([] if batch.negatives is None else batch.negatives.reshape(-1).tolist()),
                  *batch.shared_negatives.tolist()]
    pairs = []
    for r, u in enumerate(batch.users.tolist()):
        history = set(indices[indptr[u]:indptr[u + 1]].tolist())
        pairs.extend((r, c) for c, item in enumerate(candidates) if item in history)
    return pairs


def test_pairs_follow_the_loss_candidate_order_on_both_paths():
    _, dataset, model, loss_fn, batches, batch = setup()
    inputs = batch_inputs(model, loss_fn, batch, CPU)
    known = KnownPositives(*batches.history, dataset.num_items, CPU)
    want = oracle_pairs(batch, *batches.history)
    assert len(want) > 100  # dense data: many known positives among the candidates
    assert [tuple(p) for p in known.pairs(inputs).tolist()] == want
    # The device path's key search (kept on the device; run here on CPU tensors).
    indptr, indices = (torch.from_numpy(np.asarray(a)) for a in batches.history)
    known._keys = history_keys(indptr, indices.long(), dataset.num_items)
    assert [tuple(p) for p in known.pairs(inputs).tolist()] == want


def test_the_step_loss_masks_exactly_those_pairs():
    _, dataset, model, loss_fn, batches, batch = setup()
    known = KnownPositives(*batches.history, dataset.num_items, CPU)
    torch.manual_seed(7)  # the same id-dropout draws for both encodings
    inputs = batch_inputs(model, loss_fn, batch, CPU)
    pairs = torch.tensor(oracle_pairs(batch, *batches.history))
    want = loss_fn(dc.replace(inputs, known_positives=pairs))
    torch.manual_seed(7)
    got = batch_loss(model, loss_fn, batch, CPU, known)
    torch.testing.assert_close(got, want)
    assert float(got.detach()) < float(loss_fn(inputs).detach()) - 1e-3  # candidates left the softmax: the loss fell


def test_the_fused_step_gives_way_only_where_it_could_not_mask():
    config = tiny_config()
    config.batches = dc.replace(config.batches, num_shared_negatives=0, num_negatives=4, negative_kind="uniform",
                                log_q="none", mask_known_positives=True)
    config.loss = dc.replace(config.loss, kind="sampled_softmax", temperature=0.2)
    config.model.id_dropout = 0.0
    dataset = build_dataset(generate(60, 40, interactions_per_user=12, seed=5), seed=0)
    model, loss_fn = build_model(config, dataset), make_loss(config.loss)
    optimizer = make_optimizer([model, loss_fn], config.optim)
    assert TableStep.unsupported(config, model, loss_fn, optimizer, CPU) is None  # negatives drawn around positives
    config.batches = dc.replace(config.batches, exclude_positives=False)
    reason = TableStep.unsupported(config, model, loss_fn, optimizer, CPU)
    assert reason is not None and "mask_known_positives" in reason


def test_a_run_trains_with_it(tmp_path):
    config = tiny_config(epochs=2)
    config.batches = dc.replace(config.batches, mask_known_positives=True)
    result = fit(config, tmp_path / "run")
    assert result.valid.metrics["ndcg@10"] > 0.0
    assert np.isfinite(result.history[-1]["train_loss"])
