"""`twotower serve`: an HTTP retrieval service (FastAPI + uvicorn, the `serve` extra).

    options.py    the service's settings and the loopback / token check (standard library only)
    catalogue.py  the live catalogue: items added, replaced and deleted while serving (copy-on-write
                  state; HNSW changed in place under its readers-writer lock)
    holder.py     the served model + catalogue + version, and the hot swap of a reload
    batcher.py    micro-batching: concurrent requests answered by one scorer / index call
    queries.py    what one batched call does: tower pass, search, split per request
    schemas.py    request bodies (validated by FastAPI, published at /docs)
    metrics.py    Prometheus metrics, the version header, the body-size limit
    endpoints.py  the HTTP endpoints
    app.py        `create_app`: the pieces put together, error handlers
    run.py        `serve`: uvicorn, one or several worker processes

`from twotower.serve import create_app` needs the extra (`pip install 'twotower[serve]'`); without it
`import twotower` and `import twotower.serve` still work, and the error says what to install.

Example (embedding the service in another ASGI app):

    from twotower.serve import ServeOptions, create_app
    app = create_app("runs/ml-100k/model", options=ServeOptions(admin_token="a-long-secret"))
"""

from __future__ import annotations

from typing import Any

from twotower._lazy import lazy_exports
from twotower.serve.options import ServeOptions

__all__ = ["ServeOptions", "create_app", "require_extra"]

EXTRA_HINT = "pip install 'twotower[serve]'"


def require_extra() -> None:
    """Raises ImportError naming the install command when FastAPI, uvicorn or prometheus-client is missing."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(f"twotower serve needs the serve extra ({err.name} is not installed): {EXTRA_HINT}") from None


_lazy_getattr, __dir__ = lazy_exports(globals(), {"create_app": "twotower.serve.app"})


def __getattr__(name: str) -> Any:
    """`create_app` is imported on first use, after checking the extra, so the library never needs FastAPI."""
    if name == "create_app":
        require_extra()
    return _lazy_getattr(name)
