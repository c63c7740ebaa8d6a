"""Prometheus metrics of one app (its own registry, so several apps can live in one process) and the
ASGI middleware that counts every request and stamps the model version on every response."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from starlette.exceptions import HTTPException

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
VERSION_HEADER = "x-model-version"


class Metrics:
    """Request counts by endpoint and status, latency, batch sizes, catalogue size, model version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("twotower_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("twotower_request_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("twotower_batch_queries", "queries per scorer / index call",
                               buckets=BATCH_BUCKETS, registry=self.registry)
        self.items = Gauge("twotower_catalogue_items", "items in the live catalogue", registry=self.registry)
        self.model = Info("twotower_model", "the model being served", registry=self.registry)
        self.reloads = Counter("twotower_reloads", "model reloads by outcome", ["outcome"], registry=self.registry)

    def render(self, *, items: int, version: str, path: str) -> bytes:
        """The Prometheus text exposition, with the gauges read now."""
        self.items.set(items)
        self.model.info({"version": version, "path": path})
        return generate_latest(self.registry)


class ObserveMiddleware:
    """Counts and times each HTTP request under its endpoint (unknown paths as "other", so clients
    cannot grow the label set) and adds the `x-model-version` header: the version the endpoint
    answered from (`request.state.model_version`), else the one current when the answer starts."""

    def __init__(self, app: Any, metrics: Metrics, endpoints: set[str], version: Callable[[], str]) -> None:
        self.app, self.metrics, self.endpoints, self.version = app, metrics, endpoints, version

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        start, status = time.perf_counter(), 500

        async def stamped(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                version = scope.get("state", {}).get("model_version") or self.version()
                message["headers"] = [*message.get("headers", []), (VERSION_HEADER.encode(), version.encode())]
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class BodyTooLarge(HTTPException):
    """A request body beyond the server's limit, found while reading it (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuses bodies over `limit` bytes: at once from Content-Length, else while reading (chunked)."""

    def __init__(self, app: Any, limit: int, version: Callable[[], str]) -> None:
        self.app, self.limit, self.version = app, limit, version

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            message = f"the request body exceeds the limit of {self.limit} bytes" if length.isdigit() else \
                "the Content-Length header is not a number"
            body = json.dumps({"error": message, "field": "body", "model_version": self.version()}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 413 if length.isdigit() else 400, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)
