"""Small models trained here, and real servers: `twotower serve` in a subprocess on a free loopback
port, waited for on /readyz and stopped with SIGTERM (SIGKILL after a grace period) even when a test
fails. Nothing here reads ../shared/data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow.csv as pacsv
import pytest

from tests.retrieval.test_recommend import SYNTHETIC, train
from twotower.cli import main
from twotower.data.synthetic import generate_with_truth

TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
USERS = [1, 2, 17, 300]


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory) -> Path:
    """A dot-product matrix-factorisation model with its HNSW index (300 users, 200 items)."""
    directory = train(tmp_path_factory.mktemp("plain"), *SYNTHETIC, "--model.scoring", "dot")
    assert main(["index", "build", str(directory)]) == 0
    return directory


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> Path:
    """The same data and settings from another seed: different weights, hence another version."""
    directory = train(tmp_path_factory.mktemp("other"), *SYNTHETIC, "--model.scoring", "dot", "--train.seed", "1")
    assert main(["index", "build", str(directory)]) == 0
    return directory


@pytest.fixture(scope="session")
def graph_model(tmp_path_factory) -> Path:
    """The plain model's data and settings with a graph filter blended in at weight 2 (its HNSW index too)."""
    directory = train(tmp_path_factory.mktemp("graph"), *SYNTHETIC, "--model.scoring", "dot", "--model.graph_filter",
                      "--model.graph_filter_weights", "2.0", "--model.graph_filter_rank", "8")
    assert main(["index", "build", str(directory)]) == 0
    return directory


@pytest.fixture(scope="session")
def feature_model(tmp_path_factory) -> Path:
    """A cosine model whose user tower reads a segment and pools histories, and whose item tower
    reads a category, tags and a dense quality score (for cold-start users and items by features)."""
    root = tmp_path_factory.mktemp("features")
    table, truth = generate_with_truth(300, 200, interactions_per_user=20, seed=0)
    pacsv.write_csv(table, root / "interactions.csv")
    pacsv.write_csv(truth.user_table, root / "users.csv")
    pacsv.write_csv(truth.item_table, root / "items.csv")
    return train(root / "run", "--data.path", str(root / "interactions.csv"), "--data.user_features",
                 str(root / "users.csv"), "--data.item_features", str(root / "items.csv"),
                 "--model.scoring", "cosine", "--model.user_history")


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **options)

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, *flags: str, log_dir: Path, token: str | None = TOKEN) -> Iterator[Server]:
    """`twotower serve MODEL_DIR --port P FLAGS` until the block ends (then SIGTERM, SIGKILL if needed)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TWOTOWER_ADMIN_TOKEN"}
    if token:
        env["TWOTOWER_ADMIN_TOKEN"] = token
    log = log_dir / f"server-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "twotower", "serve", str(model_dir), "--port", str(port),
                                    *flags], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        server = Server(f"http://127.0.0.1:{port}", process, log)
        wait_ready(server)
        yield server
    finally:
        stop(process)


def wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited ({server.process.returncode}): {server.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready in {timeout} s: {server.log.read_text()[-2000:]}")


def stop(process: subprocess.Popen, grace: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def as_lists(answers) -> list[tuple[list, list]]:
    """(items, scores) of `Recommendation`s as plain lists, as the server sends them."""
    return [(a.items.tolist(), [float(s) for s in a.scores]) for a in answers]


def results(response: httpx.Response) -> list[tuple[list, list]]:
    assert response.status_code == 200, response.text
    return [(r["items"], r["scores"]) for r in response.json()["results"]]


def strong_item_for(query: np.ndarray, scale: float = 100.0) -> list[float]:
    """A dot-model item vector that outscores every trained item for the user whose vector is `query`."""
    return (np.asarray(query, dtype=np.float64) * scale).tolist()
