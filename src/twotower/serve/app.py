"""`create_app`: the service as an ASGI application (FastAPI), ready for uvicorn or another app.

Errors: every refused request gets a JSON body `{"error", "field", "model_version"}` with a 4xx
status: `ApiError`s of the endpoints, FastAPI's validation errors (the field from their location),
and HTTP errors (unknown path, wrong method, body too large). An unexpected exception is a 500 with
the same shape, logged, and the server stays up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from twotower import __version__
from twotower.serve.batcher import MicroBatcher
from twotower.serve.endpoints import ApiError, Service, router
from twotower.serve.holder import ModelHolder, load_served
from twotower.serve.metrics import BodyLimitMiddleware, Metrics, ObserveMiddleware
from twotower.serve.options import ServeOptions
from twotower.serve.queries import run_batch

log = logging.getLogger("twotower.serve")


def create_app(model_dir: str | os.PathLike[str], *, ann: bool = False, options: ServeOptions | None = None) -> FastAPI:
    """The service of a model directory (loaded now, so a bad directory fails here, not at the first request).

    Args:
        model_dir: a model directory written by `twotower train` (RUN/model).
        ann: search its saved HNSW index (`twotower index build MODEL_DIR`) instead of every item exactly.
        options: batching, limits and the admin token (`ServeOptions()` by default: admin endpoints off).

    Raises:
        FileNotFoundError, ValueError: as `Recommender.load`.
    """
    options = options or ServeOptions()
    threads = options.search_threads
    holder = ModelHolder(load_served(model_dir, ann=ann, generation=1, search_threads=threads), ann=ann,
                         search_threads=threads)
    metrics = Metrics()
    batcher = MicroBatcher(run_batch, max_batch=options.max_batch, max_wait_ms=options.max_wait_ms,
                           enabled=options.batching, observe=metrics.batch.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()  # uvicorn gets here once the requests in flight are answered

    app = FastAPI(title="twotower", version=__version__, lifespan=lifespan,
                  description="Two-tower retrieval: recommendations, item-to-item, live item updates.")
    app.state.service = Service(holder, batcher, options, metrics)
    app.include_router(router)
    _add_error_handlers(app, holder)
    version = lambda: holder.current.version  # noqa: E731
    app.add_middleware(BodyLimitMiddleware, limit=options.max_body_bytes, version=version)
    app.add_middleware(ObserveMiddleware, metrics=metrics, endpoints={route.path for route in router.routes},
                       version=version)
    return app


def _add_error_handlers(app: FastAPI, holder: ModelHolder) -> None:
    def error(status: int, message: str, field: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": message, "field": field, "model_version": holder.current.version}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return error(err.status, err.message, err.field, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        field, message = _validation_message(err.errors())
        return error(422, message, field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail), "body" if err.status_code == 413 else None, err.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(err).__name__}", None)


def _validation_message(errors: Sequence[Any]) -> tuple[str, str]:
    """(field, message) of FastAPI's first validation error: the field as a dotted path into the body
    (`users.3`, `items.0.vector`), or "body" for a body that is not a JSON object."""
    first = errors[0] if errors else {}
    kind = first.get("type")
    loc = [str(part) for part in first.get("loc", ()) if part != "body" and not _is_type_tag(part)]
    if kind == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid")
        return "body", f"the body is not valid JSON ({reason}, at byte {loc[0] if loc else '?'})"
    if not loc:
        return "body", ("the body must be a JSON object sent as Content-Type: application/json"
                        if kind != "missing" else "this endpoint needs a JSON body")
    field = ".".join(loc)
    return field, f"{field}: {first.get('msg', 'invalid value')}"


def _is_type_tag(part: Any) -> bool:
    """pydantic names the member of a union in an error's location (`id.int`, `vector.list[...]`);
    no field of the request bodies is called like a type, so such parts are dropped from the field."""
    return isinstance(part, str) and (part in ("int", "str", "float", "bool", "none") or "[" in part)
