"""The FastAPI router: thin routes over ``RRRService`` (``app.state.service``), clear 4xx errors."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from rrr_ray.serving.engine import BadRequestError
from rrr_ray.serving.protocol import ChatCompletionRequest, GenerateRequest
from rrr_ray.serving.service import RRRService, openai_error


_installed: RRRService | None = None


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


def create_app(service: RRRService | None = None) -> FastAPI:
    app = FastAPI(title="rrr-ray", description="React-Respond-Reflect serving on Ray Serve + vLLM",
                  version="0.1.0")
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        message = _describe(errors)
        status = 400 if message == "the body is not valid JSON" else 422
        if _is_openai(request):
            return JSONResponse(openai_error(message), status_code=status)
        return JSONResponse({"error": message, "detail": errors}, status_code=status)

    @app.exception_handler(BadRequestError)
    async def _bad(request: Request, exc: BadRequestError) -> JSONResponse:
        headers = {"Retry-After": "5"} if exc.status == 503 else None  # a model restarting its engine
        if _is_openai(request):
            code = "model_not_found" if exc.status == 404 else None
            return JSONResponse(openai_error(str(exc), code=code), status_code=exc.status, headers=headers)
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.get("/health")
    async def health(request: Request) -> Response:
        return await _service(request).health()

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> Response:
        return await _service(request).generate(body)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        return _service(request).list_models()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _service(request).chat_completions(body)

    return app
