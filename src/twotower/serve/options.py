"""The service's settings and the start-up safety check; standard library only, so `twotower serve
--help` and a refused start load neither torch nor FastAPI."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields

TOKEN_VARIABLE = "TWOTOWER_ADMIN_TOKEN"


@dataclass(frozen=True)
class ServeOptions:
    """How a service batches, what it accepts and who may change it.

    Attributes:
        max_batch: most queries gathered into one scorer / index call.
        max_wait_ms: longest a request waits for others to join its batch (only while requests are
            arriving together: a lone request is searched at once).
        batching: gather concurrent requests at all (off: one search call per request, in parallel).
        admin_token: the bearer token of the admin and item-mutation endpoints; None disables them.
        max_k: largest `k` a request may ask for.
        max_queries: most users or items in one request.
        max_body_bytes: largest request body.
        workers: server processes (each holds its own model, so item updates and reload need 1).
        search_threads: threads of one scorer / index call (None: the library's default, all cores;
            fewer keep latency steady on a machine shared with other work).
    """

    max_batch: int = 64
    max_wait_ms: float = 2.0
    batching: bool = True
    admin_token: str | None = None
    max_k: int = 1000
    max_queries: int = 1000
    max_body_bytes: int = 1 << 20
    workers: int = 1
    search_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_k", "max_queries", "max_body_bytes", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if self.search_threads is not None and (isinstance(self.search_threads, bool) or
                                                not isinstance(self.search_threads, int) or self.search_threads < 1):
            raise ValueError(f"search_threads must be an integer >= 1 or None; got {self.search_threads!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be a number of milliseconds in [0, 1000]; got {self.max_wait_ms!r}")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ValueError("admin_token must be at least 8 characters long")

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def token_from_environment(token: str | None) -> str | None:
    """The admin token given, else `TWOTOWER_ADMIN_TOKEN` (unset or empty: None)."""
    return token or os.environ.get(TOKEN_VARIABLE) or None


def is_loopback(host: str) -> bool:
    """Whether `host` binds the loopback interface only ("localhost", 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, admin_token: str | None) -> None:
    """Refuses to serve beyond this machine without a token: anyone who reaches the port could
    otherwise rewrite the catalogue.

    Raises:
        ValueError: `host` is not a loopback address and no admin token is set.
    """
    if not is_loopback(host) and not admin_token:
        raise ValueError(f"--host {host} serves beyond this machine: set an admin token first "
                         f"(--admin-token or {TOKEN_VARIABLE}), or bind 127.0.0.1")
