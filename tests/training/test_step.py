"""The fused TableStep trains exactly as the AutogradStep (same dropout draws, same updates to float
rounding) for every per-row loss, scoring and optimizer setting it takes; it is chosen only where
it applies, and a run through it resumes to the same weights."""

from __future__ import annotations

import dataclasses as dc

import numpy as np
import pytest
import torch

from twotower.data import build_dataset, generate
from twotower.losses import make_loss
from twotower.training.batches import BatchIterator
from twotower.training.fused_step import TableStep
from twotower.training.loop import build_model, fit
from twotower.training.optim import make_optimizer
from twotower.training.step import AutogradStep, make_train_step

from .conftest import tiny_config

CPU = torch.device("cpu")


def per_row_config(kind: str = "sampled_softmax", **changes: object):
    config = tiny_config(epochs=2)
    config.batches = dc.replace(config.batches, batch_size=64, num_shared_negatives=0, num_negatives=5,
                                negative_kind="uniform", log_q="none")
    config.loss = dc.replace(config.loss, kind=kind, temperature=None if kind != "sampled_softmax" else 0.2)
    config.model.id_dropout = 0.1  # many unknown-row repeats in every batch
    # The lazy step, where the two steps agree; with the replay the fused step catches rows up before
    # it scores them and follows dense AdamW (its own test).
    config.optim.replay_skipped_steps = False
    for section_key, value in changes.items():
        section, key = section_key.split("__")
        if section in ("batches", "loss"):
            setattr(config, section, dc.replace(getattr(config, section), **{key: value}))
        else:
            setattr(getattr(config, section), key, value)
    return config


def _train(config, dataset, step_class, steps: int):
    torch.manual_seed(0)
    model = build_model(config, dataset)
    loss_fn = make_loss(config.loss)
    optimizer = make_optimizer([model, loss_fn], config.optim)
    if step_class is TableStep:
        assert TableStep.unsupported(config, model, loss_fn, optimizer, CPU) is None
        step = TableStep(model, loss_fn, optimizer, config.optim.clip_norm)
    else:
        step = AutogradStep(model, loss_fn, optimizer, CPU, config.optim.clip_norm)
    batches = BatchIterator(dataset.train.users, dataset.train.items, num_items=dataset.num_items,
                            config=config.batches,
                            history=(dataset.train_history.indptr, dataset.train_history.indices))
    losses = []
    model.train()
    torch.manual_seed(1)  # the dropout draws
    for epoch in range(2):
        with batches.epoch(epoch) as epoch_batches:
            for batch, _ in zip(epoch_batches, range(steps), strict=False):
                for group in optimizer.param_groups:
                    group["lr"] = 0.05
                loss = step.loss(batch)
                losses.append(float(loss.detach()))
                step.update(loss)
    if hasattr(optimizer, "flush"):
        optimizer.flush()  # the replay's rows up to the last step (the trainer does it before it evaluates)
    state = {**{f"model.{k}": v for k, v in model.state_dict().items()},
             **{f"loss.{k}": v for k, v in loss_fn.state_dict().items()}}
    for param, moments in optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            state[f"{tuple(param.shape)}.{key}"] = moments[key]
    return np.array(losses), state


CASES = {
    "sampled softmax, cosine, clipped": {},
    "sampled softmax, dot, no clipping": {"model__scoring": "dot", "optim__clip_norm": 0.0},
    "sampled softmax, learned temperature, logQ, accidental hits": {
        "loss__learn_temperature": True, "batches__log_q": "static", "loss__remove_accidental_hits": True},
    "bpr, adam with L2 weight decay": {
        "kind": "bpr", "optim__optimizer": "adam", "optim__embedding_weight_decay": 0.01,
        "optim__replay_skipped_steps": False,  # L2 decay moves a skipped row: no closed form to replay
    },
    "hinge, popularity negatives, tight clipping": {"kind": "hinge", "batches__negative_kind": "popularity",
                                                    "optim__clip_norm": 0.05},
    "bce, decoupled weight decay": {"kind": "bce", "optim__embedding_weight_decay": 0.05},
}


@pytest.mark.parametrize("case", list(CASES))
def test_table_step_trains_as_the_autograd_step(case):
    changes = dict(CASES[case])
    config = per_row_config(changes.pop("kind", "sampled_softmax"), **changes)
    dataset = build_dataset(generate(120, 80, interactions_per_user=12, seed=3))
    want_losses, want = _train(config, dataset, AutogradStep, steps=8)
    got_losses, got = _train(config, dataset, TableStep, steps=8)
    np.testing.assert_allclose(got_losses, want_losses, rtol=2e-5, atol=1e-6)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
    trained = [k for k in want if k.endswith("exp_avg")]
    assert trained and all(want[k].abs().sum() > 0 for k in trained), "the tables must have been stepped"


REPLAY_CASES = {
    "sampled softmax, cosine, clipped": {},
    "bpr, dot, decoupled weight decay": {"kind": "bpr", "model__scoring": "dot", "optim__embedding_weight_decay": 0.05},
}


@pytest.mark.parametrize("case", list(REPLAY_CASES))
def test_table_step_with_replay_trains_as_dense_adamw(case):
    """With `optim.replay_skipped_steps` the fused step brings the rows a batch reads up to date
    before it scores them, so its tables follow dense AdamW (every row stepped every batch, here the
    autograd step with `optim.sparse_embeddings` off) to float rounding; without the catch-up (the
    lazy step) they do not."""
    changes = dict(REPLAY_CASES[case])
    kind = changes.pop("kind", "sampled_softmax")
    dataset = build_dataset(generate(120, 80, interactions_per_user=12, seed=3))
    dense = per_row_config(kind, optim__sparse_embeddings=False, **changes)
    want_losses, want = _train(dense, dataset, AutogradStep, steps=12)
    replay = per_row_config(kind, optim__replay_skipped_steps=True, **changes)
    got_losses, got = _train(replay, dataset, TableStep, steps=12)
    np.testing.assert_allclose(got_losses, want_losses, rtol=2e-5, atol=1e-6)
    model_keys = [k for k in want if k.startswith("model.")]
    # float32: the closed form and twelve dense steps round differently (weights are about 1 in size,
    # the lazy step misses dense AdamW by 0.2 and more).
    for key in model_keys:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4, msg=key)
    _, lazy = _train(per_row_config(kind, **changes), dataset, TableStep, steps=12)
    assert any(not torch.allclose(lazy[k], want[k], rtol=1e-4, atol=1e-4) for k in model_keys)


@pytest.mark.parametrize("change,reason", [
    ({"train__fused_step": False}, "train.fused_step is off"),
    ({"optim__sparse_embeddings": False}, "optim.sparse_embeddings"),
    ({"model__user_history": True}, "more than an id embedding"),
    ({"model__scoring": "neg_l2"}, "neg_l2"),
    ({"loss__kind": "infonce"}, "not a per-row kind"),
    ({"batches__num_shared_negatives": 8}, "no shared ones"),
    ({"batches__on_device": True}, "batches.on_device"),
])
def test_the_autograd_step_serves_everything_else_and_says_why(change, reason):
    config = per_row_config(**change)
    dataset = build_dataset(generate(40, 30, interactions_per_user=5, seed=0))
    model = build_model(config, dataset)
    loss_fn = make_loss(config.loss)
    optimizer = make_optimizer([model, loss_fn], config.optim)
    assert reason in TableStep.unsupported(config, model, loss_fn, optimizer, CPU)
    assert isinstance(make_train_step(config, model, loss_fn, optimizer, CPU), AutogradStep)
    plain = per_row_config()
    model, loss_fn = build_model(plain, dataset), make_loss(plain.loss)
    assert isinstance(
        make_train_step(plain, model, loss_fn, make_optimizer([model, loss_fn], plain.optim), CPU), TableStep
    )


@pytest.mark.slow  # three trainings: CI only
def test_a_fused_run_resumed_from_its_checkpoint_ends_with_the_same_weights(tmp_path, monkeypatch):
    """The table step keeps its Adam state in the optimizer (`LazyAdam.adam_table`): checkpoints carry
    it, and a run stopped after epoch 2 and resumed ends bit for bit as a run never stopped."""
    from safetensors.torch import load_file

    import twotower.training.loop as train_module

    config = per_row_config(train__epochs=3, train__patience=0)
    fit(config, tmp_path / "straight")
    real = train_module.save_checkpoint

    def stop_after_epoch_2(root, name, **kwargs):
        real(root, name, **kwargs)
        if name == "epoch-0002":
            raise RuntimeError("stopped")

    monkeypatch.setattr(train_module, "save_checkpoint", stop_after_epoch_2)
    with pytest.raises(RuntimeError, match="stopped"):
        fit(config, tmp_path / "resumed")
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    fit(config, tmp_path / "resumed", resume=True)
    got = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    want = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
