"""A real server answers as the library does: /recommend equals `Recommender` and `twotower recommend`
(exact and HNSW), /similar equals `similar_items`, /recommend/features equals
`recommend_for_features`; unknown ids are answered per id; concurrent requests are batched and still
get their own answers; every response names the model version."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.retrieval.test_recommend import cli_json
from tests.serve.conftest import USERS, as_lists, results, running_server
from twotower.retrieval.recommend import Recommender


@pytest.fixture(scope="module", params=["exact", "ann"])
def served(request, plain_model, tmp_path_factory):
    flags = ["--ann"] if request.param == "ann" else []
    with running_server(plain_model, *flags, "--max-wait-ms", "20", log_dir=tmp_path_factory.mktemp("log")) as server:
        yield server, Recommender.load(plain_model, ann=request.param == "ann"), flags


def test_recommend_equals_the_recommender_and_the_cli(served, capsys) -> None:
    server, recommender, flags = served
    answer = httpx.post(f"{server.url}/recommend", json={"users": USERS, "k": 7})
    assert results(answer) == as_lists(recommender.recommend(USERS, k=7))
    printed = cli_json(capsys, "recommend", str(recommender.path), "--user", *map(str, USERS), "-k", "7", "--json",
                       *flags)
    assert [(p["items"], p["scores"]) for p in printed] == [(i, [round(s, 6) for s in s_]) for i, s_ in
                                                              results(answer)]


def test_exclude_seen_off_and_k_beyond_the_catalogue(served) -> None:
    server, recommender, _ = served
    answer = httpx.post(f"{server.url}/recommend", json={"users": USERS[:2], "k": 500, "exclude_seen": False})
    expected = as_lists(recommender.recommend(USERS[:2], k=500, exclude_seen=False))
    assert results(answer) == expected
    assert all(len(items) == recommender.num_items for items, _ in expected)


def test_unknown_users_are_answered_per_user(served) -> None:
    server, recommender, _ = served
    body = httpx.post(f"{server.url}/recommend", json={"users": [2, "nobody", 10**30, 17], "k": 5}).json()
    assert [r.get("error") for r in body["results"]] == [None, "unknown user id", "unknown user id", None]
    assert [r["user"] for r in body["results"]] == [2, "nobody", 10**30, 17]
    known = [(r["items"], r["scores"]) for r in body["results"] if "items" in r]
    assert known == as_lists(recommender.recommend([2, 17], k=5))


def test_similar_equals_similar_items(served) -> None:
    server, recommender, _ = served
    body = httpx.post(f"{server.url}/similar", json={"items": [1, 50, "x"], "k": 6}).json()
    assert body["results"][2] == {"item": "x", "error": "unknown item id"}
    assert [(r["items"], r["scores"]) for r in body["results"][:2]] == as_lists(recommender.similar_items([1, 50], 6))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served) -> None:
    server, recommender, _ = served
    users = list(range(1, 65))
    expected = {user: as_lists(recommender.recommend([user], k=10))[0] for user in users}
    with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda u: results(client.post("/recommend", json={"users": [u], "k": 10}))[0], users))
    assert answers == [expected[user] for user in users]
    metrics = httpx.get(f"{server.url}/metrics").text
    count = _sample(metrics, "twotower_batch_queries_count")
    singles = _sample(metrics, 'twotower_batch_queries_bucket{le="1.0"}')
    assert count < 64 and singles < count  # some calls answered several requests


def _sample(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_every_response_carries_the_model_version(served) -> None:
    server, _, _ = served
    version = httpx.get(f"{server.url}/healthz").json()["model_version"]
    assert version.startswith("1:") and len(version) == 14
    for response in (httpx.post(f"{server.url}/recommend", json={"users": [1]}),
                     httpx.post(f"{server.url}/recommend", json={"users": [1], "k": -1}),
                     httpx.get(f"{server.url}/nowhere"), httpx.get(f"{server.url}/metrics")):
        assert response.headers["x-model-version"] == version
        if response.headers["content-type"] == "application/json":
            assert response.json()["model_version"] == version


def test_cold_start_equals_recommend_for_features(feature_model, tmp_path) -> None:
    recommender = Recommender.load(feature_model)
    features = [{"segment": 2}, {"segment": 5}]
    history = [[1, 2, 3], [40, 41]]
    with running_server(feature_model, log_dir=tmp_path) as server:
        both = httpx.post(f"{server.url}/recommend/features", json={"features": features, "history": history, "k": 8})
        alone = httpx.post(f"{server.url}/recommend/features", json={"history": history, "k": 8,
                                                                     "exclude_history": False})
        unknown = httpx.post(f"{server.url}/recommend/features", json={"history": [[1, 99999]]})
    assert results(both) == as_lists(recommender.recommend_for_features(features, history=history, k=8))
    assert results(alone) == as_lists(recommender.recommend_for_features(history=history, k=8,
                                                                         exclude_history=False))
    assert unknown.status_code == 422 and unknown.json()["field"] == "history" and "99999" in unknown.json()["error"]


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "hnsw"])
def test_a_model_with_a_graph_filter_is_served_by_its_blend(graph_model, tmp_path, ann) -> None:
    """/recommend ranks known users as `Recommender.recommend` does (the blend), not by the towers alone."""
    import dataclasses

    flags = ["--ann"] if ann else []
    recommender = Recommender.load(graph_model, ann=ann)
    assert recommender.trained.graph is not None and recommender.trained.graph.weight == 2.0
    towers_alone = Recommender(dataclasses.replace(recommender.trained, graph=None))
    ids = recommender.trained.item_vocab.ids
    history = [[int(ids[1]), int(ids[2]), int(ids[30])], [int(ids[5])]]
    with running_server(graph_model, *flags, log_dir=tmp_path) as server:
        answer = httpx.post(f"{server.url}/recommend", json={"users": USERS, "k": 7})
        new_users = httpx.post(f"{server.url}/recommend/features", json={"history": history, "k": 7})
    assert results(answer) == as_lists(recommender.recommend(USERS, k=7))
    assert results(answer) != as_lists(towers_alone.recommend(USERS, k=7))
    assert "carries a graph filter (model.graph_filter, weight 2" in server.log.read_text()  # the operator is told
    # new users with a history: the blend reads it (their tower vectors are the same: no features, no pooling)
    assert results(new_users) == as_lists(recommender.recommend_for_features(history=history, k=7))
    first, second = results(new_users)
    assert first != second
