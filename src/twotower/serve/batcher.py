"""Micro-batching: requests that arrive together are answered by one scorer / index call.

The C++ scorer streams the whole item matrix once per call whatever the number of queries, and
hnswlib spreads a batch over its threads, so 64 queries in one call cost far less than 64 calls.
Handlers `await submit(key, payload, size)`; one loop on the event loop gathers jobs into a batch
and runs it on one worker thread, so searches never compete for the cores with each other:

- everything already queued joins the batch, up to `max_batch` queries;
- if the previous batch held more than one job (requests are arriving together), the loop waits
  up to `max_wait_ms` for more; a lone request is run at once, so batching costs it no latency;
- while a batch runs, new jobs queue up and form the next one;
- a batch of one job runs on the event loop's thread itself: handing it to the worker thread and
  back costs two thread wake-ups, which on a busy machine can outweigh the search; larger batches
  go to the worker, so the loop keeps reading requests while the scorer (which releases the GIL) runs.

Jobs of one batch are grouped by `key` (e.g. the model version, k and the kind of query) and each
group is one `run(key, payloads)` call returning one result per payload. With batching off, every
job is its own call, run on the default thread pool concurrently (the baseline of the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

Runner = Callable[[Hashable, list[Any]], list[Any]]


@dataclass
class _Job:
    key: Hashable
    payload: Any
    size: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gathers concurrent jobs into batched calls of `run` (see the module docstring).

    Args:
        run: `run(key, payloads) -> results`, one result per payload; called on a worker thread.
        max_batch: most queries (the jobs' `size`s summed) in one batch.
        max_wait_ms: longest wait for more jobs while requests arrive together.
        enabled: False runs every job alone, concurrently.
        observe: called with each batch's number of queries (metrics).
    """

    def __init__(self, run: Runner, *, max_batch: int = 64, max_wait_ms: float = 2.0, enabled: bool = True,
                 observe: Callable[[int], None] | None = None) -> None:
        self._run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.enabled = enabled
        self._observe = observe or (lambda size: None)
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twotower-batch")
        self._last_jobs = 1

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Starts the gathering loop on the running event loop."""
        self._queue = asyncio.Queue()
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="twotower-batcher")

    async def stop(self) -> None:
        """Stops the loop; jobs still queued fail with RuntimeError (the server stops only once no
        request is in flight, so there are none when it stops gracefully)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._worker.shutdown(wait=True)

    async def submit(self, key: Hashable, payload: Any, size: int = 1) -> Any:
        """The result of `payload`, computed in a batch with the jobs of the same key around it."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self._observe(size)
            return (await loop.run_in_executor(None, self._run, key, [payload]))[0]
        if self._queue is None or not self.running:
            raise RuntimeError("the batcher is not running (start it inside the server's lifespan)")
        job = _Job(key, payload, size, loop.create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self._last_jobs = len(batch)
            self._observe(sum(job.size for job in batch))
            groups: dict[Hashable, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.key, []).append(job)
            for key, jobs in groups.items():
                payloads = [job.payload for job in jobs]
                try:
                    if len(batch) == 1:
                        results = self._run(key, payloads)
                    else:
                        results = await loop.run_in_executor(self._worker, self._run, key, payloads)
                except Exception as err:  # every job of the failed call gets the error
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(err)
                    continue
                for job, result in zip(jobs, results, strict=True):
                    if not job.future.done():  # a client that went away cancelled its future
                        job.future.set_result(result)

    async def _gather(self) -> list[_Job]:
        """The next batch: the first job, everything queued behind it, and, while requests arrive
        together, whatever comes within `max_wait`."""
        queue, clock = self._queue, asyncio.get_running_loop().time
        batch = [await queue.get()]
        size = batch[0].size
        deadline = clock() + self.max_wait
        while size < self.max_batch:
            if not queue.empty():
                job = queue.get_nowait()
            elif self._last_jobs > 1 and (left := deadline - clock()) > 0:
                try:
                    job = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
            else:
                break
            batch.append(job)
            size += job.size
        return batch
