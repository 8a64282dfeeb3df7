"""One reply, as the ingress sees it: the one consumer of a post-processor stream, and the JSON,
NDJSON and SSE formatters over its events.

``open_reply`` awaits the stream's first chunk (so a request rejected before it begins is still a
4xx) and returns the events: ``Tokens``, then exactly one terminal event, ``Finished`` or
``Failed``, which carries the last chunk's tokens (so a streamed reply ends in one write). The
consumer times the first token, builds the metadata and records the request's metrics, once; the
formatters only shape the events into bodies of ``protocol``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, AsyncIterator, Optional, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rrr_ray.serving.aio import close_quietly
from rrr_ray.serving.errors import BadRequestError
from rrr_ray.serving.messages import FinalRecord, OutputChunk, TokenLogprob
from rrr_ray.serving.metrics import ServingMetrics
from rrr_ray.serving.protocol import (
    ChatCompletionChunk, ChoiceLogprobs, ChunkChoice, ChunkDelta, GenerateStreamEnd, GenerateStreamToken,
    GenerationMetadata, OpenAIError, OpenAIErrorDetail, PromptTokensDetails, TokenLogprobEntry, TopLogprob, Usage)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Tokens:
    """Labelled tokens of the reply, in order: ``(text, section)``, and their logprobs if asked for."""

    tokens: list[tuple[str, Optional[str]]]
    logprobs: Optional[list[TokenLogprob]] = None


@dataclass(slots=True)
class Finished:
    """The terminal event of a reply that finished: its record, the request's metadata, and the
    unrounded times (from the request's arrival) the metadata was built from."""

    record: FinalRecord
    metadata: GenerationMetadata
    total_s: float
    ttft_s: Optional[float]
    tokens: list[tuple[str, Optional[str]]]  # those of the last chunk
    logprobs: Optional[list[TokenLogprob]] = None  # those of the last chunk's tokens, if asked for
    reply_logprobs: Optional[list[TokenLogprob]] = None  # those of the whole reply, if asked for


@dataclass(slots=True)
class Failed:
    """The terminal event of a reply that failed after it began, with the text generated before."""

    error: str
    text: str = ""
    tokens: list[tuple[str, Optional[str]]] = field(default_factory=list)  # those of the last chunk
    logprobs: Optional[list[TokenLogprob]] = None  # those of the last chunk's tokens, if asked for


ReplyEvent = Union[Tokens, Finished, Failed]
ReplyEvents = AsyncGenerator[ReplyEvent, None]


async def open_reply(stream: AsyncIterator[OutputChunk], model: str, start: float,
                     metrics: Optional[ServingMetrics]) -> ReplyEvents:
    """Wait for the stream's first chunk and return the reply's events (``start``: the request's
    arrival, ``perf_counter``). Raises ``BadRequestError`` if the stream rejected the request."""
    first = await anext(stream, None)
    if first is None:
        first = OutputChunk(finished=True, error="the stream ended before it began", status=500)
    if first.error is not None and first.status is not None:
        await close_quietly(stream)
        raise BadRequestError(first.error, first.status)
    return _consume(_chunks(first, stream), model, start, metrics)


async def _consume(chunks: AsyncGenerator[OutputChunk, None], model: str, start: float,
                   metrics: Optional[ServingMetrics]) -> ReplyEvents:
    """The one consumer of a reply stream."""
    parts: list[str] = []
    logprobs: Optional[list[TokenLogprob]] = None
    first_token: Optional[float] = None
    end: Union[Finished, Failed, None] = None
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if chunk.tokens:
                if first_token is None:
                    first_token = time.perf_counter()
                parts.extend(t for t, _ in chunk.tokens)
            if chunk.logprobs is not None:
                logprobs = (logprobs or []) + chunk.logprobs
            if chunk.error is not None:
                end = Failed(chunk.error, "".join(parts), chunk.tokens, chunk.logprobs)
                break
            if chunk.finished and chunk.final is not None:
                total = time.perf_counter() - start
                ttft = None if first_token is None else first_token - start
                end = Finished(chunk.final, _metadata(model, chunk.final, total, ttft), total, ttft, chunk.tokens,
                               chunk.logprobs, logprobs)
                break
            if chunk.tokens or chunk.logprobs:
                yield Tokens(chunk.tokens, chunk.logprobs)
    if end is None:
        end = Failed("the stream ended without a result", "".join(parts))
    if metrics is not None:
        record_metrics(metrics, model, end)
    yield end


def record_metrics(metrics: ServingMetrics, model: str, end: Union[Finished, Failed]) -> None:
    """Record the metrics of one request that ended (after its reply began)."""
    if isinstance(end, Failed):
        metrics.record_error(model)
        return
    record = end.record
    metrics.record(model, end.ttft_s, record.engine_ttft_s, end.total_s, record.output_tokens,
                   record.validation.valid)
    if record.heal is not None:
        metrics.record_heal(model, record.heal.reason.value)


# -- formatters -----------------------------------------------------------------------------------

async def terminal(events: ReplyEvents) -> Union[Finished, Failed]:
    """Drain the events for a response that is not streamed."""
    async with contextlib.aclosing(events):
        async for event in events:
            if not isinstance(event, Tokens):
                return event
    raise AssertionError("the events of a reply end with a terminal event")


async def ndjson(events: ReplyEvents) -> AsyncIterator[bytes]:
    """``/generate`` streamed: one ``GenerateStreamToken`` line a token, then a ``GenerateStreamEnd``."""
    async for event in events:
        lines = "".join(_spliced(_token_line(section), token) for token, section in event.tokens)
        if isinstance(event, Failed):
            lines += _line(GenerateStreamEnd(error=event.error))
        elif isinstance(event, Finished):
            record = event.record
            lines += _line(GenerateStreamEnd(metadata=event.metadata, validation=record.validation,
                                             repaired_text=record.repaired_text, repair=record.repair,
                                             heal=record.heal))
        if lines:
            yield lines.encode()


async def sse(events: ReplyEvents, completion_id: str, model: str, include_usage: bool = False,
              logprobs: bool = False) -> AsyncIterator[bytes]:
    """``/v1/chat/completions`` streamed: ``ChatCompletionChunk`` events, then ``[DONE]``. One event
    per token; with ``logprobs``, one per chunk of the post-processor's stream, with its tokens'
    logprobs. The event with ``finish_reason`` carries the verdict; with ``include_usage`` an event
    with no choices and the usage follows it (as OpenAI's API)."""
    created = int(time.time())

    def chunk(delta: ChunkDelta, finish_reason: Optional[str] = None, stop_reason: Optional[str] = None,
              entries: Optional[list[TokenLogprob]] = None, **extra: Any) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason, stop_reason=stop_reason,
                             logprobs=None if entries is None else choice_logprobs(entries))
        return _event(ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[choice], **extra))

    def content(event: ReplyEvent) -> str:
        if not logprobs:
            return "".join(_spliced(template, token) for token, _ in event.tokens)
        if not event.tokens and not event.logprobs:
            return ""
        return chunk(ChunkDelta(content="".join(t for t, _ in event.tokens)), entries=event.logprobs or [])

    template = _template(chunk(ChunkDelta(content=_SLOT)))
    yield chunk(ChunkDelta(role="assistant", content="")).encode()
    async for event in events:
        text = content(event)
        if isinstance(event, Failed):
            text += _event(openai_error(event.error, "engine_error")) + _DONE
        elif isinstance(event, Finished):
            record = event.record
            text += chunk(ChunkDelta(), record.finish_reason or "stop", record.stop_reason,
                          rrr_validation=record.validation, rrr_heal=record.heal)
            if include_usage:
                text += _event(ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[],
                                                   usage=usage(record)))
            text += _DONE
        if text:
            yield text.encode()


def typed_json(body: BaseModel, status_code: int = 200, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    """A response model as a JSON response (with a status the route's ``response_model`` cannot give)."""
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def openai_error(message: str, kind: str = "invalid_request_error", code: Optional[str] = None) -> OpenAIError:
    return OpenAIError(error=OpenAIErrorDetail(message=message, type=kind, code=code))


LOGPROB_FLOOR = -9999.0
"""A log probability of minus infinity, as JSON can carry it (vLLM's OpenAI server sends the same)."""


def choice_logprobs(entries: list[TokenLogprob]) -> ChoiceLogprobs:
    """Logprobs in OpenAI's shape."""
    def entry(token: str, logprob: float) -> dict[str, Any]:
        value = max(logprob, LOGPROB_FLOOR) if math.isfinite(logprob) else LOGPROB_FLOOR
        return {"token": token, "logprob": value, "bytes": list(token.encode("utf-8", errors="replace"))}
    return ChoiceLogprobs(content=[TokenLogprobEntry(**entry(e.token, e.logprob),
                                                     top_logprobs=[TopLogprob(**entry(t, lp)) for t, lp in e.top])
                                   for e in entries])


def usage(record: FinalRecord) -> Usage:
    cached = None if record.cached_tokens is None else PromptTokensDetails(cached_tokens=record.cached_tokens)
    return Usage(prompt_tokens=record.input_tokens, completion_tokens=record.output_tokens,
                 total_tokens=record.input_tokens + record.output_tokens, prompt_tokens_details=cached)


_DONE = "data: [DONE]\n\n"
_SLOT = "\x00token\x00"


def _line(body: BaseModel) -> str:
    return json.dumps(body.model_dump(mode="json")) + "\n"


def _event(body: BaseModel) -> str:
    return f"data: {json.dumps(body.model_dump(mode='json'))}\n\n"


def _template(text: str) -> tuple[str, str]:
    """Split a dumped body around ``_SLOT``. ``json.dumps`` is compositional, so the body with a
    token in the slot is ``head + json.dumps(token) + tail``: the per-token path dumps only the token."""
    head, slot, tail = text.partition(json.dumps(_SLOT))
    if not slot:
        raise ValueError("the slot is not in the body")
    return head, tail


def _spliced(template: tuple[str, str], token: str) -> str:
    return template[0] + json.dumps(token) + template[1]


@functools.lru_cache(maxsize=16)
def _token_line(section: Optional[str]) -> tuple[str, str]:
    return _template(_line(GenerateStreamToken(token=_SLOT, section=section)))


def _metadata(model: str, record: FinalRecord, total: float, ttft: Optional[float]) -> GenerationMetadata:
    return GenerationMetadata(
        input_tokens=record.input_tokens, cached_input_tokens=record.cached_tokens, output_tokens=record.output_tokens,
        inference_time_seconds=round(total, 4),
        tokens_per_second=round(record.output_tokens / total, 2) if total > 0 else 0.0,
        time_to_first_token_seconds=_round(ttft), engine_time_to_first_token_seconds=_round(record.engine_ttft_s),
        engine_time_seconds=_round(record.engine_time_s), finish_reason=record.finish_reason, model=model,
        adapter_load_seconds=_round(record.adapter_load_s))


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


async def _chunks(first: OutputChunk, stream: AsyncIterator[OutputChunk]) -> AsyncGenerator[OutputChunk, None]:
    """The stream again with its first chunk, up to the finished one; closes the stream."""
    try:
        yield first
        if not first.finished:
            async for chunk in stream:
                yield chunk
                if chunk.finished:
                    break
    finally:
        await close_quietly(stream)
