"""A real HTTP server for the tests of the HTTP edge (tests/test_bad_input.py, tests/test_access.py):
uvicorn in a background thread on a free 127.0.0.1 port, serving ``create_app`` over fake engines
(no Ray, no model), raw-socket requests for what an HTTP client will not send, and schemathesis
over the server's OpenAPI schema."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any, Iterator, Optional

import uvicorn

from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.fake_engine import FAKE_ENGINE
from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.model_server import ModelServer
from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.service import RRRService, ServedModel
from tests.helpers import REPO

SMALL_CONTEXT = 64
"""The context, in tokens, of the model ``fake-small`` (the fake engine's tokens are about 4 characters)."""


def fake_service(limits: Optional[HttpLimits] = None) -> RRRService:
    """The ingress's in-process path over two fake engines: ``fake`` (the default, a context that
    holds any request within ``limits``) and ``fake-small`` (a context of ``SMALL_CONTEXT`` tokens)."""
    streaming = StreamingOptions(stream_interval_ms=5, max_hop_messages_per_s=0)
    servers = [ModelServer(EngineConfig(name=name, path="-", engine_class=FAKE_ENGINE, max_model_len=context,
                                        engine_kwargs={"token_interval_s": 0}), streaming)
               for name, context in (("fake", 1_000_000), ("fake-small", SMALL_CONTEXT))]
    postprocessing = PostProcessing({s.config.name: s for s in servers})
    return RRRService(postprocessing.stream, postprocessing.health,
                      [ServedModel(s.config.name, "-") for s in servers], limits=limits)


class BackgroundServer:
    """Uvicorn serving an ASGI app on a free port of 127.0.0.1, in a thread of its own; ``stop()``
    closes the port (a request afterwards is refused). Its log records (the access log with
    ``access_log``) go to the root logger, where ``caplog`` sees them."""

    def __init__(self, app: Any, timeout_s: float = 30.0, access_log: bool = False) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.socket.getsockname()[1]
        self.timeout_s = timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="info" if access_log else "warning",
                                                    access_log=access_log, lifespan="off",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="uvicorn-test", daemon=True)

    def start(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout_s)
        self.socket.close()
        if self.thread.is_alive():
            raise RuntimeError(f"uvicorn on {self.url} did not stop")


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` (access log on) until the block ends; yields the base URL."""
    server = BackgroundServer(app, access_log=True).start()
    try:
        yield server.url
    finally:
        server.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw_exchange(url: str, request: bytes, *, half_close: bool = False, timeout_s: float = 10) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it (or ``timeout_s`` passes).
    ``half_close``: shut the write side after sending, as a client whose body ends early."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=timeout_s) as conn:
        conn.sendall(request)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        return read_until_closed(conn)


def read_until_closed(conn: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            data += chunk
    return data


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-case names) and body of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return status, headers, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2:]
    return out


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request that closes its connection, exactly as given (no header is added)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_message(path: str, body: bytes) -> str:
    """The message of an error body: OpenAI's shape under /v1/, ``ErrorBody`` elsewhere."""
    parsed = json.loads(body)
    return parsed["error"]["message"] if path.startswith("/v1/") else parsed["error"]


def run_schemathesis(url: str, max_examples: int, headers: Optional[dict[str, str]] = None) -> tuple[int, list[str]]:
    """schemathesis's engine in-process over the server's /openapi.json, as `st run --checks all` with
    the repository's schemathesis.toml: how many cases it generated, and its failures."""
    import schemathesis
    from schemathesis.engine import events, from_schema

    config = schemathesis.Config.from_path(REPO / "schemathesis.toml")
    config.update(seed=20261202, max_failures=None)
    config.projects.override.checks.update(included_check_names=["all"])
    config.projects.override.generation.update(max_examples=max_examples)
    if headers:
        config.projects.override.update(headers=headers)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config, headers=headers or {})
    cases, failures, errors = 0, [], []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            failures += [f"{event.recorder.label}: {check.name}: {check.failure_info.failure.title}: "
                         f"{check.failure_info.code_sample[-600:]}"
                         for checks in event.recorder.checks.values() for check in checks if check.failure_info]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(repr(event))
    assert not errors, errors
    return cases, failures
