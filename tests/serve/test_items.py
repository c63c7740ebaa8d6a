"""Item updates over HTTP: an added or replaced item is in the next answer, a deleted one never again,
cold-start items from side features go through the item tower, and mistakes are named."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.serve.conftest import AUTH, results, running_server, strong_item_for
from twotower.retrieval.recommend import Recommender


@pytest.fixture(scope="module", params=["exact", pytest.param("ann", marks=pytest.mark.slow)])  # ann: CI only
def served(request, plain_model, tmp_path_factory):
    flags = ["--ann"] if request.param == "ann" else []
    with running_server(plain_model, *flags, log_dir=tmp_path_factory.mktemp("log")) as server:
        with server.client(headers=AUTH) as client:
            yield client, Recommender.load(plain_model)


def top(client: httpx.Client, user: int, k: int = 10) -> list:
    return results(client.post("/recommend", json={"users": [user], "k": k}))[0][0]


def test_added_item_is_in_the_next_answer_and_deleted_never_again(served) -> None:
    client, recommender = served
    queries, _ = recommender.user_queries([3])
    put = client.put("/items", json={"items": [{"id": 5001, "vector": strong_item_for(queries[0])}]})
    assert put.status_code == 200 and put.json()["items"] == 201
    assert top(client, 3)[0] == 5001
    similar = client.post("/similar", json={"items": [5001], "k": 3}).json()["results"][0]
    assert 5001 not in similar["items"] and len(similar["items"]) == 3
    assert client.request("DELETE", "/items", json={"items": [5001]}).json()["items"] == 200
    assert 5001 not in top(client, 3, k=200)
    assert client.post("/similar", json={"items": [5001]}).json()["results"][0]["error"] == "unknown item id"


def test_replacing_and_deleting_a_trained_item(served) -> None:
    client, recommender = served
    queries, _ = recommender.user_queries([4])
    before = top(client, 4, k=200)
    victim = before[-1]  # the user's weakest unseen item becomes the strongest
    assert client.put("/items", json={"items": [{"id": victim, "vector": strong_item_for(queries[0])}]}).status_code \
        == 200
    assert top(client, 4)[0] == victim
    first = before[0]
    assert client.request("DELETE", "/items", json={"items": [first, victim]}).status_code == 200
    after = top(client, 4, k=200)
    assert first not in after and victim not in after and len(after) == len(before) - 2
    original = recommender.item_search_vectors()[recommender.codes([first, victim], "item")]
    restore = [{"id": i, "vector": v.tolist()} for i, v in zip([first, victim], original, strict=True)]
    assert client.put("/items", json={"items": restore}).status_code == 200
    assert results(client.post("/recommend", json={"users": [4], "k": 10}))[0][0] == \
        recommender.recommend([4], k=10)[0].items.tolist()


def test_item_mistakes_are_named_and_change_nothing(served) -> None:
    client, recommender = served
    width = recommender.item_search_vectors().shape[1]
    cases = [
        ({"items": [{"id": 1}]}, "items.0"),
        ({"items": [{"id": 1, "vector": [0.0] * width, "features": {}}]}, "items.0"),
        ({"items": [{"id": 1, "vector": [0.0] * (width + 1)}]}, "items.0.vector"),
        ({"items": [{"id": 1, "vector": [1e300] * width}]}, "items.0.vector"),
        ({"items": [{"id": "abc", "vector": [0.0] * width}]}, "items"),
        ({"items": [{"id": 9, "vector": [0.0] * width}, {"id": 9, "vector": [0.0] * width}]}, "items"),
        ({"items": [{"id": 9, "features": {"category": 1}}]}, "items.0.features"),  # this model reads none
        ({"items": [{"id": 1.5, "vector": [0.0] * width}]}, "items.0.id"),
    ]
    for body, field in cases:
        answer = client.put("/items", json=body)
        assert answer.status_code == 422 and answer.json()["field"] == field, (body, answer.text)
    missing = client.request("DELETE", "/items", json={"items": [1, 424242]})
    assert missing.status_code == 404 and "424242" in missing.json()["error"]
    assert client.get("/healthz").json()["items"] == 200


@pytest.mark.slow  # a feature model and a server: CI only
def test_items_from_side_features_go_through_the_item_tower(feature_model, tmp_path) -> None:
    recommender = Recommender.load(feature_model)
    features = {"category": 3, "tags": [1, 2], "quality": 0.5}
    expected = recommender.new_item_vectors([features])[0]
    assert np.isclose(np.linalg.norm(expected), 1, atol=1e-5)  # a cosine model's item vector
    with running_server(feature_model, log_dir=tmp_path) as server, server.client(headers=AUTH) as client:
        assert client.put("/items", json={"items": [{"id": 7001, "features": features}]}).status_code == 200
        # the new item's nearest neighbours are those of its vector among the trained items
        similar = results(client.post("/similar", json={"items": [7001], "k": 5}))[0]
        vectors = recommender.item_search_vectors()
        best = np.argsort(-(vectors @ expected), kind="stable")[:5]
        assert similar[0] == recommender.trained.item_vocab.decode(best).tolist()
        np.testing.assert_allclose(similar[1], (vectors @ expected)[best], rtol=1e-5)
