"""The two streaming stages of the graph, as plain async generators.

``model_stream``: engine deltas -> ``ModelChunk`` batches (the model deployment's output).
``postprocess``: ``ModelChunk`` batches -> ``OutputChunk`` batches with every token labelled by
its RRR section and, on the last, the ``FinalRecord`` (the post-processor deployment's output).
Errors travel as data (a chunk with ``error``), so every hop ends its stream cleanly. Chunks and
records cross Ray hops, so they are plain picklable dataclasses.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Optional, Union

from rrr_ray.format import RepairReport, StreamValidator, Validation, repair
from rrr_ray.format.stream import StreamEvent
from rrr_ray.serving.batching import batched
from rrr_ray.serving.engine import BadRequestError, Engine, EngineError
from rrr_ray.serving.protocol import EngineRequest

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelChunk:
    """One Ray message from the model deployment: the text of one or more engine steps."""

    text: list[str] = field(default_factory=list)
    num_tokens: int = 0
    input_tokens: int = 0
    finished: bool = False
    finish_reason: Optional[str] = None
    engine_ttft_s: Optional[float] = None  # on the first chunk
    engine_time_s: Optional[float] = None  # on the last chunk
    error: Optional[str] = None
    status: Optional[int] = None  # an HTTP status when the request itself was bad


@dataclass(slots=True)
class FinalRecord:
    """A finished reply: its text, the verdict, the engine's counts and times, and the repair if asked."""

    text: str
    validation: Validation
    input_tokens: int
    output_tokens: int
    finish_reason: Optional[str] = None
    engine_ttft_s: Optional[float] = None
    engine_time_s: Optional[float] = None
    repaired_text: Optional[str] = None  # with repair only
    repair: Optional[RepairReport] = None  # with repair only


@dataclass(slots=True)
class OutputChunk:
    """One Ray message from the post-processor: labelled tokens, and the verdict at the end."""

    tokens: list[tuple[str, Optional[str]]] = field(default_factory=list)
    finished: bool = False
    final: Optional[FinalRecord] = None
    error: Optional[str] = None
    status: Optional[int] = None


async def model_stream(engine: Engine, request: EngineRequest,
                       interval_s: Union[float, Callable[[], float]]) -> AsyncIterator[ModelChunk]:
    """Run one request on the engine, batching its deltas for the hop (first token at once)."""
    start = time.perf_counter()
    first = True
    try:
        async with contextlib.aclosing(batched(engine.generate(request), interval_s)) as batches:
            async for outputs in batches:
                now = time.perf_counter()
                last = outputs[-1]
                yield ModelChunk(
                    text=[o.text for o in outputs], num_tokens=sum(o.num_tokens for o in outputs),
                    input_tokens=last.input_tokens, finished=last.finished, finish_reason=last.finish_reason,
                    engine_ttft_s=now - start if first else None,
                    engine_time_s=now - start if last.finished else None)
                first = False
    except BadRequestError as exc:
        yield ModelChunk(finished=True, error=str(exc), status=exc.status if first else None)
    except EngineError as exc:
        logger.warning("engine error on %s: %s", request.request_id, exc)
        yield ModelChunk(finished=True, error=str(exc))


def _label(events: list[StreamEvent], current: Optional[str]) -> Optional[str]:
    for e in events:
        if e.kind in ("section_start", "section_end") or (e.kind == "text" and e.section and e.text.strip()):
            return e.section
    for e in events:
        if e.kind == "text":
            return e.section
    return current


class SectionLabeler:
    """Feeds tokens to a ``StreamValidator`` and labels each with the section it belongs to.

    No token is held back (that would delay the first token). A token that may start a tag
    (``<``, ``</re``) is labelled as a valid reply would continue: inside a section, with that
    section (its closing tag, or text); outside, with the section a valid reply opens next. So the
    pieces of ``<react>`` are all labelled ``react`` in a valid reply.
    """

    def __init__(self) -> None:
        self.validator = StreamValidator()

    def push(self, token: str) -> list[tuple[str, Optional[str]]]:
        if not token:  # e.g. the end-of-sequence token, skipped in detokenisation
            return []
        v = self.validator
        events = v.feed(token)
        if v.pending and not any(e.kind != "text" or e.text.strip() for e in events):
            return [(token, v.section or v.next_section)]
        return [(token, _label(events, v.section))]

    def close(self) -> Validation:
        return self.validator.close()


async def postprocess(chunks: AsyncIterator[ModelChunk], with_repair: bool = False) -> AsyncIterator[OutputChunk]:
    """Validate the model's stream as it passes, labelling tokens; end with the verdict."""
    labeler = SectionLabeler()
    parts: list[str] = []
    input_tokens = output_tokens = 0
    engine_ttft = None
    sent_any = False
    async for chunk in chunks:
        if chunk.error is not None:
            yield OutputChunk(finished=True, error=chunk.error,
                              status=None if sent_any else chunk.status)
            return
        tokens: list[tuple[str, Optional[str]]] = []
        for text in chunk.text:
            parts.append(text)
            tokens += labeler.push(text)
        input_tokens = chunk.input_tokens or input_tokens
        output_tokens += chunk.num_tokens
        if chunk.engine_ttft_s is not None:
            engine_ttft = chunk.engine_ttft_s
        if not chunk.finished:
            if tokens:
                sent_any = True
                yield OutputChunk(tokens=tokens)
            continue
        final = FinalRecord(text="".join(parts), validation=labeler.close(), input_tokens=input_tokens,
                            output_tokens=output_tokens, finish_reason=chunk.finish_reason,
                            engine_ttft_s=engine_ttft, engine_time_s=chunk.engine_time_s)
        if with_repair:
            final.repaired_text, final.repair = repair(final.text)
        yield OutputChunk(tokens=tokens, finished=True, final=final)
        return
    yield OutputChunk(finished=True, error="the model stream ended without finishing")
