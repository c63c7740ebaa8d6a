"""Graceful shutdown: SIGTERM stops new connections, lets the requests in flight finish with their
answers, and the process exits after a clean shutdown."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx
import pytest

from tests.serve.conftest import as_lists, running_server, stop
from twotower.retrieval.recommend import Recommender


@pytest.mark.slow  # a server's whole life: CI only
def test_sigterm_finishes_requests_in_flight(plain_model, tmp_path) -> None:
    body = json.dumps({"users": [1, 2], "k": 5}).encode()
    head = (f"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with running_server(plain_model, log_dir=tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        in_flight = []
        for _ in range(3):  # requests whose bodies are still arriving when SIGTERM comes
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(head + body[:10])
            in_flight.append(sock)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None  # still serving what it accepted
        answers = []
        for sock in in_flight:
            sock.sendall(body[10:])
            answers.append(_read_all(sock))
            sock.close()
        # uvicorn re-raises the signal once it has shut down gracefully, so the exit is by SIGTERM
        assert stop(server.process) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log.read_text()
        try:
            refused = httpx.get(f"{server.url}/healthz", timeout=2).status_code
        except httpx.TransportError:
            refused = "refused"
    expected = as_lists(Recommender.load(plain_model).recommend([1, 2], k=5))
    for raw in answers:
        status, _, payload = raw.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), raw[:200]
        assert [(r["items"], r["scores"]) for r in json.loads(payload)["results"]] == expected
    assert refused == "refused"


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
