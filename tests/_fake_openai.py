"""A tiny OpenAI-compatible HTTP server on loopback, for unit tests of the generation client.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as SSE with ``stream: true``,
a few characters a chunk, usage in the last chunk); ``fail_with`` lists HTTP statuses
to answer (one per request) before it starts answering normally (``fail_chat_with``: the same,
for chat completions only); ``require_key`` answers 401 to
any other bearer token.
"""

from __future__ import annotations

import json
import threading
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rrr_ray.data.generation.config import DEFAULT_MODEL  # what a local endpoint serves by default

VALID_REPLY = ("<react>*nods warmly*</react>\n<respond>That sounds like a lot. What feels heaviest?</respond>\n"
               "<reflect>They need room to name the pressure before any advice.</reflect>")


class FakeOpenAI:
    def __init__(self, fail_with: list[int] | None = None, fail_chat_with: list[int] | None = None,
                 require_key: str | None = None,
                 reply: str | Callable[[dict], str] = VALID_REPLY, model: str = DEFAULT_MODEL,
                 models: list[str] | None = None):
        self.fail_with = list(fail_with or [])
        self.fail_chat_with = list(fail_chat_with or [])
        self.require_key = require_key
        self.reply = reply
        self.model = model
        self.models = models or [model]
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[dict] = []  # the JSON bodies of chat completions, in arrival order
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, text: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
                for n, piece in enumerate(pieces):
                    last = n == len(pieces) - 1
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": fake.model,
                             "choices": [{"index": 0, "delta": {"content": piece},
                                          "finish_reason": "stop" if last else None}]}
                    if last:
                        chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": len(pieces),
                                          "total_tokens": 3 + len(pieces)}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.requests.append((method, self.path))
                    if self.path.endswith("/chat/completions") and raw:
                        fake.bodies.append(json.loads(raw))
                    status = fake.fail_with.pop(0) if fake.fail_with else None
                    if status is None and self.path.endswith("/chat/completions") and fake.fail_chat_with:
                        status = fake.fail_chat_with.pop(0)
                if fake.require_key and self.headers.get("authorization") != f"Bearer {fake.require_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key", "type": "invalid_request_error",
                                                      "code": "invalid_api_key"}})
                if status:
                    return self._send(status, {"error": {"message": f"fake failure {status}", "type": "server_error"}})
                if method == "GET" and self.path.endswith("/models"):
                    return self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
                if method == "POST" and self.path.endswith("/chat/completions") and json.loads(raw).get("stream"):
                    return self._stream(fake.reply_for(json.loads(raw)))
                if method == "POST" and self.path.endswith("/chat/completions"):
                    return self._send(200, {
                        "id": "x", "object": "chat.completion", "created": 0, "model": fake.model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": fake.reply_for(json.loads(raw))}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                return self._send(404, {"error": {"message": "not found"}})

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reply_for(self, body: dict) -> str:
        """The reply to a chat completion body: ``reply``, or ``reply(body)`` when it is callable."""
        return self.reply(body) if callable(self.reply) else self.reply

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def chat_calls(self) -> int:
        return sum(path.endswith("/chat/completions") for _, path in self.requests)


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
