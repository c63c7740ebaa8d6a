"""Hot swap under load: while clients query without pause, /admin/reload swaps in another model and
back; no request fails, each answer is exactly the answer of the version it names, and the version
changes."""

from __future__ import annotations

import threading
import time

import pytest

from tests.serve.conftest import AUTH, as_lists, running_server
from twotower.retrieval.recommend import Recommender

USERS = [1, 2, 3]


@pytest.mark.slow  # two trained models and a server under load: CI only
def test_reload_under_load_fails_no_request(plain_model, other_model, tmp_path) -> None:
    expected = {str(plain_model): as_lists(Recommender.load(plain_model).recommend(USERS, k=10)),
                str(other_model): as_lists(Recommender.load(other_model).recommend(USERS, k=10))}
    assert expected[str(plain_model)] != expected[str(other_model)]
    seen: dict[str, set] = {}
    failures: list[str] = []
    stop = threading.Event()

    def client_loop(server) -> None:
        with server.client() as client:
            while not stop.is_set():
                response = client.post("/recommend", json={"users": USERS, "k": 10})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                body = response.json()
                answer = [(r["items"], r["scores"]) for r in body["results"]]
                seen.setdefault(body["model_version"], set()).add(
                    next(path for path, want in expected.items() if want == answer) if answer in
                    expected.values() else "wrong")

    with running_server(plain_model, log_dir=tmp_path) as server, server.client(headers=AUTH) as admin:
        threads = [threading.Thread(target=client_loop, args=(server,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        versions = [admin.get("/healthz").json()["model_version"]]
        for target in (other_model, plain_model):
            time.sleep(0.5)
            answer = admin.post("/admin/reload", json={"model_dir": str(target)})
            assert answer.status_code == 202, answer.text
            deadline = time.monotonic() + 60
            while admin.get("/healthz").json()["model_version"] == versions[-1] and time.monotonic() < deadline:
                time.sleep(0.05)
            versions.append(admin.get("/healthz").json()["model_version"])
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert server.alive()
        metrics = admin.get("/metrics").text
    assert not failures, failures[:3]
    assert [v.split(":")[0] for v in versions] == ["1", "2", "3"]
    assert versions[1].split(":")[1] != versions[0].split(":")[1] == versions[2].split(":")[1]
    assert seen == {versions[0]: {str(plain_model)}, versions[1]: {str(other_model)}, versions[2]: {str(plain_model)}}
    assert 'twotower_reloads_total{outcome="done"} 2.0' in metrics


def test_reload_mistakes_are_named(plain_model, tmp_path) -> None:
    with running_server(plain_model, log_dir=tmp_path) as server, server.client(headers=AUTH) as admin:
        missing = admin.post("/admin/reload", json={"model_dir": str(tmp_path / "nothing"), "wait": True})
        assert missing.status_code == 422 and missing.json()["field"] == "model_dir"
        assert "does not exist" in missing.json()["error"]
        same = admin.post("/admin/reload", json={"wait": True})
        assert same.status_code == 200 and same.json()["model_version"].startswith("2:")
        assert admin.get("/healthz").json()["reload"] == "idle"
