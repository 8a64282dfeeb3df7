"""Bad input against a real HTTP server (uvicorn on loopback, the app over fake engines): every bad
request gets the exact 4xx, a JSON body in its route's error shape that names the problem, never a
5xx or a traceback, and the server stays healthy. Then schemathesis over the app's OpenAPI schema,
with every check, and the limits of serve_config.yaml as the app and its schema see them."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx
import pytest

from rrr_ray.serving.api import create_app
from rrr_ray.serving.config import AppArgs, load_app_args
from rrr_ray.serving.guard import ApiKeys
from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.protocol import SamplingOptions
from tests._http_server import (
    SMALL_CONTEXT, error_message, fake_service, parse_response, raw_exchange, read_until_closed, request_bytes,
    run_schemathesis, serving)
from tests.helpers import REPO

LIMITS = HttpLimits(max_body_bytes=512 * 1024, max_header_bytes=8 * 1024, max_new_tokens=512, max_messages=16,
                    max_prompt_chars=2000, max_stop_strings=4)
"""The server's limits: below the defaults, so that each is seen to come from the configuration."""

JSON = {"content-type": "application/json"}
USER = [{"role": "user", "content": "I feel stuck at work."}]


@pytest.fixture(scope="module")
def url():
    with serving(create_app(fake_service(LIMITS), api_keys=ApiKeys())) as base:
        yield base


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: Any  # bytes are sent as they are, anything else as JSON
    status: int
    says: tuple[str, ...]  # what the message names, each in it
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    method: str = "POST"

    def content(self) -> Optional[bytes]:
        if self.body is None:
            return None
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def gen(**fields: Any) -> dict[str, Any]:
    return {"prompt": "I feel stuck at work.", **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": USER, **fields}


def turns(n: int) -> list[dict[str, str]]:
    return [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(n - 1)] + USER


G, C = "/generate", "/v1/chat/completions"
CASES = [
    # -- the body as a whole
    Case("malformed-json", G, b'{"prompt": "hi",}', 400, ("not valid JSON",)),
    Case("truncated-json", G, b'{"prompt": "I feel st', 400, ("not valid JSON",)),
    Case("json-array", G, b'[{"prompt": "hi"}]', 422, ("must be a JSON object",)),
    Case("json-null", G, b"null", 422, ("must be a JSON object",)),
    Case("json-string", G, b'"hi"', 422, ("must be a JSON object",)),
    Case("empty-body", G, b"", 422, ("must be a JSON object",)),
    Case("invalid-utf8", G, b'{"prompt": "caf\xe9 \xff"}', 400, ("not valid UTF-8",)),
    Case("text-plain", G, json.dumps(gen()).encode(), 415, ("application/json", "text/plain"),
         headers={"content-type": "text/plain"}),
    Case("form-encoded", G, b"prompt=hi", 415, ("application/json", "x-www-form-urlencoded"),
         headers={"content-type": "application/x-www-form-urlencoded"}),
    Case("no-content-type", G, json.dumps(gen()).encode(), 415, ("application/json", "none"), headers={}),
    # -- fields: presence and types
    Case("neither-prompt-nor-messages", G, {}, 422, ("exactly one of 'prompt' or 'messages'",)),
    Case("both-prompt-and-messages", G, gen(messages=USER), 422, ("exactly one of 'prompt' or 'messages'",)),
    Case("unknown-field", G, gen(colour="red"), 422, ("colour", "Extra inputs are not permitted")),
    Case("prompt-a-number", G, {"prompt": 42}, 422, ("prompt", "valid string")),
    Case("temperature-a-string", G, gen(temperature="0.5"), 422, ("temperature", "valid number")),
    Case("stream-a-string", G, gen(stream="yes"), 422, ("stream", "valid boolean")),
    Case("guided-an-integer", G, gen(guided=1), 422, ("guided", "valid boolean")),
    Case("messages-a-string", G, {"messages": "hi"}, 422, ("messages", "valid list")),
    Case("max-new-tokens-a-fraction", G, gen(max_new_tokens=1.5), 422, ("max_new_tokens", "valid integer")),
    Case("seed-a-string", G, gen(seed="7"), 422, ("seed", "valid integer")),
    # -- numbers: negative, huge, NaN, infinite
    Case("max-new-tokens-negative", G, gen(max_new_tokens=-5), 422, ("max_new_tokens", "greater than or equal to 1")),
    Case("max-new-tokens-zero", G, gen(max_new_tokens=0), 422, ("max_new_tokens", "greater than or equal to 1")),
    Case("max-new-tokens-over-the-limit", G, gen(max_new_tokens=513), 422,
         ("max_new_tokens", "asks for 513", "limit (max_new_tokens) is 512")),
    Case("max-new-tokens-huge", G, gen(max_new_tokens=10**30), 422,
         ("max_new_tokens", "limit (max_new_tokens) is 512")),
    Case("temperature-nan", G, b'{"prompt": "hi", "temperature": NaN}', 422, ("temperature", "finite number")),
    Case("temperature-infinity", G, b'{"prompt": "hi", "temperature": Infinity}', 422, ("temperature", "finite")),
    Case("top-p-minus-infinity", G, b'{"prompt": "hi", "top_p": -Infinity}', 422, ("top_p", "finite")),
    Case("temperature-overflows", G, b'{"prompt": "hi", "temperature": 1e400}', 422, ("temperature", "finite")),
    Case("temperature-negative", G, gen(temperature=-0.1), 422, ("temperature", "greater than or equal to 0")),
    Case("top-p-zero", G, gen(top_p=0), 422, ("top_p", "greater than 0")),
    Case("repetition-penalty-huge", G, gen(repetition_penalty=1e308), 422,
         ("repetition_penalty", "less than or equal")),
    Case("seed-huge", G, gen(seed=2**64), 422, ("seed", "less than or equal")),
    Case("top-k-below-minus-one", G, gen(top_k=-2), 422, ("top_k", "greater than or equal to -1")),
    # -- prompts, messages, stop strings
    Case("empty-prompt", G, {"prompt": ""}, 422, ("prompt", "at least 1 character")),
    Case("oversize-prompt", G, {"prompt": "x" * 2001}, 422, ("prompt", "2001 characters", "max_prompt_chars")),
    Case("oversize-system", G, gen(system="s" * 2001), 422, ("system", "max_prompt_chars")),
    Case("prompt-over-the-context", G, gen(model="fake-small", prompt="word " * (SMALL_CONTEXT * 2)), 400,
         ("context", str(SMALL_CONTEXT))),
    Case("empty-messages", G, {"messages": []}, 422, ("messages", "at least 1 item")),
    Case("too-many-messages", G, {"messages": turns(17)}, 422, ("messages", "17 messages", "max_messages")),
    Case("wrong-role", G, {"messages": [{"role": "robot", "content": "hi"}]}, 422, ("messages.0.role", "'user'")),
    Case("message-without-content", G, {"messages": [{"role": "user"}]}, 422, ("messages.0.content", "required")),
    Case("oversize-message", G, {"messages": [{"role": "user", "content": "y" * 2001}]}, 422,
         ("messages.0.content", "max_prompt_chars")),
    Case("stop-list-too-long", G, gen(stop=["a", "b", "c", "d", "e"]), 422, ("stop", "5 strings", "max_stop_strings")),
    Case("stop-empty-string", G, gen(stop=[""]), 422, ("stop.0", "at least 1 character")),
    Case("unknown-model", G, gen(model="gpt-9"), 404, ("gpt-9", "not served")),
    # -- the OpenAI-compatible route (OpenAI's error shape; an invalid body is a 400, as OpenAI's API answers)
    Case("chat-malformed-json", C, b'{"messages": [', 400, ("not valid JSON",)),
    Case("chat-json-array", C, b"[]", 400, ("must be a JSON object",)),
    Case("chat-json-null", C, b"null", 400, ("must be a JSON object",)),
    Case("chat-invalid-utf8", C, b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}', 400, ("not valid UTF-8",)),
    Case("chat-text-plain", C, json.dumps(chat()).encode(), 415, ("application/json",),
         headers={"content-type": "text/plain"}),
    Case("chat-messages-missing", C, {"model": "fake"}, 400, ("messages", "required")),
    Case("chat-messages-empty", C, chat(messages=[]), 400, ("messages", "at least 1 item")),
    Case("chat-too-many-messages", C, chat(messages=turns(17)), 400, ("max_messages",)),
    Case("chat-wrong-role", C, chat(messages=[{"role": "tool", "content": "x"}]), 400, ("messages.0.role",)),
    Case("chat-image-part", C, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,AAAA"}}]}]), 400, ("messages.0.content", "'image_url'", "not supported")),
    Case("chat-n-two", C, chat(n=2), 400, ("n = 2", "one choice per request")),
    Case("chat-tools", C, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
         ("tools", "not supported")),
    Case("chat-json-mode", C, chat(response_format={"type": "json_object"}), 400, ("response_format", "json_object")),
    Case("chat-unknown-field", C, chat(colour="red"), 400, ("colour", "Extra inputs are not permitted")),
    Case("chat-max-tokens-over-the-limit", C, chat(max_tokens=100_000), 400, ("max_tokens", "limit (max_new_tokens)")),
    Case("chat-max-completion-tokens-negative", C, chat(max_completion_tokens=-1), 400, ("max_completion_tokens",)),
    Case("chat-guided-a-string", C, chat(guided="true"), 400, ("guided", "valid boolean")),
    Case("chat-guided-an-integer", C, chat(guided=0), 400, ("guided", "valid boolean")),
    Case("chat-temperature-nan", C, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
         ("temperature", "finite")),
    Case("chat-stop-too-long", C, chat(stop=["1", "2", "3", "4", "5"]), 400, ("stop", "max_stop_strings")),
    Case("chat-stop-a-number", C, chat(stop=7), 400, ("stop",)),
    Case("chat-stream-a-string", C, chat(stream="true"), 400, ("stream", "valid boolean")),
    Case("chat-unknown-model", C, chat(model="gpt-9"), 404, ("gpt-9", "not served")),
    # -- routes and methods
    Case("unknown-route", "/nope", None, 404, ("Not Found", "GET /nope"), method="GET", headers={}),
    Case("unknown-v1-route", "/v1/nope", None, 404, ("Not Found",), method="GET", headers={}),
    Case("wrong-method", G, None, 405, ("Method Not Allowed", "DELETE /generate"), method="DELETE", headers={}),
    Case("big-header", "/v1/models", None, 431, ("headers", "max_header_bytes", "8192"), method="GET",
         headers={"x-padding": "p" * 9000}),
]


def test_the_table_is_big_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_its_4xx_with_a_json_message_naming_the_problem(url, case):
    r = httpx.request(case.method, url + case.path, content=case.content(), headers=case.headers, timeout=10)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/json"
    message = error_message(case.path, r.content)
    for part in case.says:
        assert part in message, (part, message)
    if case.path.startswith("/v1/"):
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in r.text and 'File "' not in r.text
    if case.status == 405:
        assert r.headers["allow"] == "POST"


def test_after_the_table_the_server_is_healthy_and_still_streams(url):
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    with httpx.stream("POST", f"{url}/generate", json=gen(stream=True, seed=1), timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) > 2 and lines[-1]["finished"] is True and lines[-1]["validation"]["valid"] is True
    tokens = "".join(line["token"] for line in lines[:-1])
    assert tokens.startswith("<react>") and tokens.endswith("</reflect>")


# -- raw sockets: what an HTTP client does not send -------------------------------------------------

@pytest.mark.parametrize("path", [G, C])
def test_invalid_utf8_over_a_raw_socket_is_a_400(url, path):
    body = b'{"prompt": "\xff\xfe\xfd", "messages": [{"role": "user", "content": "\x80"}]}'
    raw = raw_exchange(url, request_bytes("POST", path, {**JSON, "Content-Length": str(len(body))}, body))
    status, headers, content = parse_response(raw)
    assert status == 400 and "not valid UTF-8 (byte 12" in error_message(path, content)


@pytest.mark.parametrize("path", [G, C])
def test_a_content_length_over_the_limit_is_refused_before_the_body_is_sent(url, path):
    """Only the headers are sent: the 413 comes from Content-Length, without waiting for the body."""
    size = LIMITS.max_body_bytes + 1
    raw = raw_exchange(url, request_bytes("POST", path, {**JSON, "Content-Length": str(size)}))
    status, headers, content = parse_response(raw)
    assert status == 413 and headers["connection"] == "close"
    assert error_message(path, content) == (f"the body is {size} bytes; this server's limit (max_body_bytes) "
                                            f"is {LIMITS.max_body_bytes}")


@pytest.mark.parametrize("path", [G, C])
def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(url, path):
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as conn:
        conn.sendall(request_bytes("POST", path, {**JSON, "Transfer-Encoding": "chunked"}))
        try:
            while sent <= 4 * LIMITS.max_body_bytes:  # the server answers once it has more than the limit
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed
        raw = read_until_closed(conn)
    status, headers, content = parse_response(raw)
    assert status == 413 and sent > LIMITS.max_body_bytes
    assert f"limit (max_body_bytes) of {LIMITS.max_body_bytes}" in error_message(path, content)


def test_a_chunked_body_within_the_limit_is_served(url):
    body = json.dumps(gen(max_new_tokens=8)).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    raw = raw_exchange(url, request_bytes("POST", G, {**JSON, "Transfer-Encoding": "chunked"}, chunks))
    status, _, content = parse_response(raw)
    assert status == 200 and json.loads(content)["metadata"]["output_tokens"] == 8


def test_a_body_shorter_than_its_content_length_ends_without_an_answer_or_a_hang(url):
    """The client says 100 bytes, sends 20 and stops writing: nothing to answer, the connection ends."""
    raw = raw_exchange(url, request_bytes("POST", G, {**JSON, "Content-Length": "100"}, b'{"prompt": "I feel st'),
                       half_close=True)
    assert raw == b"" or parse_response(raw)[0] < 500
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("size", [20_000, 1_000_000])
def test_huge_headers_are_a_431(url, size):
    raw = raw_exchange(url, request_bytes("GET", "/health", {"X-Padding": "h" * size}))
    status, _, content = parse_response(raw)
    assert status == 431 and "max_header_bytes) is 8192" in json.loads(content)["error"]


def test_a_request_that_is_not_http_is_a_400_and_harms_nothing(url):
    raw = raw_exchange(url, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")  # e.g. TLS spoken to plain HTTP
    assert raw.startswith(b"HTTP/1.1 400")
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


# -- the configured limits ------------------------------------------------------------------------

def test_the_schema_states_the_configured_limits(url):
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    generate, chat_request = (schema["components"]["schemas"][n] for n in ("GenerateRequest", "ChatCompletionRequest"))
    assert generate["properties"]["max_new_tokens"]["maximum"] == 512
    assert chat_request["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 512
    assert chat_request["properties"]["messages"]["maxItems"] == 16
    content = schema["components"]["schemas"]["ChatMessage"]["properties"]["content"]["anyOf"]
    assert [b.get("maxLength") for b in content if b.get("type") == "string"] == [2000]
    assert schema["components"]["schemas"]["ContentPart"]["properties"]["text"]["maxLength"] == 2000
    assert generate["oneOf"] == [{"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                                 {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]
    assert {"400", "413", "415", "422", "431"} <= set(schema["paths"][G]["post"]["responses"])
    assert {"400", "413", "415", "431"} <= set(schema["paths"][C]["post"]["responses"])  # /v1: 400, as OpenAI
    assert "401" not in schema["paths"][G]["post"]["responses"] and "securitySchemes" not in schema["components"]
    default = create_app().openapi()["components"]["schemas"]["GenerateRequest"]["properties"]["max_new_tokens"]
    assert default["maximum"] == HttpLimits().max_new_tokens == 2048


def test_stop_strings_within_the_limit_end_the_reply_before_the_first_one(url):
    r = httpx.post(f"{url}/generate", json=gen(stop=["</respond>", "zzz", "<reflect>", "q"]), timeout=10)
    assert r.status_code == 200 and r.json()["generated_text"].endswith("What feels heaviest right now?")
    r = httpx.post(f"{url}/v1/chat/completions", json=chat(stop="<respond>"), timeout=10)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].endswith("</react>\n")


def test_a_request_without_max_new_tokens_gets_the_default_bounded_by_the_limit():
    service = fake_service(HttpLimits(max_new_tokens=5))
    assert service.engine_request(None, USER, SamplingOptions(), False).sampling.max_new_tokens == 5
    assert service.engine_request(None, USER, SamplingOptions(max_new_tokens=3), False).sampling.max_new_tokens == 3


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.single.yaml", "serve_config.tiny.yaml", "serve_config.gpu.yaml"])
def test_the_serve_configs_set_the_limits_that_reach_the_ingress(name):
    from deployments.app import build_app

    args = load_app_args(REPO / name)
    shown = args["limits"]  # each config shows the defaults of the limits most often changed
    assert {"max_body_bytes", "max_new_tokens"} <= set(shown)
    assert shown == {k: v for k, v in HttpLimits().model_dump().items() if k in shown}
    ingress = build_app(args)._bound_deployment
    assert ingress.init_kwargs["limits"] == AppArgs.model_validate(args).limits
    for wrong in ({"max_body_bytes": 10}, {"max_body_byte": 2048}):  # too small; mistyped
        with pytest.raises(ValueError, match="max_body_byte"):
            AppArgs.model_validate({**args, "limits": wrong})


# -- schemathesis ---------------------------------------------------------------------------------

def test_schemathesis_finds_nothing_with_every_check(url):
    cases, failures = run_schemathesis(url, max_examples=40)
    print(f"schemathesis: {cases} cases, {len(failures)} failures")
    assert cases > 300 and failures == []
