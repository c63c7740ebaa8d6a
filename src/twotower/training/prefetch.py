"""An epoch's batches prepared ahead of the training step by a worker thread (`EpochBatches`).

The worker builds about `prefetch` batches ahead of the consumer and hands them over in chunks of
ceil(prefetch / 2) rather than one at a time: every hand-off through the queue costs the training
thread a GIL round trip. What a batch is does not matter here: `twotower.training.batches` gives the
function that builds batch `index`, and the order of the batches never depends on the thread timing.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["EpochBatches"]

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(make: Callable[[int], Any], num_batches: int, chunk: int, out: queue.Queue, stop: threading.Event) -> None:
    """Worker loop: puts lists of `chunk` consecutive batches, then `_END` (or a `_Failure`); gives up
    as soon as `stop` is set."""

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    for start in range(0, num_batches, chunk):
        batches = []
        try:
            for index in range(start, min(start + chunk, num_batches)):
                batches.append(make(index))
        except BaseException as error:  # the batches before it first, then the error for the consumer to raise
            if not batches or put(batches):
                put(_Failure(error))
            return
        if stop.is_set() or not put(batches):
            return
    put(_END)


class EpochBatches(Generic[T]):
    """Iterator over one epoch's batches, prepared by a worker thread about `prefetch` batches ahead.

    `make(index)` builds batch `index` (called from the worker thread, so it must read only a
    snapshot); `finish(batch)` runs on each batch in the consumer's thread, in consumption order.
    Without a worker (`prefetch` 0) the batches are built on demand in the consumer.

    Stopping early: leave a `with` block, call `close()`, or drop the iterator; the worker stops and
    is joined. An exception raised while preparing a batch is re-raised here, in the consumer.
    """

    def __init__(self, make: Callable[[int], T], num_batches: int, prefetch: int, finish: Callable[[T], T]) -> None:
        self._make = make
        self._num_batches = num_batches
        self._finish = finish
        self._next = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ready: collections.deque[T] = collections.deque()
        if prefetch > 0 and num_batches > 0:
            # One chunk waits in the queue while the consumer works through the previous one.
            self._queue: queue.Queue = queue.Queue(maxsize=1)
            self._stop = threading.Event()
            chunk = -(-prefetch // 2)
            self._thread = threading.Thread(
                target=_produce, args=(make, num_batches, chunk, self._queue, self._stop), name="twotower-batches",
                daemon=True,
            )
            self._thread.start()

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> EpochBatches[T]:
        return self

    def __next__(self) -> T:
        if self._closed or self._next >= self._num_batches:
            self.close()
            raise StopIteration
        if self._thread is None:
            batch = self._make(self._next)
        else:
            if not self._ready:
                item = self._get()
                if isinstance(item, _Failure):
                    self.close()
                    raise item.error
                if item is _END:  # cannot happen before num_batches batches; kept for safety
                    self.close()
                    raise StopIteration
                self._ready.extend(item)
            batch = self._ready.popleft()
        self._next += 1
        return self._finish(batch)

    def _get(self) -> Any:
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self.close()
                    raise RuntimeError("the batch worker thread ended without a result") from None

    def close(self) -> None:
        """Stops the worker (if any) and waits for it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._stop.set()
            while True:  # unblock a worker waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join()

    def __enter__(self) -> EpochBatches[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
