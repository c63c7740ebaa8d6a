"""Batches built on the training device (`batches.on_device`, here the CPU): an epoch covers every
pair once, a seed reproduces every batch whatever the order they are built in, negatives never hit
a positive, hard negatives come from the eligible candidates, the log-q fields follow the host
iterator's definitions (the streaming estimate included), ranks share a global batch, refusals name
the setting, and training on them reaches the host path's quality."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from twotower.data.csr import CSR
from twotower.settings import BatchConfig
from twotower.training.batches import BatchIterator
from twotower.training.device_batches import DeviceBatches
from twotower.training.loop import fit

from .conftest import straight_and_resumed, tiny_config

NUM_ITEMS = 40
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU check runs these on CUDA


def pairs(seed: int = 0, num_users: int = 30) -> tuple[np.ndarray, np.ndarray, CSR]:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):
        chosen = rng.choice(NUM_ITEMS, size=int(rng.integers(1, 12)), replace=False)
        users += [u] * chosen.size
        items += chosen.tolist()
    users, items = np.array(users), np.array(items)
    return users, items, CSR.from_pairs(users, items, num_users)


def device_batches(config: BatchConfig, shard=(0, 1), seed: int = 0) -> DeviceBatches:
    users, items, history = pairs(seed)
    return DeviceBatches(users, items, num_items=NUM_ITEMS, config=config, history=history, device=DEVICE,
                         shard=shard)


MIXED = BatchConfig(batch_size=16, num_negatives=3, negative_kind="uniform", num_shared_negatives=8,
                    log_q="static", seed=5)


def test_an_epoch_covers_every_pair_once_with_consistent_distinct_rows() -> None:
    users, items, _ = pairs()
    it = device_batches(MIXED)
    seen = []
    with it.epoch(0) as batches:
        for batch in batches:
            seen += list(zip(batch.users.tolist(), batch.items.tolist(), strict=True))
            assert torch.equal(batch.distinct_items[batch.item_rows], batch.items)
            assert torch.equal(batch.distinct_items[batch.negative_rows], batch.negatives)
            assert torch.equal(batch.distinct_items[batch.shared_rows], batch.shared_negatives)
            assert batch.distinct_items.numel() == batch.items.numel() * 4 + 8  # a fixed shape
    assert sorted(seen) == sorted(zip(users.tolist(), items.tolist(), strict=True))
    assert len(it) == math.ceil(users.size / 16)


def test_a_seed_reproduces_each_batch_in_any_order_and_epochs_differ() -> None:
    def batch(it: DeviceBatches, epoch: int, index: int):
        return it._batch(it._order(epoch), epoch, index)

    a, b = device_batches(MIXED), device_batches(MIXED)
    first = [batch(a, 0, i) for i in range(3)]
    later_first = [batch(b, 0, i) for i in (2, 1, 0)][::-1]
    for x, y in zip(first, later_first, strict=True):
        for name in ("users", "items", "negatives", "shared_negatives"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
    assert not torch.equal(batch(a, 1, 0).users, first[0].users)
    other = device_batches(dataclasses.replace(MIXED, seed=6))
    assert not torch.equal(batch(other, 0, 0).negatives, first[0].negatives)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_per_row_negatives_never_hit_the_users_positives(kind: str) -> None:
    users, items, history = pairs()
    config = BatchConfig(batch_size=64, num_negatives=20, negative_kind=kind, log_q="static")
    it = device_batches(config)
    positives = [set(history.indices[history.indptr[u]:history.indptr[u + 1]].tolist()) for u in range(30)]
    for epoch in range(3):
        with it.epoch(epoch) as batches:
            for batch in batches:
                for u, row in zip(batch.users.tolist(), batch.negatives.tolist(), strict=True):
                    assert not positives[u] & set(row)


def test_log_q_fields_follow_the_host_iterators_definitions() -> None:
    users, items, history = pairs()
    config = dataclasses.replace(MIXED, batch_size=len(users))
    dev = next(iter(device_batches(config)))
    host = next(iter(BatchIterator(users, items, num_items=NUM_ITEMS, config=config, history=history)))
    # The same item and user log-probabilities, looked up for this batch's (other) rows.
    item_log_p = dict(zip(host.items.tolist(), host.item_log_q.tolist(), strict=True))
    np.testing.assert_allclose(dev.item_log_q.cpu().numpy(), [item_log_p[i] for i in dev.items.tolist()], rtol=1e-6)
    degree = np.diff(history.indptr)
    free = NUM_ITEMS - degree[dev.users.cpu().numpy()]
    np.testing.assert_allclose(dev.negative_log_q.cpu().numpy()[:, 0], -np.log(free),
                               rtol=1e-6)
    np.testing.assert_allclose(dev.shared_log_q.cpu().numpy(), -np.log(NUM_ITEMS), rtol=1e-6)
    none = next(iter(device_batches(dataclasses.replace(config, log_q="none"))))
    assert none.item_log_q is None and none.negative_log_q is None and none.shared_log_q is None


def test_streaming_log_q_is_the_host_estimators_and_resumes() -> None:
    """Positives' log-q from the device estimator equal the host estimator's on the same stream of
    batches, and a state_dict taken between epochs continues the estimate exactly."""
    from twotower.kernels._rng import derive_seed
    from twotower.kernels.frequency import StreamingFrequencyEstimator

    config = BatchConfig(batch_size=8, log_q="streaming", streaming_buckets=64, seed=2)
    it = device_batches(config)
    host = StreamingFrequencyEstimator(64, num_hashes=config.streaming_hashes,
                                       learning_rate=config.streaming_learning_rate, seed=derive_seed(2, 3))
    for epoch in range(2):
        with it.epoch(epoch) as batches:
            for batch in batches:
                items = batch.items.cpu().numpy()
                host.update(items)
                want = np.log(host.probability(items) / 8)
                np.testing.assert_allclose(batch.item_log_q.cpu().numpy(), want, rtol=1e-6)
    resumed = device_batches(config)
    resumed.load_state_dict(it.state_dict())
    first = [b.item_log_q for b in resumed.epoch(2)]
    again = [b.item_log_q for b in it.epoch(2)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_ranks_take_disjoint_parts_of_the_one_process_global_batch() -> None:
    config = dataclasses.replace(MIXED, batch_size=8)
    whole = device_batches(dataclasses.replace(config, batch_size=16))
    ranks = [device_batches(config, shard=(r, 2)) for r in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1])
    with whole.epoch(0) as w, ranks[0].epoch(0) as r0, ranks[1].epoch(0) as r1:
        for g, a, b in zip(w, r0, r1, strict=True):
            assert torch.equal(torch.cat([a.users, b.users]), g.users)
            assert torch.equal(torch.cat([a.items, b.items]), g.items)
            assert not torch.equal(a.shared_negatives, b.shared_negatives)  # rank-distinct streams


def test_hard_negatives_come_from_eligible_candidates_from_the_next_epoch_on() -> None:
    users, items, history = pairs()
    config = BatchConfig(batch_size=64, num_negatives=6, negative_kind="hard", hard_rank_range=(1, 5))
    it = device_batches(config)
    positives = [set(history.indices[history.indptr[u]:history.indptr[u + 1]].tolist()) for u in range(30)]
    rng = np.random.default_rng(0)
    candidates = np.stack([rng.permutation(NUM_ITEMS)[:8] for _ in range(30)])
    candidates[3, 1:5] = -1  # user 3: nothing eligible -> uniform draws
    candidates[4, 1:5] = sorted(positives[4])[0]  # user 4: only a positive in range -> uniform draws
    for epoch, mined in ((0, False), (1, True)):
        with it.epoch(epoch) as batches:
            if epoch == 0:
                it.set_candidates(candidates)  # mid-epoch: from the next epoch on
            rows = [(u, row) for b in batches for u, row in zip(b.users.tolist(), b.negatives.tolist(), strict=True)]
        for u, row in rows:
            assert not positives[u] & set(row)
            window = {c for c in candidates[u, 1:5].tolist() if c >= 0} - positives[u]
            if mined and window:
                assert set(row) <= window, (u, row, window)
        if not mined:  # uniform draws before the candidates: most rows leave the window
            assert sum(set(row) <= set(candidates[u, 1:5].tolist()) for u, row in rows) < len(rows) / 2
    assert next(iter(it)).negative_log_q is None  # mined, not drawn from a known law
    with pytest.raises(ValueError, match=r"candidates must be \[U=30, C\]"):
        it.set_candidates(candidates[:5])


def test_bad_settings_and_impossible_negatives_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="not supported in distributed training"):
        device_batches(BatchConfig(log_q="streaming"), shard=(0, 2))
    users = np.array([0, 1, 1])
    items = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="user code 1"):
        DeviceBatches(users, items, num_items=2, config=BatchConfig(num_negatives=1, negative_kind="uniform"),
                      history=CSR.from_pairs(users, items, 2), device=DEVICE)
    # Popularity: item 2 has no training row (weight 0), so user 1 holds every item that can be drawn.
    with pytest.raises(ValueError, match=r"user code 1\) have every item of nonzero popularity weight"):
        DeviceBatches(users, items, num_items=3, config=BatchConfig(num_negatives=1, negative_kind="popularity"),
                      history=CSR.from_pairs(users, items, 2), device=DEVICE)


def test_training_on_device_batches_reaches_the_host_paths_quality(tmp_path) -> None:
    host = fit(tiny_config(epochs=6), tmp_path / "host")
    config = tiny_config(epochs=6)
    config.batches = dataclasses.replace(config.batches, on_device=True)
    device = fit(config, tmp_path / "device")
    got, want = device.valid.metrics["ndcg@10"], host.valid.metrics["ndcg@10"]
    assert got > 1.5 * device.popularity_valid.metrics["ndcg@10"]
    assert abs(got - want) < 0.1 * want, (got, want)


def test_a_run_on_device_batches_resumes_to_the_same_weights(tmp_path, monkeypatch) -> None:
    """An interrupted run on device-built batches, resumed from its last checkpoint, ends where an
    uninterrupted one does (the shuffle and the draws are functions of seed, epoch and batch)."""
    config = tiny_config(epochs=3)
    config.batches = dataclasses.replace(config.batches, on_device=True, num_negatives=2, negative_kind="uniform")
    straight, resumed = straight_and_resumed(config, tmp_path, monkeypatch)
    assert resumed.valid.metrics == straight.valid.metrics
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in straight.history],
                                                                        rel=1e-9)
