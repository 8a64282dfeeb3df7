"""The HTTP API's logic, independent of Ray: ``/generate`` (JSON or NDJSON), the OpenAI-compatible
``/v1/chat/completions`` (JSON or SSE) and ``/v1/models``, and ``/health``.

The service is given a ``stream`` function (in the graph: a call to the post-processor
deployment; in unit tests: the post-processor logic over a fake engine), so the same code is
tested with and without Ray. Each reply is read by the one consumer of ``replies`` and shaped by
its formatters.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Optional

from fastapi.responses import JSONResponse, Response, StreamingResponse

from rrr_ray.format import guided_regex
from rrr_ray.serving.adapters import AdapterCatalog
from rrr_ray.serving.errors import BadRequestError, ModelNotServedError
from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.messages import EngineRequest, OutputChunk, StageHealth
from rrr_ray.serving.metrics import ServingMetrics
from rrr_ray.serving.protocol import (
    AdapterStatus, AssistantMessage, ChatCompletion, ChatCompletionChoice, ChatCompletionRequest, GenerateFailure,
    GenerateRequest, GenerateResponse, HealthResponse, LoadLoraAdapterRequest, ModelCard, ModelList,
    SamplingOptions, UnloadLoraAdapterRequest)
from rrr_ray.serving.replies import (
    Failed, ReplyEvents, choice_logprobs, ndjson, open_reply, openai_error, sse, terminal, typed_json, usage)

StreamFn = Callable[[EngineRequest, bool], AsyncIterator[OutputChunk]]
HealthFn = Callable[[], Awaitable[dict[str, StageHealth]]]
"""Returns each served name's ``StageHealth``."""


@dataclass(frozen=True)
class ServedModel:
    """A name clients may put in ``model``: a model, or a LoRA adapter on one."""

    name: str
    root: str
    description: str = ""
    parent: Optional[str] = None  # the base model, for a LoRA adapter
    heal: bool = True  # the default of the request option ``heal`` (RRR models: on)
    guided_section_limits: bool = True  # a guided reply's sections are capped in length (``guided_regex``)
    dtype: Optional[str] = None  # the dtype the engine loads the weights in (``auto`` resolved)


class RRRService:
    def __init__(self, stream: StreamFn, health: HealthFn, models: list[ServedModel],
                 default_model: Optional[str] = None, metrics: Optional[ServingMetrics] = None,
                 limits: Optional[HttpLimits] = None, adapters: Optional[AdapterCatalog] = None) -> None:
        """``limits``: what one request may ask (enforced by the app, ``rrr_ray.serving.api``);
        ``adapters``: LoRA adapters served on demand (``rrr_ray.serving.adapters``)."""
        if not models:
            raise ValueError("no models to serve")
        self.stream = stream
        self.health_check = health
        self.models = {m.name: m for m in models}
        self.default_model = default_model or models[0].name
        if self.default_model not in self.models:
            raise ValueError(f"default model {self.default_model!r} is not among {list(self.models)}")
        self.metrics = metrics
        self.limits = limits or HttpLimits()
        self.adapters = adapters
        self._regex = {m.name: guided_regex(bounded=m.guided_section_limits) for m in models}
        self.created = int(time.time())

    # -- shared ---------------------------------------------------------------------------------

    def resolve_model(self, name: Optional[str]) -> str:
        name = name or self.default_model
        if name not in self.models:
            if self.adapters is None:
                raise ModelNotServedError(name, self.models)
            try:
                return self.adapters.resolve(name).name
            except ModelNotServedError:
                raise ModelNotServedError(name, [*self.models, *self.adapters.names()]) from None
        return name

    def engine_request(self, model: Optional[str], messages: list[dict[str, str]], sampling: SamplingOptions,
                       guided: bool, heal: Optional[bool] = None, logprobs: Optional[int] = None) -> EngineRequest:
        if sampling.max_new_tokens > self.limits.max_new_tokens:  # the default, where the limit is lower
            sampling = sampling.model_copy(update={"max_new_tokens": self.limits.max_new_tokens})
        name = self.resolve_model(model)
        base, adapter_path = name, None
        if name not in self.models:  # a LoRA adapter on demand: an RRR fine-tune, healed by default
            info = self.adapters.known[name]  # type: ignore[union-attr]
            base, adapter_path = info.base, info.path
        if heal is None:  # the model's default; a reply asked to run long (ignore_eos, min_tokens) is not cut short
            heal = ((self.models[name].heal if adapter_path is None else True)
                    and not sampling.ignore_eos and not sampling.min_tokens)
        return EngineRequest(request_id=f"rrr-{uuid.uuid4().hex}", model=name,
                             messages=messages, sampling=sampling,
                             guided_regex=self._regex[base] if guided else None,
                             heal=heal and not guided,  # a guided reply is valid already
                             logprobs=logprobs, adapter_path=adapter_path)

    async def reply(self, request: EngineRequest, with_repair: bool, start: float) -> ReplyEvents:
        """Start the request's stream and return its events (see ``replies.open_reply``)."""
        return await open_reply(self.stream(request, with_repair), request.model, start, self.metrics)

    # -- /generate ------------------------------------------------------------------------------

    async def generate(self, body: GenerateRequest) -> Response:
        start = time.perf_counter()
        request = self.engine_request(body.model, body.chat_messages(), body.sampling(), body.guided, body.heal)
        events = await self.reply(request, body.repair, start)
        if body.stream:
            return StreamingResponse(ndjson(events), media_type="application/x-ndjson")
        end = await terminal(events)
        if isinstance(end, Failed):
            return typed_json(GenerateFailure(generated_text=end.text, error=end.error), 500)
        record = end.record
        return typed_json(GenerateResponse(generated_text=record.text, metadata=end.metadata,
                                           validation=record.validation, repaired_text=record.repaired_text,
                                           repair=record.repair, heal=record.heal))

    # -- OpenAI-compatible ----------------------------------------------------------------------

    def list_models(self) -> ModelList:
        cards = [ModelCard(id=m.name, created=self.created, root=m.root, parent=m.parent, description=m.description,
                           dtype=m.dtype)
                 for m in self.models.values()]
        for info, loaded in self.adapters.listing() if self.adapters is not None else []:
            cards.append(ModelCard(id=info.name, created=self.created, root=info.path, parent=info.base,
                                   description=f"LoRA adapter on {info.base}", status="loaded" if loaded else "available"))
        return ModelList(data=cards)

    # -- LoRA adapters at run time (vLLM's endpoints) -------------------------------------------

    def _catalog(self, api_keys_on: bool) -> AdapterCatalog:
        if self.adapters is None:
            raise BadRequestError("no served model takes LoRA adapters (no 'adapters:' in any model's config)", 400)
        self.adapters.check_runtime(api_keys_on)
        return self.adapters

    async def load_adapter(self, body: LoadLoraAdapterRequest, api_keys_on: bool) -> AdapterStatus:
        info = await self._catalog(api_keys_on).load(body.lora_name, body.lora_path, body.load_inplace)
        return AdapterStatus(lora_name=info.name, parent=info.base, lora_path=info.path, status="loaded")

    async def unload_adapter(self, body: UnloadLoraAdapterRequest, api_keys_on: bool) -> AdapterStatus:
        info = await self._catalog(api_keys_on).unload(body.lora_name)
        return AdapterStatus(lora_name=info.name, parent=info.base, lora_path=info.path, status="unloaded")

    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        start = time.perf_counter()
        request = self.engine_request(body.model, [m.as_dict() for m in body.messages], body.sampling(),
                                      body.guided, body.heal, body.top_logprobs_count())
        events = await self.reply(request, False, start)
        completion_id = f"chatcmpl-{request.request_id[4:]}"
        if body.stream:
            return StreamingResponse(sse(events, completion_id, request.model, body.include_usage,
                                         logprobs=request.logprobs is not None), media_type="text/event-stream")
        end = await terminal(events)
        if isinstance(end, Failed):
            return typed_json(openai_error(end.error, "engine_error"), 500)
        record = end.record
        return typed_json(ChatCompletion(
            id=completion_id, created=int(time.time()), model=request.model,
            choices=[ChatCompletionChoice(
                message=AssistantMessage(content=record.text), finish_reason=record.finish_reason,
                stop_reason=record.stop_reason,
                logprobs=None if end.reply_logprobs is None else choice_logprobs(end.reply_logprobs))],
            usage=usage(record), rrr_validation=record.validation, rrr_heal=record.heal))

    # -- /health --------------------------------------------------------------------------------

    async def health(self) -> JSONResponse:
        report = await self.health_check()
        dead = {name: r.error for name, r in report.items() if r.error}
        body = HealthResponse(
            status="ok" if not dead else "unhealthy", model_loaded=not dead,
            models={name: not r.error for name, r in report.items()},
            unfinished_requests={name: r.unfinished_requests for name, r in report.items()},
            error="; ".join(f"{name}: {err}" for name, err in dead.items()) if dead else None)
        return typed_json(body, 503 if dead else 200)
