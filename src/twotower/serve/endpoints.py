"""The HTTP endpoints. Each reads the current model bundle once (`Service.use`), so its answer and the
`model_version` it reports come from one version even while a reload swaps the next one in.

Every mistake in a request is an `ApiError` (4xx, a JSON body naming the field), never a 500:
unknown users and items of /recommend and /similar are reported per id in the answer instead.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from twotower.retrieval.recommend import UnknownIdError
from twotower.retrieval.scoring import inner_product_form
from twotower.serve.batcher import MicroBatcher
from twotower.serve.holder import ModelHolder, Served
from twotower.serve.metrics import Metrics
from twotower.serve.options import TOKEN_VARIABLE, ServeOptions
from twotower.serve.schemas import (
    DeleteItemsBody,
    FeaturesBody,
    PutItemsBody,
    RecommendBody,
    ReloadBody,
    SimilarBody,
)

MAX_ABS_VECTOR_VALUE = 1e6  # keeps every score of a raw vector finite in float32
INPUT_ERRORS = (ValueError, TypeError, OverflowError, IndexError, KeyError, RuntimeError)  # from the towers


class ApiError(Exception):
    """A request the service refuses: HTTP `status`, a message, and the field at fault (None: the request)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class Service:
    """What the endpoints share: the model holder, the batcher, the settings and the metrics."""

    holder: ModelHolder
    batcher: MicroBatcher
    options: ServeOptions
    metrics: Metrics

    def use(self, request: Request) -> Served:
        """The bundle this request answers from, recorded for the version header."""
        served = self.holder.current
        request.state.model_version = served.version
        return served

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.options.max_k:
            raise ApiError(422, f"k must be in [1, {self.options.max_k}]; got {k}", "k")

    def check_count(self, values: list[Any] | None, field: str) -> None:
        if values is not None and len(values) > self.options.max_queries:
            raise ApiError(422, f"{field} holds {len(values)} entries; at most {self.options.max_queries} "
                           "per request", field)

    def check_admin(self, request: Request) -> None:
        """Admin and item-mutation endpoints: a bearer token, and a single worker process."""
        token = self.options.admin_token
        if token is None:
            raise ApiError(403, f"item updates and reload are off: start the server with --admin-token or "
                           f"{TOKEN_VARIABLE}", "authorization")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "a valid bearer token is required (Authorization: Bearer TOKEN)", "authorization")
        if self.options.workers > 1:
            raise ApiError(409, "item updates and reload need --workers 1: each worker process holds its own "
                           "catalogue and model")


router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


def _json(served: Served, content: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({"model_version": served.version, **content}, status_code=status)


def _answers(queries: list[Any], codes: list[int], answers: list[Any], name: str) -> list[dict[str, Any]]:
    """Per query: its items and scores, or why it has none (an unknown id)."""
    found = iter(answers)
    return [{name: query, **({"items": (a := next(found)).items, "scores": a.scores} if code >= 0 else
                            {"error": f"unknown {name} id"})} for query, code in zip(queries, codes, strict=True)]


# -- queries ----------------------------------------------------------------------------------------
def _begin_query(request: Request, k: int, **counted: list[Any] | None) -> tuple[Service, Served]:
    """A query's preamble: the service, the version it is answered from, and its k and list sizes
    checked (in the order given, so the first bad field is the one named)."""
    service = _service(request)
    served = service.use(request)
    service.check_k(k)
    for field_name, values in counted.items():
        service.check_count(values, field_name)
    return service, served


@router.post("/recommend")
async def recommend(body: RecommendBody, request: Request) -> JSONResponse:
    """Top-k items for users seen in training; an unknown user gets an `error` entry, not a failed request."""
    service, served = _begin_query(request, body.k, users=body.users)
    codes = served.user_ids.codes(body.users)
    known = [code for code in codes if code >= 0]
    key = ("users", served, body.k, body.exclude_seen)
    answers = await service.batcher.submit(key, known, len(known)) if known else []
    return _json(served, {"results": _answers(body.users, codes, answers, "user")})


@router.post("/recommend/features")
async def recommend_features(body: FeaturesBody, request: Request) -> JSONResponse:
    """Top-k items for new users, from side features and/or the items they used (cold start)."""
    service, served = _begin_query(request, body.k, features=body.features, history=body.history)
    if body.features is None and body.history is None:
        raise ApiError(422, "give features, history or both", "features")
    count = len(body.features if body.features is not None else body.history)
    if count == 0:
        return _json(served, {"results": []})
    try:
        queries, history = await run_in_threadpool(served.recommender.new_user_queries, body.features,
                                                   history=body.history)
    except UnknownIdError as err:
        raise ApiError(422, str(err), "history") from None
    except INPUT_ERRORS as err:
        raise ApiError(422, str(err), "history" if "history" in str(err) else "features") from None
    exclude = history if body.exclude_history else None
    if history is not None and served.recommender.trained.graph is not None:  # the filter reads the history
        key, payload = ("histories", served, body.k), (queries, exclude, history)
    else:
        key, payload = ("vectors", served, body.k), (queries, exclude)
    answers = await service.batcher.submit(key, payload, len(queries))
    return _json(served, {"results": [{"user": i, "items": a.items, "scores": a.scores}
                                      for i, a in enumerate(answers)]})


@router.post("/similar")
async def similar(body: SimilarBody, request: Request) -> JSONResponse:
    """The k items nearest each given item (itself left out); an unknown item gets an `error` entry."""
    service, served = _begin_query(request, body.k, items=body.items)
    queries, exclude, labels = served.catalogue.item_queries(body.items)
    codes = labels.tolist()
    answers = await service.batcher.submit(("vectors", served, body.k), (queries, exclude), len(queries)) \
        if len(queries) else []
    return _json(served, {"results": _answers(body.items, codes, answers, "item")})


# -- item updates -----------------------------------------------------------------------------------
@router.put("/items")
async def put_items(body: PutItemsBody, request: Request) -> JSONResponse:
    """Adds items or replaces their vectors: raw vectors (the item tower's output) or side features
    through the item tower. Visible to the next query."""
    service = _service(request)
    service.check_admin(request)
    served = service.use(request)
    service.check_count(body.items, "items")
    vectors = await run_in_threadpool(_item_vectors, served, body)
    try:
        await run_in_threadpool(served.catalogue.upsert, [item.id for item in body.items], vectors)
    except ValueError as err:
        raise ApiError(422, str(err), "items") from None
    return _json(served, {"upserted": len(body.items), "items": len(served.catalogue)})


def _item_vectors(served: Served, body: PutItemsBody) -> np.ndarray:
    """Search vectors [n, D'] of the items of a PUT, in order."""
    catalogue = served.catalogue
    width = catalogue.dim - (1 if catalogue.scoring == "neg_l2" else 0)
    out = np.zeros((len(body.items), catalogue.dim), dtype=np.float32)
    by_features = []
    for i, item in enumerate(body.items):
        if (item.vector is None) == (item.features is None):
            raise ApiError(422, "give exactly one of vector and features", f"items.{i}")
        if item.vector is not None:
            out[i] = _raw_vector(item.vector, width, catalogue.scoring, f"items.{i}.vector")
        else:
            by_features.append(i)
    if by_features:
        try:
            out[by_features] = served.recommender.new_item_vectors([body.items[i].features for i in by_features])
        except INPUT_ERRORS as err:
            raise ApiError(422, str(err), f"items.{by_features[0]}.features") from None
    return out


def _raw_vector(values: list[float], width: int, scoring: str, field: str) -> np.ndarray:
    """An item tower output as a search vector (normalised for cosine, the neg_l2 form's columns added)."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (width,):
        raise ApiError(422, f"a vector must hold D = {width} numbers; got {len(values)}", field)
    if not np.all(np.abs(vector) <= MAX_ABS_VECTOR_VALUE):
        raise ApiError(422, f"vector values must be finite numbers within +-{MAX_ABS_VECTOR_VALUE:g}", field)
    if scoring == "cosine":
        norm = np.linalg.norm(vector)
        if not norm > 0:
            raise ApiError(422, "a cosine model's vector must not be all zeros", field)
        vector = vector / norm
    return inner_product_form(None, vector[None, :].astype(np.float32), scoring)[1][0]


@router.delete("/items")
async def delete_items(body: DeleteItemsBody, request: Request) -> JSONResponse:
    """Deletes items by external id, all or none; never returned by a query that starts after this answer."""
    service = _service(request)
    service.check_admin(request)
    served = service.use(request)
    service.check_count(body.items, "items")
    try:
        await run_in_threadpool(served.catalogue.delete, body.items)
    except UnknownIdError as err:
        raise ApiError(404, f"unknown item id(s) {err.ids[:10]}: not in the catalogue; nothing deleted",
                       "items") from None
    return _json(served, {"deleted": len(body.items), "items": len(served.catalogue)})


# -- admin and health -------------------------------------------------------------------------------
@router.post("/admin/reload")
async def reload(body: ReloadBody, request: Request) -> JSONResponse:
    """Loads a model directory (default: the one served) with its index beside the current one and
    swaps it in at once; requests in flight finish on the old version. 202 at once, or 200 with the
    new version when `wait`."""
    service = _service(request)
    service.check_admin(request)
    served = service.use(request)
    model_dir = body.model_dir or str(served.path)
    if not service.holder.begin_reload():
        raise ApiError(409, "a reload is already running", "model_dir")
    if not body.wait:
        threading.Thread(target=_reload_quietly, args=(service, model_dir), name="twotower-reload").start()
        return _json(served, {"status": "loading", "model_dir": model_dir}, status=202)
    try:
        new = await run_in_threadpool(service.holder.finish_reload, model_dir)
    except Exception as err:
        service.metrics.reloads.labels("failed").inc()
        raise ApiError(422, f"cannot load {model_dir}: {err}", "model_dir") from None
    service.metrics.reloads.labels("done").inc()
    request.state.model_version = new.version
    return _json(new, {"status": "ready", "model_dir": model_dir})


def _reload_quietly(service: Service, model_dir: str) -> None:
    """A background reload; a failure is kept in `holder.reload_error` (shown by /healthz)."""
    try:
        service.holder.finish_reload(model_dir)
        service.metrics.reloads.labels("done").inc()
    except Exception:
        service.metrics.reloads.labels("failed").inc()


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Alive: the version served, the catalogue size, and the state of the last reload."""
    service = _service(request)
    served = service.use(request)
    holder = service.holder
    return _json(served, {"status": "ok", "items": len(served.catalogue), "reload": holder.reload_state,
                          "reload_error": holder.reload_error})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready to answer queries: a model is loaded and the batcher runs (503 otherwise)."""
    service = _service(request)
    served = service.use(request)
    ready = service.batcher.running or not service.batcher.enabled
    return _json(served, {"ready": ready}, status=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text: requests by endpoint and status, latency, batch sizes, catalogue size, version."""
    service = _service(request)
    served = service.use(request)
    text = service.metrics.render(items=len(served.catalogue), version=served.version, path=str(served.path))
    return Response(text, media_type=CONTENT_TYPE_LATEST)
