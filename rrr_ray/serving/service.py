"""The HTTP API's logic, independent of Ray: ``/generate`` (JSON or NDJSON), the OpenAI-compatible
``/v1/chat/completions`` (JSON or SSE) and ``/v1/models``, and ``/health``.

The service is given a ``stream`` function (in the graph: a call to the post-processor
deployment; in unit tests: the post-processor logic over a fake engine), so the same code is
tested with and without Ray.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from fastapi.responses import JSONResponse, Response, StreamingResponse

from rrr_ray.format import guided_regex
from rrr_ray.serving.engine import BadRequestError
from rrr_ray.serving.metrics import ServingMetrics
from rrr_ray.serving.protocol import ChatCompletionRequest, EngineRequest, GenerateRequest, SamplingOptions
from rrr_ray.serving.streams import OutputChunk

logger = logging.getLogger(__name__)

StreamFn = Callable[[EngineRequest, bool], AsyncIterator[OutputChunk]]
HealthFn = Callable[[], Awaitable[dict[str, dict[str, Any]]]]
"""Returns, per served name, ``{"error": str | None, "unfinished_requests": int | None}``."""


@dataclass(frozen=True)
class ServedModel:
    """A name clients may put in ``model``: a model, or a LoRA adapter on one."""

    name: str
    root: str
    description: str = ""
    parent: Optional[str] = None  # the base model, for a LoRA adapter


@dataclass
class _Collected:
    text: str
    final: Optional[dict[str, Any]] = None
    metadata: Optional[dict[str, Any]] = None
    error: Optional[str] = None


class RRRService:
    def __init__(self, stream: StreamFn, health: HealthFn, models: list[ServedModel],
                 default_model: Optional[str] = None, metrics: Optional[ServingMetrics] = None) -> None:
        if not models:
            raise ValueError("no models to serve")
        self.stream = stream
        self.health_check = health
        self.models = {m.name: m for m in models}
        self.default_model = default_model or models[0].name
        if self.default_model not in self.models:
            raise ValueError(f"default model {self.default_model!r} is not among {list(self.models)}")
        self.metrics = metrics
        self._regex = guided_regex()
        self.created = int(time.time())

    # -- shared ---------------------------------------------------------------------------------

    def resolve_model(self, name: Optional[str]) -> str:
        name = name or self.default_model
        if name not in self.models:
            raise BadRequestError(f"model {name!r} is not served; available: {', '.join(self.models)}", 404)
        return name

    def engine_request(self, model: Optional[str], messages: list[dict[str, str]], sampling: SamplingOptions,
                       guided: bool) -> EngineRequest:
        return EngineRequest(request_id=f"rrr-{uuid.uuid4().hex}", model=self.resolve_model(model),
                             messages=messages, sampling=sampling,
                             guided_regex=self._regex if guided else None)

    async def _open(self, request: EngineRequest, with_repair: bool) -> tuple[OutputChunk, AsyncIterator[OutputChunk]]:
        """Start the stream and wait for its first chunk, so a bad request still gets a 4xx."""
        stream = self.stream(request, with_repair)
        first = await anext(stream, None)
        if first is None:
            first = OutputChunk(finished=True, error="the stream ended before it began", status=500)
        if first.error is not None and first.status is not None:
            await _close(stream)
            raise BadRequestError(first.error, first.status)
        return first, stream

    async def _chunks(self, first: OutputChunk, stream: AsyncIterator[OutputChunk]) -> AsyncIterator[OutputChunk]:
        try:
            yield first
            if not first.finished:
                async for chunk in stream:
                    yield chunk
                    if chunk.finished:
                        break
        finally:
            await _close(stream)

    def _metadata(self, model: str, final: dict[str, Any], start: float, first_token: Optional[float]) -> dict[str, Any]:
        total = time.perf_counter() - start
        ttft = None if first_token is None else first_token - start
        out_tokens = final["output_tokens"]
        if self.metrics is not None:
            self.metrics.record(model, ttft, final.get("engine_ttft_s"), total, out_tokens,
                                final["validation"]["valid"])
        return {
            "input_tokens": final["input_tokens"], "output_tokens": out_tokens,
            "inference_time_seconds": round(total, 4),
            "tokens_per_second": round(out_tokens / total, 2) if total > 0 else 0.0,
            "time_to_first_token_seconds": None if ttft is None else round(ttft, 4),
            "engine_time_to_first_token_seconds": _round(final.get("engine_ttft_s")),
            "engine_time_seconds": _round(final.get("engine_time_s")),
            "finish_reason": final.get("finish_reason"), "model": model,
        }

    async def _collect(self, model: str, chunks: AsyncIterator[OutputChunk], start: float) -> "_Collected":
        """Drain a stream for a non-streaming response."""
        parts: list[str] = []
        first_token = None
        async for chunk in chunks:
            if chunk.tokens and first_token is None:
                first_token = time.perf_counter()
            parts.extend(t for t, _ in chunk.tokens)
            if chunk.error is not None:
                self._record_error(model)
                return _Collected("".join(parts), error=chunk.error)
            if chunk.finished and chunk.final is not None:
                metadata = self._metadata(model, chunk.final, start, first_token)
                return _Collected(chunk.final["text"], final=chunk.final, metadata=metadata)
        return _Collected("".join(parts), error="the stream ended without a result")

    # -- /generate ------------------------------------------------------------------------------

    async def generate(self, body: GenerateRequest) -> Response:
        start = time.perf_counter()
        sampling = SamplingOptions(**body.model_dump(include=set(SamplingOptions.model_fields)))
        request = self.engine_request(body.model, body.chat_messages(), sampling, body.guided)
        first, stream = await self._open(request, body.repair)
        chunks = self._chunks(first, stream)
        if body.stream:
            return StreamingResponse(self._ndjson(request.model, chunks, start), media_type="application/x-ndjson")
        result = await self._collect(request.model, chunks, start)
        if result.error is not None:
            return JSONResponse({"generated_text": result.text, "metadata": None, "validation": None,
                                 "error": result.error}, status_code=500)
        final = result.final
        return JSONResponse({
            "generated_text": final["text"], "metadata": result.metadata, "validation": final["validation"],
            "repaired_text": final.get("repaired_text"), "repair": final.get("repair"), "error": None})

    async def _ndjson(self, model: str, chunks: AsyncIterator[OutputChunk], start: float) -> AsyncIterator[bytes]:
        first_token = None
        async for chunk in chunks:
            if chunk.tokens and first_token is None:
                first_token = time.perf_counter()
            lines = [json.dumps({"token": t, "section": s, "finished": False}) for t, s in chunk.tokens]
            if chunk.error is not None:
                self._record_error(model)
                lines.append(json.dumps({"token": "", "finished": True, "error": chunk.error}))
            elif chunk.finished and chunk.final is not None:
                final = chunk.final
                last = {"token": "", "finished": True, "metadata": self._metadata(model, final, start, first_token),
                        "validation": final["validation"]}
                if "repaired_text" in final:
                    last.update(repaired_text=final["repaired_text"], repair=final["repair"])
                lines.append(json.dumps(last))
            if lines:
                yield ("\n".join(lines) + "\n").encode()

    # -- OpenAI-compatible ----------------------------------------------------------------------

    def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": self.created, "owned_by": "rrr-ray", "root": m.root,
             "parent": m.parent, "description": m.description} for m in self.models.values()]}

    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        start = time.perf_counter()
        request = self.engine_request(body.model, [m.model_dump() for m in body.messages], body.sampling(),
                                      body.guided)
        first, stream = await self._open(request, False)
        chunks = self._chunks(first, stream)
        completion_id = f"chatcmpl-{request.request_id[4:]}"
        if body.stream:
            return StreamingResponse(self._sse(request.model, completion_id, chunks, start),
                                     media_type="text/event-stream")
        result = await self._collect(request.model, chunks, start)
        if result.error is not None:
            return JSONResponse(openai_error(result.error, "engine_error"), status_code=500)
        final = result.final
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": final["text"]},
                         "finish_reason": final["finish_reason"]}],
            "usage": _usage(final), "rrr_validation": final["validation"]})

    async def _sse(self, model: str, completion_id: str, chunks: AsyncIterator[OutputChunk],
                   start: float) -> AsyncIterator[bytes]:
        created = int(time.time())
        first_token = None

        def event(delta: dict[str, Any], finish: Optional[str] = None, **extra: Any) -> str:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(payload)}\n\n"

        yield event({"role": "assistant", "content": ""}).encode()
        async for chunk in chunks:
            if chunk.tokens and first_token is None:
                first_token = time.perf_counter()
            out = [event({"content": t}) for t, _ in chunk.tokens]
            if chunk.error is not None:
                self._record_error(model)
                out.append(f"data: {json.dumps(openai_error(chunk.error, 'engine_error'))}\n\n")
                out.append("data: [DONE]\n\n")
            elif chunk.finished and chunk.final is not None:
                final = chunk.final
                self._metadata(model, final, start, first_token)
                out.append(event({}, final["finish_reason"] or "stop", usage=_usage(final),
                                 rrr_validation=final["validation"]))
                out.append("data: [DONE]\n\n")
            if out:
                yield "".join(out).encode()

    # -- /health --------------------------------------------------------------------------------

    async def health(self) -> JSONResponse:
        report = await self.health_check()
        dead = {name: r["error"] for name, r in report.items() if r.get("error")}
        body: dict[str, Any] = {"status": "ok" if not dead else "unhealthy", "model_loaded": not dead,
                                "models": {name: not r.get("error") for name, r in report.items()},
                                "unfinished_requests": {name: r.get("unfinished_requests") for name, r in report.items()}}
        if dead:
            body["error"] = "; ".join(f"{name}: {err}" for name, err in dead.items())
        return JSONResponse(body, status_code=503 if dead else 200)

    def _record_error(self, model: str) -> None:
        if self.metrics is not None:
            self.metrics.record_error(model)


def openai_error(message: str, kind: str = "invalid_request_error", code: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(final: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": final["input_tokens"], "completion_tokens": final["output_tokens"],
            "total_tokens": final["input_tokens"] + final["output_tokens"]}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a finished or broken stream is best-effort
            logger.debug("closing stream failed", exc_info=True)
