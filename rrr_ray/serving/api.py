"""The FastAPI router: thin routes over ``RRRService`` (``app.state.service``), clear 4xx errors.

Every body the server sends is a model of ``protocol``, declared on its route for the OpenAPI
schema, the streamed ones (NDJSON lines, SSE chunks) included. ``GET /`` is the watch page
(``static/index.html``), a client of these routes, left out of the schema. Every request passes
``guard.RequestGuard`` first (API keys, header and body size, media type); the schema states the
service's ``HttpLimits`` and, when API keys are on, the bearer scheme and its 401s.
"""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from rrr_ray.serving.errors import BadRequestError
from rrr_ray.serving.guard import API_KEY_ENV, OPEN_PATHS, ApiKeys, RequestGuard, error_response, route_path
from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.protocol import (
    AdapterStatus, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ErrorBody, GenerateFailure, GenerateRequest,
    GenerateResponse, GenerateStreamEnd, GenerateStreamToken, HealthResponse, LoadLoraAdapterRequest, ModelList,
    OpenAIError, UnloadLoraAdapterRequest)
from rrr_ray.serving.replies import openai_error, typed_json
from rrr_ray.serving.service import RRRService

logger = logging.getLogger(__name__)

_DEFAULT_LIMITS = HttpLimits()

_STATUS = {
    400: "The body is not valid JSON or not UTF-8, or the prompt does not fit the model's context.",
    404: "The model is not served.",
    413: "The body is over the server's limits.max_body_bytes.",
    415: "The body is not sent as application/json.",
    422: "The body is invalid, or over the server's limits (the message says which field and why).",
    500: "The engine failed.",
    503: "The model is restarting its engine (with Retry-After).",
}
_STREAMS: dict[str, tuple[str, list[type[BaseModel]]]] = {
    "/generate": ("application/x-ndjson", [GenerateStreamToken, GenerateStreamEnd]),
    "/v1/chat/completions": ("text/event-stream", [ChatCompletionChunk, OpenAIError]),
}
"""The streamed bodies, per route: the media type and the model of each line or event (an SSE
event's data; the stream ends with ``data: [DONE]``)."""


@functools.lru_cache(maxsize=1)
def watch_page() -> str:
    """The watch page (``GET /``): one HTML file of the package, with its CSS and JS inline."""
    return resources.files("rrr_ray.serving").joinpath("static", "index.html").read_text(encoding="utf-8")


def _service(request: Request) -> RRRService:
    service = request.app.state.service
    if service is None:
        raise RuntimeError("this app serves no RRRService")
    return service


def _limits(app: Any) -> HttpLimits:
    """The limits of the service an app serves (the defaults for an app without one: its schema)."""
    service = getattr(getattr(app, "state", None), "service", None)
    return service.limits if service is not None else _DEFAULT_LIMITS


def _within_limits(request: Request, body: BaseModel) -> None:
    errors = _limits(request.app).request_errors(body)
    if errors:
        raise RequestValidationError(errors)


def _is_openai(request: Request) -> bool:
    return route_path(request.scope).startswith("/v1/")


_NOT_AN_OBJECT = {"missing", "model_attributes_type", "model_type", "dict_type"}
"""Errors of the body as a whole: empty, null, an array, a string..."""


def _describe(errors: list) -> str:
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return "the body is not valid JSON"
        if tuple(e.get("loc", ())) == ("body",) and e.get("type") in _NOT_AN_OBJECT:
            return "the body must be a JSON object"
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msg = str(e.get("msg")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts)


_OPENAI_400 = ("The body is not valid JSON or not UTF-8, is invalid or over the server's limits, asks for what "
               "rrr-ray cannot do (tools, n > 1, ...), or the prompt does not fit the model's context (the message "
               "says which field and why).")


def _errors(model: Any, streamed: str = "", openai: bool = False) -> dict[Union[int, str], dict[str, Any]]:
    """The ``responses`` of a POST route: its error bodies, and the media type it streams in. An
    invalid body is a 422 outside ``/v1``, a 400 under it (as OpenAI's API answers)."""
    status = {**_STATUS, 400: _OPENAI_400} if openai else _STATUS
    out: dict[Union[int, str], dict[str, Any]] = {s: {"model": model, "description": d} for s, d in status.items()
                                                  if not (openai and s == 422)}
    if streamed:
        out[200] = {"description": f"JSON, or {streamed} with stream: true.", "content": {streamed: {}}}
    return out


def _add_streams(schema: dict[str, Any]) -> None:
    """Add the streamed bodies of ``_STREAMS`` to an OpenAPI schema."""
    models = [m for _, ms in _STREAMS.values() for m in ms]
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault(name, definition)
    for path, (media, ms) in _STREAMS.items():
        refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in ms]
        one = refs[0] if len(refs) == 1 else {"oneOf": refs}
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        content[media] = {"schema": _sse_event(one) if media == "text/event-stream" else one}


def _no_422_under_v1(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 on every route with a body; under ``/v1`` an invalid body is a 400."""
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
    if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)


def _sse_event(data: dict[str, Any]) -> dict[str, Any]:
    """The schema of one server-sent event (OpenAPI 3.1 describes each event of a stream): its
    data is JSON of the given schema, or the ``[DONE]`` that ends the stream."""
    return {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json", "contentSchema": data}]}}}


def _add_edge_errors(schema: dict[str, Any], api_keys: bool) -> None:
    """Document ``RequestGuard``'s answers on every route: 431, and with API keys the bearer
    scheme and its 401 (in OpenAI's shape) on every route but ``OPEN_PATHS``."""
    components = schema.setdefault("components", {})
    error_ref = {"$ref": "#/components/schemas/OpenAIError"}
    if api_keys:
        components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer",
                                                    "description": f"One of the keys of {API_KEY_ENV}."}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            shape = error_ref if path.startswith("/v1/") else {"$ref": "#/components/schemas/ErrorBody"}
            responses.setdefault("431", {"description": "The headers are over the server's limits.max_header_bytes.",
                                         "content": {"application/json": {"schema": shape}}})
            if api_keys and path not in OPEN_PATHS:
                operation["security"] = [{"apiKey": []}]
                responses["401"] = {"description": "No API key, or not one of the server's (WWW-Authenticate: Bearer).",
                                    "content": {"application/json": {"schema": error_ref}}}


class _App(FastAPI):
    """FastAPI, with the streamed bodies, the limits and the guard's errors in ``openapi()`` too
    (FastAPI documents the JSON bodies). A subclass rather than a patched ``app.openapi``: Ray
    Serve pickles the app. The schema is rebuilt when the service's limits change."""

    def openapi(self) -> dict[str, Any]:
        documented = (_limits(self), bool(self.state.api_keys))
        if self.openapi_schema is not None and getattr(self, "_documented", None) == documented:
            return self.openapi_schema
        self.openapi_schema = None
        schema = super().openapi()
        _no_422_under_v1(schema)
        _add_streams(schema)
        documented[0].document(schema)
        _add_edge_errors(schema, documented[1])
        self._documented = documented
        return schema


def create_app(service: RRRService | None = None, api_keys: ApiKeys | None = None) -> FastAPI:
    """The HTTP app over ``service``, kept on ``app.state`` (without one, the app only documents
    the API: its schema). ``api_keys``: default, those of ``RRR_API_KEY`` in this process's
    environment; none leaves every route open."""
    app = _App(title="rrr-ray", description="React-Respond-Reflect serving on Ray Serve + vLLM", version="0.1.0")
    app.state.service = service
    app.state.api_keys = ApiKeys.from_env() if api_keys is None else api_keys
    if app.state.api_keys:
        logger.info("API keys on: %d keys; every route but %s needs one", len(app.state.api_keys),
                    ", ".join(sorted(OPEN_PATHS)))
    app.add_middleware(RequestGuard, api_keys=app.state.api_keys, limits=_limits)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        message = _describe(errors)
        status = 400 if _is_openai(request) or any(e.get("type") == "json_invalid" for e in errors) else 422
        if _is_openai(request):
            return typed_json(openai_error(message), status)
        return typed_json(ErrorBody(error=message, detail=errors), status)

    @app.exception_handler(BadRequestError)
    async def _bad(request: Request, exc: BadRequestError) -> JSONResponse:
        headers = {"Retry-After": "5"} if exc.status == 503 else None  # a model restarting its engine
        if _is_openai(request):
            code = "model_not_found" if exc.status == 404 else None
            return typed_json(openai_error(str(exc), code=code), exc.status, headers)
        return typed_json(ErrorBody(error=str(exc)), exc.status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes (404), wrong methods (405, with Allow) and unparsable bodies, in the route's shape."""
        message = f"{exc.detail}: {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return error_response(route_path(request.scope), exc.status_code, str(message), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        """A bug: a JSON 500 naming the error's type, never a traceback (the log has it)."""
        return error_response(route_path(request.scope), 500, f"internal error ({type(exc).__name__})")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def watch() -> HTMLResponse:
        return HTMLResponse(watch_page())

    @app.get("/health", response_model=HealthResponse,
             responses={503: {"model": HealthResponse, "description": "An engine is dead or restarting."}})
    async def health(request: Request) -> Response:
        return await _service(request).health()

    @app.post("/generate", response_model=GenerateResponse,
              responses={**_errors(ErrorBody, "application/x-ndjson"),
                         500: {"model": Union[GenerateFailure, ErrorBody], "description": _STATUS[500]}})
    async def generate(body: GenerateRequest, request: Request) -> Response:
        _within_limits(request, body)
        return await _service(request).generate(body)

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        return _service(request).list_models()

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses=_errors(OpenAIError, "text/event-stream", openai=True))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        _within_limits(request, body)
        return await _service(request).chat_completions(body)

    # -- LoRA adapters at run time: vLLM's routes, behind the config switch (and the API key) -----
    adapter_errors = {s: {"model": OpenAIError, "description": d} for s, d in (
        (400, "The body is invalid, or the adapter cannot be served: a broken folder, a rank above "
              "max_lora_rank, another base."),
        (403, "Loading at run time is off in this server's config (runtime_adapters)."),
        (404, "No adapter folder there, or the adapter is not loaded."),
        (409, "The name is taken (another folder, or a configured adapter)."))}

    @app.post("/v1/load_lora_adapter", response_model=AdapterStatus, responses=adapter_errors)
    async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> AdapterStatus:
        return await _service(request).load_adapter(body, bool(request.app.state.api_keys))

    @app.post("/v1/unload_lora_adapter", response_model=AdapterStatus, responses=adapter_errors)
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> AdapterStatus:
        return await _service(request).unload_adapter(body, bool(request.app.state.api_keys))

    return app
