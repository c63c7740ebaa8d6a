"""The pieces of `bench_serve`: a `twotower serve` process on a loopback port, a bounded async load
generator (httpx), and the batch-size histogram read from the server's /metrics.

The load generator runs `concurrency` clients, each sending its next request as soon as the last
one is answered, for `duration` seconds (closed loop: the offered load follows the server), each on
its own keep-alive connection written with asyncio streams (a general client such as httpx does more
work per request, and the generator shares the cores with the server), and counts every non-200
answer and every transport error as a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

TOKEN = "bench-serve-token"


@dataclass
class Load:
    """What one load run measured: per-request latencies (s), failures, wall time."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    seconds: float = 0.0
    versions: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.failures

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies else float("nan")

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_on_sigterm() -> None:
    """Turns SIGTERM into SystemExit in the main thread, so `finally` blocks (and the `server`
    block's stop of its child) run; Python's default for SIGTERM ends the process without them."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def server(model_dir: Path, *flags: str, log: Path, ready_timeout: float = 600) -> Iterator[str]:
    """`twotower serve MODEL_DIR FLAGS` on a free loopback port until the block ends (SIGTERM, then SIGKILL).

    A SIGTERM to this process ends the block too (`exit_on_sigterm`), so stopping the benchmark
    stops its server rather than leaving it running."""
    exit_on_sigterm()
    port = free_port()
    env = {**os.environ, "TWOTOWER_ADMIN_TOKEN": TOKEN}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "twotower", "serve", str(model_dir), "--port", str(port),
                                    *flags], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON: a few lines of asyncio streams, so that the
    load generator, which shares the cores with the server, spends as little of them as it can."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body); reconnects once the server has closed the connection."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict((k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in head[1:] if line))
            payload = await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            raise
        if headers.get("connection") == "close":
            self.close()
        return int(head[0].split()[1]), headers, payload

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def run_load(url: str, *, users: int, k: int, concurrency: int, duration: float, seed: int = 0,
                   during: Callable[[httpx.AsyncClient], Awaitable[None]] | None = None) -> Load:
    """`concurrency` closed-loop clients asking /recommend for one random user each, for `duration`
    seconds, each on its own keep-alive connection; `during(client)`, if given, runs beside them
    with an httpx client (e.g. reloads), and the clients go on until it has finished too."""
    result = Load()
    finished = asyncio.Event()
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    end = start + duration

    async def one_client() -> None:
        connection = Connection(url)
        try:
            while time.perf_counter() < end or (during is not None and not finished.is_set()):
                body = json.dumps({"users": [int(rng.integers(1, users + 1))], "k": k}).encode()
                sent = time.perf_counter()
                try:
                    status, headers, _ = await connection.post("/recommend", body)
                except (OSError, asyncio.IncompleteReadError):
                    status, headers = 0, {}
                if status == 200:
                    result.latencies.append(time.perf_counter() - sent)
                    result.versions.add(headers.get("x-model-version", "?"))
                else:
                    result.failures += 1
        finally:
            connection.close()

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def beside() -> None:
            try:
                await during(client)
            finally:
                finished.set()

        tasks = [one_client() for _ in range(concurrency)]
        if during is not None:
            tasks.append(beside())
        await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - start
    return result


def batch_histogram(url: str) -> dict[str, float]:
    """The server's cumulative batch-size buckets (upper bound -> count) from /metrics."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("twotower_batch_queries_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[bound] = float(line.split()[-1])
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Calls per batch-size bucket between two readings, as non-cumulative counts ("<=1", "2-2", ...)."""
    bounds = [b for b in after if b != "+Inf"]
    counts, previous, low = {}, 0.0, 1
    for bound in [*bounds, "+Inf"]:
        cumulative = after[bound] - before.get(bound, 0.0)
        high = bound if bound == "+Inf" else str(int(float(bound)))
        if cumulative - previous:
            counts[f"{low}-{high}" if str(low) != high else high] = int(cumulative - previous)
        previous, low = cumulative, (int(float(bound)) + 1 if bound != "+Inf" else low)
    return counts
