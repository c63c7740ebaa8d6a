"""End-to-end training: metrics, outputs on disk, early stopping, divergence, resume after SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import twotower.training.loop as train_module
import twotower.training.step as train_step_module
from twotower.atomic import disk_usage
from twotower.model.model_dir import load_model_dir
from twotower.training.checkpoint import drop_optimizer_state, has_optimizer_state, latest_checkpoint
from twotower.training.loop import TrainingDiverged, duration, epoch_line, fit
from twotower.training.run_lock import LOCK_NAME

from .conftest import tiny_config


def test_fit_beats_popularity_and_writes_a_complete_run(tmp_path):
    config = tiny_config(epochs=6)
    result = fit(config, tmp_path)
    # The synthetic data has cluster structure that popularity cannot see.
    assert result.valid.metrics["ndcg@10"] > 1.5 * result.popularity_valid.metrics["ndcg@10"]
    assert result.test.metrics["recall@20"] > result.popularity_test.metrics["recall@20"]
    for name in ("metrics.jsonl", "training.png", "results.json", "model/config.json", "model/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 7))
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = max(lines, key=lambda r: r["valid"]["ndcg@10"])
    assert result.best_epoch == best["epoch"]
    # The saved model is the best epoch's: re-evaluating it gives the logged validation number.
    assert result.valid.metrics["ndcg@10"] == pytest.approx(best["valid"]["ndcg@10"], abs=1e-6)
    trained = load_model_dir(tmp_path / "model")
    assert trained.config["train_config"]["train"]["epochs"] == 6
    # The temperature was left unset: the run took it from its training split's catalogue share.
    from twotower.datasets import load_dataset
    from twotower.losses import data_temperature

    data = load_dataset(config.data)
    want = data_temperature(data.num_items, len(data.train.users) / np.unique(data.train.users).size)
    assert 0.2 < want < 0.5  # 200 items, ~16 per user: a milder softmax than a large catalogue's
    assert float(trained.model.temperature) == pytest.approx(want, rel=1e-5)
    assert json.loads((tmp_path / "results.json").read_text())["temperature"] == pytest.approx(want, rel=1e-5)


def test_early_stopping_stops_after_patience(tmp_path, monkeypatch):
    """Validation scores scripted by epoch: best at 2, stale at 3, a new best at 4 (the count starts
    again), stale at 5 and 6: with patience 2 the run ends after epoch 6 of 30, its model epoch 4's."""
    scores = iter([0.1, 0.3, 0.2, 0.35, 0.3, 0.34, 0.9, 0.9])
    monkeypatch.setattr("twotower.training.loop._select", lambda result, metric: next(scores))
    result = fit(tiny_config(epochs=30, patience=2), tmp_path)
    assert [record["epoch"] for record in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.best_epoch == 4
    assert json.loads((tmp_path / "results.json").read_text())["best_epoch"] == 4


def poison_loss(monkeypatch, epoch: int, index: int) -> None:
    """Batch `index` of epoch `epoch` (both 0-based) gets a NaN loss."""
    real = train_step_module.batch_loss

    def poisoned(model, loss_fn, batch, device, known=None):
        loss = real(model, loss_fn, batch, device, known)
        return loss * float("nan") if (batch.epoch, batch.index) == (epoch, index) else loss

    monkeypatch.setattr(train_step_module, "batch_loss", poisoned)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(epochs=3)
    poison_loss(monkeypatch, 1, 2)  # third step of epoch 2
    with pytest.raises(TrainingDiverged) as caught:
        fit(config, tmp_path)
    steps_per_epoch = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"]
    assert f"epoch 2, step {steps_per_epoch + 3}" in str(caught.value)
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert last is not None and last.name == "epoch-0001"  # the last good one
    for name in ("config.json", "model.safetensors", "optimizer.safetensors", "state.safetensors", "trainer.json",
                 "user_vocab.parquet", "item_vocab.parquet"):
        assert (last / name).is_file(), name
    assert json.loads((last / "config.json").read_text())["data_fingerprint"]
    assert not (tmp_path / "model").exists()


def test_losses_read_every_few_steps_give_the_same_run_and_stop_at_the_nan_step(tmp_path, monkeypatch):
    """The deferred reads of a CUDA run (`loss_read_every` > 1), forced on the CPU: the same logged
    losses as per-step reads, and a NaN still stops the run naming its step, with nothing saved."""
    config = tiny_config(epochs=2)
    each = fit(config, tmp_path / "each")
    monkeypatch.setattr(train_module, "loss_read_every", lambda device, step: 4)
    grouped = fit(config, tmp_path / "grouped")
    for a, b in zip(each.history, grouped.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["valid"]["ndcg@10"] == pytest.approx(b["valid"]["ndcg@10"], abs=1e-9)
    poison_loss(monkeypatch, 1, 1)  # second step of epoch 2
    with pytest.raises(TrainingDiverged) as caught:
        fit(config, tmp_path / "nan")
    steps_per_epoch = each.history[0]["step"]
    assert f"loss is nan at epoch 2, step {steps_per_epoch + 2};" in str(caught.value)
    assert latest_checkpoint(tmp_path / "nan" / "checkpoints").name == "epoch-0001"
    assert not (tmp_path / "nan" / "model").exists()


RUN = """
import dataclasses, sys
from twotower.training.loop import fit
from tests.training.conftest import tiny_config
config = tiny_config(epochs=4, checkpoint_every=int(sys.argv[2]))
config.data.synthetic_users = 1500
config.data.synthetic_interactions_per_user = 30
config.batches = dataclasses.replace(config.batches, batch_size=128)
config.model.user.dropout = 0.1
config.model.user.hidden_dims = [32]
if len(sys.argv) > 3 and sys.argv[3].startswith("mark="):  # touch a file at step 6 of epoch 2, then go on
    import pathlib
    import twotower.training.step as step
    real_loss, mark = step.batch_loss, pathlib.Path(sys.argv.pop(3)[len("mark="):])
    def marking(model, loss_fn, batch, device, known=None):
        if (batch.epoch, batch.index) == (1, 5):
            mark.touch()
        return real_loss(model, loss_fn, batch, device, known)
    step.batch_loss = marking
result = fit(config, sys.argv[1], resume=len(sys.argv) > 3)
print("RESULT", result.test.metrics["ndcg@10"], result.valid.metrics["ndcg@10"], result.best_epoch)
"""


def _run(out: Path, *extra: str, every: int = 1, wait: bool = True) -> subprocess.Popen | str:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(out), str(every), *extra], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # cpu_loss_path removed TRITON_INTERPRET
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return [line for line in stdout.splitlines() if line.startswith("RESULT")][0]


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    """A run SIGKILLed in the middle of epoch 2 and resumed ends with the same metrics as a run that
    was never interrupted (batches, dropout RNG, optimizer state and schedule are all restored)."""
    reference = _run(tmp_path / "straight")
    killed = tmp_path / "killed"
    mark = tmp_path / "in-epoch-2"
    proc = _run(killed, f"mark={mark}", wait=False)
    deadline = time.monotonic() + 240
    while not mark.exists():  # progress, not time: the run is 6 steps into epoch 2
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(killed / "checkpoints").name == "epoch-0001", "the kill came too late to test resuming"
    assert not (killed / "model").exists()
    resumed = _run(killed, "--resume")
    got = np.array(resumed.split()[1:], dtype=float)
    want = np.array(reference.split()[1:], dtype=float)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.slow
def test_resume_between_sparse_checkpoints_replays_to_the_same_weights(tmp_path):
    """With a checkpoint every 2 epochs, a run SIGKILLed after logging epoch 3 (whose checkpoint was
    never written) resumes from epoch 2, replays epoch 3 and ends with the same bytes of weights as
    a run that was never interrupted."""
    from safetensors.numpy import load_file

    reference = _run(tmp_path / "straight", every=2)
    killed = tmp_path / "killed"
    proc = _run(killed, every=2, wait=False)
    log = killed / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(killed / "checkpoints").name == "epoch-0002", "the kill came too late to test resuming"
    assert not (killed / "model").exists()
    assert _run(killed, "--resume", every=2) == reference
    want = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    got = load_file(str(killed / "model" / "model.safetensors"))
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_checkpoints_every_n_epochs_at_the_last_and_at_an_early_stop(tmp_path, monkeypatch):
    written, real = [], train_module.save_checkpoint

    def recording(root, name, **kwargs):
        written.append(name)
        return real(root, name, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    fit(tiny_config(epochs=5, checkpoint_every=2), tmp_path / "every2")
    assert written == ["epoch-0002", "epoch-0004", "epoch-0005"]
    written.clear()
    config = tiny_config(epochs=30, patience=1, checkpoint_every=100)
    config.optim.lr = 1e-6  # nothing improves after the first evaluation: stops after epoch 2
    result = fit(config, tmp_path / "stopped")
    assert written == [f"epoch-{len(result.history):04d}"] and len(result.history) < 30


@pytest.mark.parametrize("keep_optimizer_state", [False, True])
def test_a_finished_run_keeps_one_copy_of_the_weights(tmp_path, keep_optimizer_state):
    """best/, model/ and the one checkpoint left share a single weights file (hard links) when they
    hold the same epoch; the optimizer's moments stay only when asked for."""
    result = fit(tiny_config(epochs=2, keep_optimizer_state=keep_optimizer_state), tmp_path)
    assert result.best_epoch == 2  # the last epoch: best/, model/ and the checkpoint hold the same weights
    best, model = tmp_path / "best" / "model.safetensors", tmp_path / "model" / "model.safetensors"
    [checkpoint] = (tmp_path / "checkpoints").glob("epoch-*")
    assert os.path.samefile(best, model) and os.path.samefile(best, checkpoint / "model.safetensors")
    assert has_optimizer_state(checkpoint) == keep_optimizer_state
    assert (checkpoint / "optimizer.json").is_file() == keep_optimizer_state
    assert result.disk_bytes == disk_usage(tmp_path)
    files = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert result.disk_bytes == files - 2 * best.stat().st_size
    load_model_dir(tmp_path / "model")  # still a complete, loadable model directory


def test_a_finished_run_resumes_to_the_same_results_without_optimizer_state(tmp_path):
    config = tiny_config(epochs=2)
    first = fit(config, tmp_path)
    again = fit(config, tmp_path, resume=True)  # nothing left to train: the final evaluation again
    assert again.test.metrics == first.test.metrics and again.best_epoch == first.best_epoch


def test_resume_refuses_to_train_on_without_optimizer_state(tmp_path, monkeypatch):
    config = tiny_config(epochs=2)
    real = train_module.save_checkpoint

    def crash(root, name, **kwargs):
        if name == "epoch-0002":
            raise KeyboardInterrupt
        return real(root, name, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path)
    drop_optimizer_state(latest_checkpoint(tmp_path / "checkpoints"))
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    with pytest.raises(ValueError, match="epoch-0001 holds no optimizer state"):
        fit(config, tmp_path, resume=True)


def test_resume_refuses_other_settings(tmp_path):
    config = tiny_config(epochs=1)
    fit(config, tmp_path)
    config.train.progress = True  # cosmetic: allowed to differ
    config.train.checkpoint_every = 3
    config.eval.exclude = "train"  # the test ranking only
    fit(config, tmp_path, resume=True)
    config.eval.unknown_targets = "keep"  # changes the validation metric, hence the best epoch
    with pytest.raises(ValueError, match=r"other settings: eval.unknown_targets: 'drop' -> 'keep'; resume"):
        fit(config, tmp_path, resume=True)
    config.eval.unknown_targets = "drop"
    config.optim.lr, config.model.embedding_dim = 0.1, 8
    with pytest.raises(ValueError, match=r"other settings: model.embedding_dim: 16 -> 8; optim.lr: 0.005 -> 0.1; "):
        fit(config, tmp_path, resume=True)


def test_resume_takes_a_checkpoint_saved_before_the_eval_section(tmp_path):
    config = tiny_config(epochs=1)
    fit(config, tmp_path)
    saved = latest_checkpoint(tmp_path / "checkpoints") / "config.json"
    (saved.parent / "manifest.json").unlink()  # older still: saved before checkpoints had a manifest
    older = json.loads(saved.read_text())
    del older["train_config"]["eval"]
    for name in ("checkpoint_every", "keep_optimizer_state"):
        del older["train_config"]["train"][name]
    saved.write_text(json.dumps(older))
    fit(config, tmp_path, resume=True)


def test_the_epoch_line_says_where_the_run_is_and_how_long_it_has_left():
    record = {"epoch": 7, "train_loss": 0.43211, "valid": {"ndcg@10": 0.23456}}
    assert (epoch_line(record, 30, "ndcg@10", 25.06, 575.0)
            == "epoch 7/30: loss 0.4321, valid ndcg@10 0.2346, 25.1 s, ~9 min 35 s left")
    assert epoch_line(record, 30, "ndcg@10", 25.06, None).endswith("25.1 s, early stop")
    assert epoch_line({**record, "epoch": 30}, 30, "ndcg@10", 1.0, 0.0).endswith("1.0 s")
    assert (epoch_line({"epoch": 1, "train_loss": 1.0}, 2, "ndcg@10", 2.0, 2.0)
            == "epoch 1/2: loss 1.0000, 2.0 s, ~2 s left")
    assert (duration(44.6), duration(725), duration(7380)) == ("45 s", "12 min 5 s", "2 h 3 min")


def test_the_time_left_is_the_mean_epoch_so_far_times_the_epochs_left(tmp_path, monkeypatch):
    clock = iter(range(0, 1_000_000, 5))  # the trainer's clock advances 5 s at every reading
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    lines = []
    fit(tiny_config(epochs=3), tmp_path, echo=lines.append)
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3: loss ") and lines[2].startswith("epoch 3/3: ")
    seconds = [float(line.split(", ")[2].removesuffix(" s")) for line in lines]
    assert seconds[0] > 5  # batches, evaluation and checkpoint all read the clock
    # After epoch 1 the mean epoch is that epoch (the run's clock starts one reading before it, and
    # the line's duration is read one reading after the mean's): 2 epochs left.
    assert lines[0].endswith(f"~{duration(2 * seconds[0])} left")
    assert "left" not in lines[2]


def test_mixed_loss_gets_expected_count_corrections():
    """In-batch candidates are B draws of the data distribution and shared negatives M draws of the
    sampler: their logQ terms must be log(B p) and log(M q), or the two sets are mis-weighted by
    log(B / M) whenever B != M."""
    import dataclasses as dc

    import torch

    from twotower.data import build_dataset, generate
    from twotower.losses import make_loss
    from twotower.training.batches import Batch
    from twotower.training.loop import build_model
    from twotower.training.step import batch_loss

    config = tiny_config()
    dataset = build_dataset(generate(50, 40, interactions_per_user=5, seed=0))
    model = build_model(config, dataset)
    seen = {}
    mixed = dc.replace(config.loss, kind="mixed")

    class Capture(torch.nn.Module):
        config = mixed

        def forward(self, inputs):
            seen["item"], seen["shared"] = inputs.item_log_q, inputs.shared_log_q
            seen["negative"] = inputs.negative_log_q
            return torch.zeros(())

    batch = Batch(users=np.array([0, 1, 2, 3]), items=np.array([0, 1, 2, 3]),
                  negatives=np.arange(8).reshape(4, 2) + 10, negative_log_q=np.full((4, 2), np.log(1 / 30), np.float32),
                  shared_negatives=np.arange(8), shared_log_q=np.full(8, np.log(1 / 40), np.float32),
                  item_log_q=np.full(4, np.log(0.01), np.float32))
    batch_loss(model, Capture(), batch, torch.device("cpu"))
    np.testing.assert_allclose(seen["item"].numpy(), np.log(4 * 0.01), rtol=1e-6)
    np.testing.assert_allclose(seen["shared"].numpy(), np.log(8 / 40), rtol=1e-6)
    np.testing.assert_allclose(seen["negative"].numpy(), np.log(8 / 30), rtol=1e-6)  # the B x n pooled draws
    per_row = make_loss(dc.replace(config.loss, kind="sampled_softmax"))
    Capture.config = per_row.config  # per-row kinds: a row's positive is one draw, its negatives n draws
    batch_loss(model, Capture(), batch, torch.device("cpu"))
    np.testing.assert_allclose(seen["item"].numpy(), np.log(0.01), rtol=1e-6)
    np.testing.assert_allclose(seen["shared"].numpy(), np.log(8 / 40), rtol=1e-6)
    np.testing.assert_allclose(seen["negative"].numpy(), np.log(2 / 30), rtol=1e-6)
    # Mined (hard) negatives come without log q: uncorrected (0) while the other sets are corrected.
    mined = dc.replace(batch, negative_log_q=None)
    batch_loss(model, Capture(), mined, torch.device("cpu"))
    np.testing.assert_array_equal(seen["negative"].numpy(), np.zeros((4, 2), np.float32))


def test_hard_negatives_are_mined_from_the_model_and_checkpointed(tmp_path):
    import dataclasses as dc

    from safetensors.numpy import load_file

    config = tiny_config(epochs=3, hard_candidates=20)
    config.batches = dc.replace(config.batches, num_shared_negatives=0, num_negatives=4, negative_kind="hard",
                                hard_rank_range=(2, 20), log_q="none")
    config.loss = dc.replace(config.loss, kind="sampled_softmax")
    result = fit(config, tmp_path)
    assert np.isfinite(result.history[-1]["train_loss"])
    arrays = load_file(str(latest_checkpoint(tmp_path / "checkpoints") / "state.safetensors"))
    candidates = arrays["loop.candidates"]
    from twotower.datasets import load_dataset

    dataset = load_dataset(config.data)
    assert candidates.shape == (dataset.num_users, 20)
    # Mined as the model's top-20 with train items excluded: none of a user's train items appear.
    train = dataset.train_history
    for user in range(0, candidates.shape[0], 37):
        assert not set(candidates[user].tolist()) & set(train.row(user).tolist())


def test_fit_restores_the_callers_torch_thread_count(tmp_path):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = tiny_config(epochs=1)  # trains with num_threads = 1
        fit(config, tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("scoring", ["cosine", "dot"])
@pytest.mark.parametrize("kind", ["sampled_softmax", "bpr", "bce"])
def test_id_lookup_item_tower_scored_in_the_table_trains_as_the_encoded_vectors(scoring, kind, monkeypatch):
    """An id-only item tower's vectors reach per-row losses as `EmbeddingRows` (scored by
    embedding_scores in the table); the loss and every gradient equal those of encoding the items."""
    import dataclasses as dc

    import torch

    from twotower.data import build_dataset, generate
    from twotower.losses import EmbeddingRows, make_loss
    from twotower.model import TwoTowerModel
    from twotower.training.batches import Batch
    from twotower.training.loop import build_model
    from twotower.training.optim import make_optimizer
    from twotower.training.step import batch_loss

    config = tiny_config()
    config.model = dc.replace(config.model, scoring=scoring, id_dropout=0.3)  # dropout draws must match too
    config.loss = dc.replace(config.loss, kind=kind, temperature=0.5)
    dataset = build_dataset(generate(50, 40, interactions_per_user=5, seed=0))
    model = build_model(config, dataset)
    make_optimizer([model], config.optim)  # switches the id tables to sparse gradients, as fit does
    loss_fn = make_loss(config.loss)
    rng = np.random.default_rng(0)
    n_users, n_items = dataset.num_users, dataset.num_items
    batch = Batch(users=rng.integers(0, n_users, 64), items=rng.integers(0, n_items, 64),
                  negatives=rng.integers(0, n_items, (64, 6)))
    seen = []
    real_forward = type(loss_fn).forward

    def spy(self, inputs):
        seen.append(isinstance(inputs.negatives.vectors, EmbeddingRows))
        return real_forward(self, inputs)

    monkeypatch.setattr(type(loss_fn), "forward", spy)
    results = []
    for in_table in (True, False):
        if not in_table:
            monkeypatch.setattr(TwoTowerModel, "item_table_rows", lambda self, items: None)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        loss = batch_loss(model, loss_fn, batch, torch.device("cpu"))
        loss.backward()
        results.append((loss.detach(), *(p.grad.to_dense() for p in model.parameters() if p.grad is not None)))
    assert seen == [True, False]
    assert len(results[0]) == len(results[1]) == 3  # the loss, the user table's and the item table's gradients
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_item_vectors_stay_in_the_table_only_where_that_is_exact():
    import dataclasses as dc

    import torch

    from twotower.data import build_dataset, generate
    from twotower.model import TowerConfig
    from twotower.training.loop import build_model

    dataset = build_dataset(generate(30, 20, interactions_per_user=4, seed=0))
    codes = torch.arange(5)
    config = tiny_config()
    assert build_model(config, dataset).item_table_rows(codes) is not None
    for model_config in (dc.replace(config.model, scoring="neg_l2"),
                         dc.replace(config.model, item=TowerConfig(hidden_dims=[8]))):
        config.model = model_config
        assert build_model(config, dataset).item_table_rows(codes) is None


def _num_batches(config) -> int:
    from twotower.datasets import load_dataset

    dataset = load_dataset(config.data)
    return dataset, -(-len(dataset.train.users) // config.batches.batch_size)


@pytest.mark.parametrize("epoch", [0, 1])
def test_weights_gone_non_finite_are_never_saved(tmp_path, monkeypatch, epoch):
    """The loss of an epoch's last step is finite but its update is not (as with a huge learning rate):
    training stops at the end of the epoch, before evaluating or saving those weights, and the message
    names the checkpoint that is really the last good one (or says there is none)."""
    import torch

    config = tiny_config(epochs=3)
    dataset, batches = _num_batches(config)
    real = train_step_module.batch_loss

    def poisoned(model, loss_fn, batch, device, known=None):
        loss = real(model, loss_fn, batch, device, known)
        if (batch.epoch, batch.index) == (epoch, batches - 1):
            with torch.no_grad():
                model.user_tower.id_embedding.weight[3, 0] = float("inf")  # after the loss: it stays finite
        return loss

    monkeypatch.setattr(train_step_module, "batch_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=f"after epoch {epoch + 1}") as caught:
        fit(config, tmp_path, dataset=dataset)
    last = latest_checkpoint(tmp_path / "checkpoints")
    if epoch == 0:
        assert last is None and "No checkpoint was written" in str(caught.value)
        assert not (tmp_path / "best").exists()
    else:
        assert last.name == "epoch-0001" and str(last) in str(caught.value)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == epoch


def test_a_crash_while_checkpointing_leaves_a_log_and_directory_that_resume_mends(tmp_path, monkeypatch):
    """A run that dies after logging epoch 2 but before its checkpoint is complete resumes from epoch 1:
    the log then has each epoch once, and the half-written checkpoint's temporary directory is gone."""
    config = tiny_config(epochs=3)
    real = train_module.save_checkpoint

    def crash(root, name, **kwargs):
        if name == "epoch-0002":
            (root / ".epoch-0002.x1y2.tmp").mkdir()  # what a killed write_dir_atomic leaves
            (tmp_path / ".results.json.a1b2.tmp").write_text("half")
            raise KeyboardInterrupt
        return real(root, name, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    fit(config, tmp_path, resume=True)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    leftovers = [p.name for p in [*tmp_path.iterdir(), *(tmp_path / "checkpoints").iterdir()]
                 if p.name.startswith(".") and p.name != LOCK_NAME]  # the lock file is a note, not a leftover
    assert leftovers == []


def test_the_saved_model_carries_the_best_epochs_learned_temperature(tmp_path, monkeypatch):
    """With a learned temperature the best epoch's weights come with that epoch's temperature, not the
    last epoch's; the saved model's config states the temperature it trained with."""
    config = tiny_config(epochs=3, patience=0)
    config.loss = dataclasses.replace(config.loss, learn_temperature=True)
    scores = iter([0.3, 0.2, 0.1])  # epoch 1 is the best on validation
    monkeypatch.setattr(train_module, "_select", lambda result, metric: next(scores))
    temperatures, real = [], train_module.save_checkpoint

    def recording(root, name, **kwargs):
        temperatures.append(float(kwargs["loss_fn"].temperature.detach()))  # what each epoch's checkpoint holds
        return real(root, name, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    result = fit(config, tmp_path)
    assert result.best_epoch == 1
    per_epoch = [temperatures[0], temperatures[2]]
    assert abs(per_epoch[0] - per_epoch[1]) > 1e-4  # it did move
    saved = load_model_dir(tmp_path / "model")
    assert float(saved.model.temperature) == pytest.approx(per_epoch[0], rel=1e-6)
    assert json.loads((tmp_path / "results.json").read_text())["temperature"] == pytest.approx(per_epoch[0], rel=1e-6)
    from twotower.datasets import load_dataset

    initial = train_module.training_loss(config, load_dataset(config.data)).resolved_temperature  # the data's
    assert abs(per_epoch[0] - initial) > 1e-4
    assert saved.config["model"]["temperature"] == pytest.approx(per_epoch[0], rel=1e-6)


def test_symmetric_neg_l2_softmaxes_over_true_distances():
    """The item-to-query direction compares queries, where neg_l2's dropped -||q||^2 does not cancel:
    the symmetric loss sees -||q - v||^2 itself, the one-way loss the shorter search form."""
    import dataclasses as dc

    import torch

    from twotower.data import build_dataset, generate
    from twotower.training.batches import Batch
    from twotower.training.loop import build_model
    from twotower.training.step import batch_loss

    config = tiny_config()
    config.model.scoring = "neg_l2"
    dataset = build_dataset(generate(50, 40, interactions_per_user=5, seed=0))
    model = build_model(config, dataset).eval()
    seen = {}

    class Capture(torch.nn.Module):
        def forward(self, inputs):
            seen["query"], seen["positive"] = inputs.query, inputs.positive
            return torch.zeros(())

    batch = Batch(users=np.array([0, 1, 2, 3]), items=np.array([5, 1, 7, 3]))
    for symmetric in (True, False):
        Capture.config = dc.replace(config.loss, kind="infonce", symmetric=symmetric)
        with torch.no_grad():
            batch_loss(model, Capture(), batch, torch.device("cpu"))
            q = model.encode_users(torch.tensor([0, 1, 2, 3]))
            v = model.encode_items(torch.tensor([5, 1, 7, 3]))
        scores = (seen["query"] @ seen["positive"].T).double()
        true = -torch.cdist(q.double(), v.double()).square()
        shift = 0 if symmetric else (q.double() ** 2).sum(1, keepdim=True)  # the search form's per-query constant
        np.testing.assert_allclose(scores.numpy(), (true + shift).numpy(), rtol=1e-5, atol=1e-5)


def test_hard_negatives_train_with_the_default_logq_loss(tmp_path):
    """Hard negatives under the default mixed loss with logQ on (they carry no sampler log q)."""
    config = tiny_config(epochs=6)
    config.batches = dataclasses.replace(config.batches, negative_kind="hard", num_negatives=4)
    result = fit(config, tmp_path)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert result.valid.metrics["ndcg@10"] > result.popularity_valid.metrics["ndcg@10"]


def test_a_fresh_run_never_takes_an_earlier_runs_weights(tmp_path):
    """A second, fresh run into the same directory on other data (here without a validation split)
    trains every epoch and saves its own last epoch, not the best/ weights the first run left."""
    from safetensors.torch import load_file

    first = tiny_config(epochs=1)
    fit(first, tmp_path)
    earlier = load_file(str(tmp_path / "best" / "model.safetensors"))
    second = tiny_config(epochs=3, patience=1)
    second.data.synthetic_users, second.data.synthetic_items = 120, 90
    second.data.options = dataclasses.replace(second.data.options, ratios=(0.9, 0.1))  # train / test only
    result = fit(second, tmp_path)
    assert result.best_epoch == 3 and len(result.history) == 3  # no early stop on a metric that does not exist
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert saved["item_tower.id_embedding.weight"].shape[0] != earlier["item_tower.id_embedding.weight"].shape[0]
    # a finished run keeps one
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*")) == ["epoch-0003"]
