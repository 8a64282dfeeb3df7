"""The edge of the HTTP app, before any route runs: API keys, the size of the headers and of the
body, the body's media type and encoding.

``RequestGuard`` is a plain ASGI middleware. A request it refuses never reaches a route: it gets
a JSON error in its route's shape (``error_response``: OpenAI's under ``/v1/``, ``ErrorBody``
elsewhere; a 401 is in OpenAI's shape everywhere). A body it lets through is read whole (at most
``HttpLimits.max_body_bytes``) and handed on to the app as one message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping, Optional

from fastapi.responses import JSONResponse

from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.protocol import ErrorBody
from rrr_ray.serving.replies import openai_error, typed_json

API_KEY_ENV = "RRR_API_KEY"
"""Comma-separated API keys; set (and not blank), every route but ``OPEN_PATHS`` needs one."""
OPEN_PATHS = frozenset({"/health", "/"})
"""Routes that need no API key: the health check of load balancers and orchestrators, and the watch
page (static HTML, no data: it asks for a key and sends it on its own calls)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ApiKeys:
    """The accepted API keys, held as SHA-256 digests: never printed or logged (``repr`` gives the
    count), and checked in constant time against every key (equal-length digests, no early exit).
    Ray Serve ships the app to its replicas pickled: with the digests, never the keys."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = tuple(_digest(k.strip().encode()) for k in keys if k.strip())

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "ApiKeys":
        """The keys of ``RRR_API_KEY`` (comma-separated, blank entries ignored); none when unset."""
        return cls((environ if environ is not None else os.environ).get(API_KEY_ENV, "").split(","))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._digests)} keys)"

    def accepts(self, authorization: Optional[bytes]) -> bool:
        """Whether an ``Authorization`` header value is ``Bearer <one of the keys>``."""
        scheme, _, token = (authorization or b"").strip().partition(b" ")
        digest = _digest(token.strip())
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched and scheme.lower() == b"bearer"


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def route_path(scope: Scope) -> str:
    """The request's path within this app: without the ``root_path`` that an app served under a
    route prefix (``serve.run(..., route_prefix="/adapters")``) sees in front of every path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        return path[len(root.rstrip("/")):] or "/"
    return path


def error_response(path: str, status: int, message: str, code: Optional[str] = None,
                   headers: Optional[dict[str, str]] = None, openai: bool = False) -> JSONResponse:
    """A JSON error in the shape of the route at ``path`` (or OpenAI's, with ``openai``)."""
    if openai or path.startswith("/v1/"):
        return typed_json(openai_error(message, code=code), status, headers)
    return typed_json(ErrorBody(error=message), status, headers)


def is_json(content_type: Optional[bytes]) -> bool:
    """``application/json`` or ``application/<something>+json``, whatever its parameters."""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    kind, _, subtype = media.partition(b"/")
    return kind == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))


class RequestGuard:
    """ASGI middleware: refuses, before any route runs, a request with headers over
    ``max_header_bytes`` (431), without a valid API key when keys are set (401), with a body over
    ``max_body_bytes`` (413: from Content-Length at once, else while a chunked body arrives), a body
    that is not ``application/json`` (415) or not UTF-8 (400).

    ``limits``: the limits of the app a request is for (called with ``scope["app"]``).
    """

    def __init__(self, app: ASGIApp, api_keys: ApiKeys, limits: Callable[[Any], HttpLimits]) -> None:
        self.app = app
        self.api_keys = api_keys
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        limits = self.limits(scope.get("app"))
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), value)

        async def refuse(status: int, message: str, **kwargs: Any) -> None:
            await error_response(path, status, message, **kwargs)(scope, receive, send)

        size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > limits.max_header_bytes:
            await refuse(431, f"the request headers are {size} bytes; this server's limit (max_header_bytes) "
                         f"is {limits.max_header_bytes}", headers={"Connection": "close"})
            return
        if self.api_keys and path not in OPEN_PATHS and not self.api_keys.accepts(headers.get(b"authorization")):
            message = ("invalid API key" if b"authorization" in headers
                       else "missing API key: send the header 'Authorization: Bearer <key>'")
            await refuse(401, message, code="invalid_api_key", openai=True, headers={"WWW-Authenticate": "Bearer"})
            return
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if not chunked and (length is None or length.strip() == b"0"):
            await self.app(scope, receive, send)  # no body
            return
        if length is not None and length.strip().isdigit() and int(length) > limits.max_body_bytes:
            await refuse(413, f"the body is {int(length)} bytes; this server's limit (max_body_bytes) is "
                         f"{limits.max_body_bytes}", headers={"Connection": "close"})
            return
        if not is_json(headers.get(b"content-type")):
            got = headers.get(b"content-type", b"none")[:100].decode("latin-1")
            await refuse(415, f"the body must be JSON, sent with 'Content-Type: application/json' (got {got})")
            return
        body = await _read_body(receive, limits.max_body_bytes)
        if body is None:  # the client left
            return
        if len(body) > limits.max_body_bytes:
            await refuse(413, f"the body is over this server's limit (max_body_bytes) of {limits.max_body_bytes} "
                         "bytes", headers={"Connection": "close"})
            return
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await refuse(400, f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})")
            return
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive, limit: int) -> Optional[bytes]:
    """The request body, or its first ``limit + 1`` bytes when it is longer; ``None`` on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read given back first (later calls: the disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()
    return replayed
