"""The FastAPI router: thin routes over ``RRRService`` (``app.state.service``), clear 4xx errors.

Every body the server sends is a model of ``protocol``, declared on its route for the OpenAPI
schema, the streamed ones (NDJSON lines, SSE chunks) included.
"""

from __future__ import annotations

from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from rrr_ray.serving.engine import BadRequestError
from rrr_ray.serving.protocol import (
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ErrorBody, GenerateFailure, GenerateRequest,
    GenerateResponse, GenerateStreamEnd, GenerateStreamToken, HealthResponse, ModelList, OpenAIError)
from rrr_ray.serving.replies import openai_error, typed_json
from rrr_ray.serving.service import RRRService

_installed: RRRService | None = None

_STATUS = {
    400: "The body is not valid JSON, or the prompt does not fit the model's context.",
    404: "The model is not served.",
    422: "The body is invalid (the message says which field and why).",
    500: "The engine failed.",
    503: "The model is restarting its engine (with Retry-After).",
}
_STREAMS: dict[str, tuple[str, list[type[BaseModel]]]] = {
    "/generate": ("application/x-ndjson", [GenerateStreamToken, GenerateStreamEnd]),
    "/v1/chat/completions": ("text/event-stream", [ChatCompletionChunk]),
}
"""The streamed bodies, per route: the media type and the model of each line or event."""


def install_service(service: RRRService) -> None:
    """Serve the given service from every app of this process (Ray Serve copies the app object
    when it builds the ingress replica, so state set on the module's app would not be seen)."""
    global _installed
    _installed = service


def _service(request: Request) -> RRRService:
    service = getattr(request.app.state, "service", None) or _installed
    if service is None:
        raise RuntimeError("no RRRService installed")
    return service


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _describe(errors: list) -> str:
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return "the body is not valid JSON"
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "invalid request: " + "; ".join(parts)


def _errors(model: Any, streamed: str = "") -> dict[Union[int, str], dict[str, Any]]:
    """The ``responses`` of a POST route: its error bodies, and the media type it streams in."""
    out: dict[Union[int, str], dict[str, Any]] = {s: {"model": model, "description": d} for s, d in _STATUS.items()}
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
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        content[media] = {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}


class _App(FastAPI):
    """FastAPI, with the streamed bodies in ``openapi()`` too (FastAPI documents the JSON ones).
    A subclass rather than a patched ``app.openapi``: Ray Serve pickles the app."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        _add_streams(schema)
        return schema


def create_app(service: RRRService | None = None) -> FastAPI:
    app = _App(title="rrr-ray", description="React-Respond-Reflect serving on Ray Serve + vLLM", version="0.1.0")
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        message = _describe(errors)
        status = 400 if message == "the body is not valid JSON" else 422
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

    @app.get("/health", response_model=HealthResponse,
             responses={503: {"model": HealthResponse, "description": "An engine is dead or restarting."}})
    async def health(request: Request) -> Response:
        return await _service(request).health()

    @app.post("/generate", response_model=GenerateResponse,
              responses={**_errors(ErrorBody, "application/x-ndjson"),
                         500: {"model": Union[GenerateFailure, ErrorBody], "description": _STATUS[500]}})
    async def generate(body: GenerateRequest, request: Request) -> Response:
        return await _service(request).generate(body)

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        return _service(request).list_models()

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses=_errors(OpenAIError, "text/event-stream"))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _service(request).chat_completions(body)

    return app
