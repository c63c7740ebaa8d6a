"""The worker thread that prepares an epoch's batches ahead: it runs ahead by the prefetch depth and
no further, stops when the consumer stops early, and hands a batch's exception to the consumer."""

from __future__ import annotations

import threading
import time

import pytest

import twotower.training.batches as batches_module
from twotower.training.batches import BatchConfig, BatchIterator

from .test_batches import make_pairs


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "twotower-batches"]


def test_early_stop_shuts_the_worker_down():
    users, items, n_items = make_pairs(num_users=300, per_user=30)
    it = BatchIterator(users, items, num_items=n_items, config=BatchConfig(batch_size=8, prefetch=2))
    with it.epoch(0) as batches:
        next(batches)
        assert worker_threads(), "no worker thread while iterating"
    assert not worker_threads(), "worker still alive after leaving the with block"
    for _batch in it.epoch(1):  # dropped by a break: garbage collection closes it
        break
    del _batch
    deadline = time.monotonic() + 5
    while worker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not worker_threads()


def test_prefetch_runs_ahead_of_the_consumer(monkeypatch):
    users, items, n_items = make_pairs()
    made: list[int] = []
    original = batches_module._BatchMaker.__call__

    def counting(self, index):
        made.append(index)
        return original(self, index)

    monkeypatch.setattr(batches_module._BatchMaker, "__call__", counting)
    it = BatchIterator(users, items, num_items=n_items, config=BatchConfig(batch_size=4, prefetch=3))
    with it.epoch(0) as batches:
        next(batches)
        deadline = time.monotonic() + 5
        while len(made) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # it must stop there
        # Chunks of ceil(3 / 2) = 2: one handed over (one of its batches consumed), one waiting in the
        # queue, one more built and blocked on the full queue.
        assert made == list(range(6))


def test_worker_exception_is_reraised_in_the_consumer(monkeypatch):
    users, items, n_items = make_pairs()
    original = batches_module.samplers.uniform_negatives
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise FloatingPointError("sampler exploded on batch 2")
        return original(*args, **kwargs)

    monkeypatch.setattr(batches_module.samplers, "uniform_negatives", failing)
    it = BatchIterator(
        users, items, num_items=n_items, config=BatchConfig(batch_size=8, num_negatives=2, negative_kind="uniform")
    )
    seen = []
    with pytest.raises(FloatingPointError, match="batch 2"):
        for b in it.epoch(0):
            seen.append(b.index)
    assert seen == [0, 1]
    deadline = time.monotonic() + 5
    while worker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not worker_threads()
