"""Safety: the admin token (from the flag or the environment), the loopback rule, request limits, and
JSON errors naming the field for malformed requests (never a 500); without the serve extra the
library still imports and the error names the install command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import AUTH, TOKEN, running_server
from twotower.cli import main


@pytest.fixture(scope="module")
def server(plain_model, tmp_path_factory):
    with running_server(plain_model, "--max-k", "50", log_dir=tmp_path_factory.mktemp("log")) as server:
        yield server


def test_admin_endpoints_need_the_bearer_token(server) -> None:
    body = {"items": [12345]}
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        answer = httpx.request("DELETE", f"{server.url}/items", json=body, headers=headers)
        assert answer.status_code == 401 and answer.json()["field"] == "authorization", headers
        assert answer.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{server.url}/admin/reload", json={}).status_code == 401
    assert httpx.request("DELETE", f"{server.url}/items", json=body, headers=AUTH).status_code == 404  # past auth


@pytest.mark.slow  # one more server: CI only
def test_without_a_token_admin_endpoints_are_off(plain_model, tmp_path) -> None:
    with running_server(plain_model, log_dir=tmp_path, token=None) as server:
        answer = httpx.put(f"{server.url}/items", json={"items": []}, headers=AUTH)
        assert answer.status_code == 403 and "--admin-token" in answer.json()["error"]
        assert httpx.post(f"{server.url}/recommend", json={"users": [1]}).status_code == 200


def test_a_host_beyond_loopback_needs_a_token(plain_model, monkeypatch, capsys) -> None:
    monkeypatch.delenv("TWOTOWER_ADMIN_TOKEN", raising=False)
    assert main(["serve", str(plain_model), "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 serves beyond this machine" in capsys.readouterr().err
    assert main(["serve", str(plain_model), "--admin-token", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


@pytest.mark.parametrize(("body", "field", "status"), [
    ({"users": [1], "k": 51}, "k", 422),
    ({"users": [1], "k": 0}, "k", 422),
    ({"users": list(range(1001))}, "users", 422),
    ({"users": [1], "k": "5"}, "k", 422),
    ({"users": [1], "k": 5.0}, "k", 422),
    ({"users": [[1]]}, "users.0", 422),
    ({"users": [True]}, "users.0", 422),
    ({"users": 1}, "users", 422),
    ({"user": [1]}, "users", 422),
    ({"users": [1], "exclude_seen": "no"}, "exclude_seen", 422),
    ({"users": [1], "extra": 1}, "extra", 422),
    ([1, 2], "body", 422),
])
def test_malformed_requests_get_a_4xx_naming_the_field(server, body, field, status) -> None:
    answer = httpx.post(f"{server.url}/recommend", json=body)
    assert answer.status_code == status and answer.json()["field"] == field, answer.text
    assert answer.json()["model_version"].startswith("1:")


def test_bodies_that_are_not_json_objects_or_too_large(server) -> None:
    url = f"{server.url}/recommend"
    for content, headers in ((b'{"users": [1', {"content-type": "application/json"}), (b"users=1", {}),
                             (b"\xff\xfe", {"content-type": "application/json"})):
        answer = httpx.post(url, content=content, headers=headers)
        assert answer.status_code == 422 and answer.json()["field"] == "body", answer.text
    big = b'{"users": [' + b"1," * 600_000 + b"1]}"
    assert httpx.post(url, content=big, headers={"content-type": "application/json"}).status_code == 413
    chunked = httpx.post(url, content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["field"] == "body"
    assert httpx.get(f"{server.url}/nowhere").status_code == 404
    wrong_method = httpx.get(url)
    assert wrong_method.status_code == 405 and wrong_method.json()["model_version"]
    assert server.alive()


def test_the_server_binds_loopback_only(server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("needs Linux's /proc/net/tcp")
    listening = [line.split()[1] for line in table.read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]  # 0A: LISTEN
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1, little-endian hex


def test_without_the_extra_the_library_imports_and_names_the_install(plain_model) -> None:
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "import twotower, twotower.serve\n"
        "try:\n"
        "    from twotower.serve import create_app\n"
        "except ImportError as err:\n"
        "    print(err)\n"
        "from twotower.cli import main\n"
        f"sys.exit(main(['serve', {str(plain_model)!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "pip install 'twotower[serve]'" in run.stdout and "pip install 'twotower[serve]'" in run.stderr


@pytest.mark.slow
def test_several_workers_answer_and_refuse_item_updates(plain_model, tmp_path) -> None:
    from tests.serve.conftest import USERS, as_lists, results
    from twotower.retrieval.recommend import Recommender

    with running_server(plain_model, "--workers", "2", log_dir=tmp_path) as server:
        answers = [results(httpx.post(f"{server.url}/recommend", json={"users": USERS, "k": 5})) for _ in range(4)]
        refused = httpx.put(f"{server.url}/items", json={"items": []}, headers=AUTH)
    assert all(answer == as_lists(Recommender.load(plain_model).recommend(USERS, k=5)) for answer in answers)
    assert refused.status_code == 409 and "--workers 1" in refused.json()["error"]
