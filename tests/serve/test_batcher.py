"""`MicroBatcher` alone: concurrent jobs share calls, each gets its own result, different keys never
share a call, a failing call fails only its own jobs, a lone job does not wait, and with batching off
every job is its own call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from twotower.serve.batcher import MicroBatcher


class Recorder:
    """A runner that doubles payloads and records every call (key, payloads)."""

    def __init__(self, delay: float = 0.01) -> None:
        self.calls: list[tuple] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, key, payloads):
        self.calls.append((key, list(payloads)))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if key == "boom":
            raise ValueError("bad batch")
        return [p * 2 for p in payloads]


async def _gather(batcher: MicroBatcher, jobs):
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(key, p) for key, p in jobs), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_jobs_share_calls_and_keys_never_mix() -> None:
    runner, sizes = Recorder(), []
    batcher = MicroBatcher(runner, max_batch=64, max_wait_ms=50, observe=sizes.append)
    jobs = [("a" if i % 3 else "b", i) for i in range(30)]
    assert asyncio.run(_gather(batcher, jobs)) == [i * 2 for i in range(30)]
    assert len(runner.calls) < 30 and max(sizes) > 1 and sum(sizes) == 30
    for key, payloads in runner.calls:
        assert all(("a" if p % 3 else "b") == key for p in payloads)
    assert len(runner.threads) <= 2  # the loop's own thread (lone jobs) and one worker: calls never overlap


def test_max_batch_caps_a_call() -> None:
    runner, sizes = Recorder(), []
    batcher = MicroBatcher(runner, max_batch=4, max_wait_ms=50, observe=sizes.append)
    asyncio.run(_gather(batcher, [("a", i) for i in range(20)]))
    assert max(len(payloads) for _, payloads in runner.calls) <= 4 and sum(sizes) == 20


def test_a_failing_call_fails_only_its_jobs() -> None:
    batcher = MicroBatcher(Recorder(), max_wait_ms=20)
    out = asyncio.run(_gather(batcher, [("boom", 1), ("a", 2), ("boom", 3)]))
    assert isinstance(out[0], ValueError) and out[1] == 4 and isinstance(out[2], ValueError)


def test_a_lone_job_does_not_wait_for_company() -> None:
    batcher = MicroBatcher(Recorder(delay=0), max_wait_ms=500)

    async def lone() -> float:
        await batcher.start()
        try:
            start = time.perf_counter()
            assert await batcher.submit("a", 1) == 2
            return time.perf_counter() - start
        finally:
            await batcher.stop()

    assert asyncio.run(lone()) < 0.25


def test_batching_off_is_one_call_per_job() -> None:
    runner = Recorder()
    batcher = MicroBatcher(runner, enabled=False)
    assert asyncio.run(_gather(batcher, [("a", i) for i in range(10)])) == [i * 2 for i in range(10)]
    assert sorted(len(payloads) for _, payloads in runner.calls) == [1] * 10


def test_submit_before_start_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(MicroBatcher(Recorder()).submit("a", 1))
