"""Hypothesis throws well-typed, ill-typed and random JSON (and random bytes) at every endpoint of a
live server: no answer is a 5xx, every refusal is a JSON body naming the model version, the server
stays up, and afterwards its answers still equal the library's."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.conftest import AUTH, USERS, as_lists, results, running_server
from twotower.retrieval.recommend import Recommender

pytestmark = pytest.mark.slow

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.integers(-3, 260) | st.sampled_from(["1", "17", "x", "", "9" * 30]) | st.integers(2**62, 2**66)


def maybe(strategy):
    """Mostly the well-typed value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, json_values)


def body(**fields):
    """A JSON object with any subset of `fields`, sometimes an unknown key beside them."""
    optional = {name: maybe(value) for name, value in fields.items()}
    return st.fixed_dictionaries({}, optional=optional) | st.fixed_dictionaries(
        {}, optional={**optional, "extra": json_values})


ks = st.integers(-2, 1200)
features = st.dictionaries(st.sampled_from(["segment", "category", "tags", "quality", "nope"]), json_values,
                           max_size=3)
vectors = st.lists(st.floats(width=32) | st.integers(-5, 5), min_size=15, max_size=17)
ENDPOINTS = {
    ("POST", "/recommend"): body(users=st.lists(ids, max_size=6), k=ks, exclude_seen=st.booleans()),
    ("POST", "/recommend/features"): body(features=st.lists(features, max_size=3) | st.none(),
                                          history=st.lists(st.lists(ids, max_size=4), max_size=3) | st.none(),
                                          k=ks, exclude_history=st.booleans()),
    ("POST", "/similar"): body(items=st.lists(ids, max_size=6), k=ks),
    ("PUT", "/items"): body(items=st.lists(st.fixed_dictionaries(
        {"id": ids}, optional={"vector": maybe(vectors), "features": maybe(features)}), max_size=3)),
    ("DELETE", "/items"): body(items=st.lists(ids, max_size=3)),
    ("POST", "/admin/reload"): body(model_dir=st.sampled_from(["", "/", ".", "missing/dir"]) | st.text(max_size=8),
                                    wait=st.booleans()),
    ("GET", "/healthz"): st.none(),
    ("GET", "/metrics"): st.none(),
}


@pytest.fixture(scope="module", params=["exact", "ann"])
def served(request, plain_model, tmp_path_factory):
    flags = ["--ann"] if request.param == "ann" else []
    with running_server(plain_model, *flags, log_dir=tmp_path_factory.mktemp("log")) as server:
        with server.client(headers=AUTH) as client:
            yield server, client, {"mutated": False, "ann": request.param == "ann"}
        assert server.alive()


def check(response: httpx.Response, path: str) -> None:
    assert response.status_code < 500, (path, response.status_code, response.text[:500])
    if path != "/metrics":
        assert "model_version" in response.json(), response.text[:500]


@pytest.mark.parametrize("endpoint", list(ENDPOINTS), ids=[f"{m} {p}" for m, p in ENDPOINTS])
def test_no_request_gets_a_5xx(served, endpoint) -> None:
    server, client, state = served
    method, path = endpoint

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ENDPOINTS[endpoint])
    def send(payload) -> None:
        # json.dumps writes NaN and Infinity as Python's parser (and the server's) reads them
        content = None if payload is None else json.dumps(payload).encode()
        response = client.request(method, path, content=content, headers={"content-type": "application/json"})
        check(response, path)
        if method in ("PUT", "DELETE") or path == "/admin/reload":
            state["mutated"] |= response.status_code < 300

    send()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(list(ENDPOINTS)), raw=st.binary(max_size=200) | json_values.map(
    lambda v: json.dumps(v).encode()), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_random_bytes_get_no_5xx(served, endpoint, raw, content_type) -> None:
    _, client, _ = served
    method, path = endpoint
    check(client.request(method, path, content=raw, headers={"content-type": content_type}), path)


def test_answers_are_still_the_librarys(served, plain_model) -> None:
    server, client, state = served
    if state["mutated"]:  # the fuzz changed items or reloaded: start again from the model's own items
        # A reload the fuzz started in the background may still be loading (409 until it ends).
        deadline = time.monotonic() + 120
        while (code := client.post("/admin/reload", json={"model_dir": str(plain_model), "wait": True}
                                   ).status_code) == 409 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 200
    recommender = Recommender.load(plain_model, ann=state["ann"])
    assert results(client.post("/recommend", json={"users": USERS, "k": 10})) == \
        as_lists(recommender.recommend(USERS, k=10))
    assert server.alive()
