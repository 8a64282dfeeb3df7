"""API keys against a real HTTP server (uvicorn on loopback, the app over fake engines): off, every
route is open; ``RRR_API_KEY`` set, every route but /health and the watch page needs
``Authorization: Bearer <key>`` (a 401 in OpenAI's shape otherwise), either of its keys works, and
no key is ever logged."""

from __future__ import annotations

import hmac
import json
import logging

import httpx
import pytest

from rrr_ray.serving.api import create_app
from rrr_ray.serving.guard import API_KEY_ENV, OPEN_PATHS, ApiKeys
from tests._http_server import fake_service, run_schemathesis, serving

KEYS = ("rrr-key-one-3f9a1c", "rrr-key-two-77d0be")
WRONG = "rrr-key-wrong-51e2aa"
USER = [{"role": "user", "content": "I feel stuck at work."}]
PROTECTED = [("POST", "/generate", {"prompt": "hi", "max_new_tokens": 4}),
             ("POST", "/v1/chat/completions", {"messages": USER, "max_tokens": 4}),
             ("GET", "/v1/models", None),
             ("GET", "/openapi.json", None),
             ("GET", "/docs", None)]


@pytest.fixture(scope="module")
def open_url():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(API_KEY_ENV, raising=False)
        app = create_app(fake_service())
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, f" {KEYS[0]}, ,{KEYS[1]},")  # blank entries and spaces are ignored
        app = create_app(fake_service())
    assert len(app.state.api_keys) == 2
    with serving(app) as url:
        yield url


def call(url: str, method: str, path: str, body, key: str | None = None, header: str | None = None) -> httpx.Response:
    headers = {"authorization": header if header is not None else f"Bearer {key}"} if key or header else {}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=10)


def test_api_keys_parse_from_the_environment_and_never_print():
    keys = ApiKeys.from_env({API_KEY_ENV: f"{KEYS[0]},, {KEYS[1]} ,"})
    assert len(keys) == 2 and bool(keys) and KEYS[0] not in repr(keys) and repr(keys) == "ApiKeys(2 keys)"
    assert not ApiKeys.from_env({}) and not ApiKeys.from_env({API_KEY_ENV: " , ,"})
    assert keys.accepts(f"Bearer {KEYS[0]}".encode()) and keys.accepts(f"bearer {KEYS[1]}".encode())
    for header in (f"Basic {KEYS[0]}", KEYS[0], f"Bearer {WRONG}", "Bearer", "", f"Bearer {KEYS[0]}x"):
        assert not keys.accepts(header.encode()), header
    assert not keys.accepts(None)


def test_a_key_is_compared_with_every_key_in_constant_time(monkeypatch):
    """hmac.compare_digest on equal-length digests, once per key, even when the first key matches."""
    calls = []
    compare = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return compare(a, b)

    keys = ApiKeys([*KEYS, "a-third-key"])
    monkeypatch.setattr("rrr_ray.serving.guard.hmac.compare_digest", counting)
    assert keys.accepts(f"Bearer {KEYS[0]}".encode())
    assert len(calls) == 3 and all(a == b == 32 for a, b in calls)


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_without_keys_every_route_is_open(open_url, method, path, body):
    assert call(open_url, method, path, body).status_code == 200


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_with_keys_a_missing_or_wrong_key_is_a_401_in_openai_shape(keyed_url, method, path, body):
    for response, message in ((call(keyed_url, method, path, body), "missing API key"),
                              (call(keyed_url, method, path, body, key=WRONG), "invalid API key"),
                              (call(keyed_url, method, path, body, header=f"Basic {KEYS[0]}"), "invalid API key")):
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_api_key"
        assert WRONG not in response.text and KEYS[0] not in response.text


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_with_keys_either_key_is_let_in(keyed_url, method, path, body):
    for key in KEYS:
        assert call(keyed_url, method, path, body, key=key).status_code == 200


def test_with_keys_health_and_the_watch_page_stay_open(keyed_url):
    assert OPEN_PATHS == {"/health", "/"}
    r = httpx.get(f"{keyed_url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    page = httpx.get(f"{keyed_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_with_keys_a_stream_is_served_to_a_key(keyed_url):
    with httpx.stream("POST", f"{keyed_url}/v1/chat/completions", json={"messages": USER, "stream": True},
                      headers={"authorization": f"Bearer {KEYS[1]}"}, timeout=10) as r:
        assert r.status_code == 200
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["rrr_validation"]["valid"] is True


def test_with_keys_the_schema_states_the_bearer_scheme_and_its_401s(keyed_url):
    schema = httpx.get(f"{keyed_url}/openapi.json", headers={"authorization": f"Bearer {KEYS[0]}"}, timeout=10).json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": f"One of the keys of {API_KEY_ENV}."}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in OPEN_PATHS:
                assert "401" not in operation["responses"] and "security" not in operation
            else:
                assert operation["security"] == [{"apiKey": []}]
                assert "OpenAIError" in json.dumps(operation["responses"]["401"])


def test_with_keys_schemathesis_given_a_key_finds_nothing(keyed_url):
    """The schema with the bearer scheme says what the keyed server does (every check, a small run)."""
    cases, failures = run_schemathesis(keyed_url, max_examples=10, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert cases > 100 and failures == [], failures


def test_no_key_is_ever_logged(keyed_url, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, ",".join(KEYS))
        create_app(fake_service())  # logs that keys are on, and how many
    for method, path, body in PROTECTED:
        for key in (*KEYS, WRONG):
            call(keyed_url, method, path, body, key=key)
    text = caplog.text
    assert "API keys on: 2 keys" in text and '"GET /v1/models HTTP/1.1" 401' in text  # the access log ran
    assert not any(k in text for k in (*KEYS, WRONG))


def test_the_client_cli_sends_the_key_of_rrr_api_key(keyed_url, monkeypatch, capsys):
    from rrr_ray.client import main

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert main(["hi", "--url", keyed_url, "--max-new-tokens", "4"]) == 1
    assert "error (401)" in capsys.readouterr().err
    monkeypatch.setenv(API_KEY_ENV, f"{KEYS[1]},{WRONG}")  # the first key is sent
    assert main(["hi", "--url", keyed_url, "--max-new-tokens", "4", "--stream"]) == 0
    assert "RRR:" in capsys.readouterr().out
    monkeypatch.delenv(API_KEY_ENV)
    assert main(["hi", "--url", keyed_url, "--max-new-tokens", "4", "--api-key", KEYS[0]]) == 0


def test_an_app_under_a_route_prefix_keeps_its_open_paths_and_error_shapes():
    """Served under a route prefix (``serve.run(..., route_prefix="/adapters")``), every path arrives
    with the prefix in front and ``root_path`` set: /health stays open, /v1/ routes answer errors in
    OpenAI's shape and the others in rrr-ray's."""
    import asyncio

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, KEYS[0])
        app = create_app(fake_service())

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, root_path="/adapters")
        auth = {"authorization": f"Bearer {KEYS[0]}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://rrr") as client:
            return [await client.get("/adapters/health"),
                    await client.get("/adapters/v1/models"),
                    await client.post("/adapters/v1/chat/completions", json={"messages": []}, headers=auth),
                    await client.post("/adapters/generate", json={"prompt": ""}, headers=auth)]

    health, no_key, openai_bad, generate_bad = asyncio.run(requests())
    assert health.status_code == 200, health.text
    assert no_key.status_code == 401 and isinstance(no_key.json()["error"], dict)
    assert openai_bad.status_code == 400 and isinstance(openai_bad.json()["error"], dict), openai_bad.text
    assert generate_bad.status_code in (400, 422) and isinstance(generate_bad.json()["error"], str), generate_bad.text
