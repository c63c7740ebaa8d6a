"""The pieces of `bench_serve`: a `twotower serve` process on a loopback port, a bounded async load
generator (httpx), and the batch-size histogram read from the server's /metrics.

The load generator runs `concurrency` clients, each sending its next request as soon as the last
one is answered, for `duration` seconds (closed loop: the offered load follows the server), and
counts every non-200 answer and every transport error as a failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
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


@contextmanager
def server(model_dir: Path, *flags: str, log: Path, ready_timeout: float = 600) -> Iterator[str]:
    """`twotower serve MODEL_DIR FLAGS` on a free loopback port until the block ends (SIGTERM, then SIGKILL)."""
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


async def run_load(url: str, *, users: int, k: int, concurrency: int, duration: float, seed: int = 0,
                   during: Callable[[httpx.AsyncClient], Awaitable[None]] | None = None) -> Load:
    """`concurrency` closed-loop clients asking /recommend for one random user each, for `duration`
    seconds; `during(client)`, if given, runs beside them (e.g. reloads)."""
    result = Load()
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        end = start + duration

        async def one_client() -> None:
            while time.perf_counter() < end:
                body = {"users": [int(rng.integers(1, users + 1))], "k": k}
                sent = time.perf_counter()
                try:
                    response = await client.post("/recommend", json=body)
                    ok = response.status_code == 200
                    if ok:
                        result.versions.add(response.headers["x-model-version"])
                except httpx.HTTPError:
                    ok = False
                if ok:
                    result.latencies.append(time.perf_counter() - sent)
                else:
                    result.failures += 1

        tasks = [one_client() for _ in range(concurrency)]
        if during is not None:
            tasks.append(during(client))
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
