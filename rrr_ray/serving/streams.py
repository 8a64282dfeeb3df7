"""The two streaming stages of the graph, as plain async generators.

``model_stream``: engine deltas -> ``ModelChunk`` batches (the model deployment's output).
``postprocess``: ``ModelChunk`` batches -> ``OutputChunk`` batches with every token labelled by
its RRR section and, on the last, the ``FinalRecord`` (the post-processor deployment's output);
with ``Healing``, a reply that breaks the format is continued from its valid part
(``rrr_ray.serving.healing``), in one stream to the client.
Errors travel as data (a chunk with ``error``), so every hop ends its stream cleanly. Chunks and
records cross Ray hops, so they are plain picklable dataclasses.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Optional, Union

from rrr_ray.format import (
    ErrorCode, RepairReport, StreamValidator, Validation, prefix_state, prefix_violation, remainder_regex, repair,
    valid_prefix_length, validate)
from rrr_ray.format.stream import StreamEvent
from rrr_ray.serving.batching import batched
from rrr_ray.serving.engine import BadRequestError, Engine, EngineError
from rrr_ray.serving.healing import Healing
from rrr_ray.serving.protocol import EngineRequest, HealReport

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelChunk:
    """One Ray message from the model deployment: the text of one or more engine steps."""

    text: list[str] = field(default_factory=list)
    num_tokens: int = 0
    tokens_per_text: list[int] = field(default_factory=list)  # the tokens of each text, when known
    input_tokens: int = 0
    cached_tokens: Optional[int] = None  # of the input, found in the engine's prefix cache
    finished: bool = False
    finish_reason: Optional[str] = None
    engine_ttft_s: Optional[float] = None  # on the first chunk
    engine_time_s: Optional[float] = None  # on the last chunk
    error: Optional[str] = None
    status: Optional[int] = None  # an HTTP status when the request itself was bad
    adapter_load_s: Optional[float] = None  # on the first chunk, for a LoRA adapter: its load time here (0: warm)


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
    cached_tokens: Optional[int] = None  # of the input, found in the engine's prefix cache
    repaired_text: Optional[str] = None  # with repair only
    repair: Optional[RepairReport] = None  # with repair only
    heal: Optional[HealReport] = None  # a healed reply only
    adapter_load_s: Optional[float] = None  # a LoRA adapter's load time for this request (0: warm)


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
                    tokens_per_text=[o.num_tokens for o in outputs],
                    input_tokens=last.input_tokens, cached_tokens=last.cached_tokens, finished=last.finished,
                    finish_reason=last.finish_reason,
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


async def postprocess(chunks: AsyncIterator[ModelChunk], with_repair: bool = False,
                      healing: Optional[Healing] = None) -> AsyncIterator[OutputChunk]:
    """Validate the model's stream as it passes, labelling tokens; end with the verdict.

    With ``healing``, a reply that breaks the format is cut at its longest valid prefix (nothing past
    it is sent), the model's stream is closed, and the reply goes on with the tokens of a
    continuation from that prefix; so does a reply that the model ends before it is complete.
    A reply is healed at most once.
    """
    reply = _Reply(healing)
    source, continuation = chunks, None
    started = time.perf_counter()
    try:
        while source is not None:
            stream, source = source, None
            async for chunk in stream:
                if chunk.error is not None:
                    if continuation is not None and chunk.status is not None and chunk.status < 500:
                        # refused before it began (in practice: no room left in the context)
                        logger.warning("%s: the continuation was refused (%s); the reply ends as sent",
                                       healing.request.request_id, chunk.error)
                        end = ModelChunk(finished=True, finish_reason="length")
                        yield OutputChunk(finished=True, final=reply.final(end, with_repair))
                        return
                    began = reply.began or continuation is not None
                    yield OutputChunk(finished=True, error=chunk.error, status=None if began else chunk.status)
                    return
                reply.timing(chunk, continued=continuation is not None)
                tokens, broke = reply.take(chunk)
                if broke is None and chunk.finished and chunk.finish_reason == "stop":
                    broke = reply.ended_short()
                if broke is None:
                    if chunk.finished:
                        yield OutputChunk(tokens=tokens, finished=True, final=reply.final(chunk, with_repair))
                        return
                    if tokens:
                        reply.began = True
                        yield OutputChunk(tokens=tokens)
                    continue
                # The model's own part of the reply ends here.
                reply.healed(broke, chunk.engine_time_s if chunk.finished and chunk.engine_time_s is not None
                             else time.perf_counter() - started)
                await _close(stream)
                if prefix_state(reply.labeler.validator).complete:  # what was cut followed a whole reply
                    end = ModelChunk(finished=True, finish_reason="stop")
                    yield OutputChunk(tokens=tokens, finished=True, final=reply.final(end, with_repair))
                    return
                if tokens:
                    reply.began = True
                    yield OutputChunk(tokens=tokens)
                assert healing is not None
                request = healing.continuation(reply.text(), remainder_regex(reply.labeler.validator),
                                               healing.tokens_left(reply.output_tokens))
                logger.info("%s: healing the reply at character %d (%s), continued as %s",
                            healing.request.request_id, broke.position, broke.reason.value, request.request_id)
                source = continuation = healing.stream(request)
                break
            else:
                yield OutputChunk(finished=True, error="the model stream ended without finishing")
                return
    finally:
        if continuation is not None:
            await _close(continuation)


class _Reply:
    """The reply as the client gets it: the text sent, labelled, its token counts and engine times."""

    def __init__(self, healing: Optional[Healing]) -> None:
        self.watch = healing  # while set, every token is checked (until the reply is healed, or cannot be)
        self.labeler = SectionLabeler()
        self.parts: list[str] = []  # the text sent
        self.input_tokens = 0
        self.cached_tokens: Optional[int] = None
        self.output_tokens = 0  # the tokens whose text was sent, whole or in part
        self.engine_ttft: Optional[float] = None
        self.began = False  # tokens were sent
        self.heal: Optional[HealReport] = None
        self.own_tokens = 0  # healed: the tokens of the model's own part that were kept
        self.own_time_s = 0.0  # healed: the engine time of the model's own part
        self.continuation_ttft: Optional[float] = None
        self.adapter_load_s: Optional[float] = None

    def text(self) -> str:
        return "".join(self.parts)

    def timing(self, chunk: ModelChunk, continued: bool) -> None:
        if continued:  # the continuation's prompt holds the reply so far: its input is not the request's
            if chunk.engine_ttft_s is not None:
                self.continuation_ttft = chunk.engine_ttft_s
            return
        self.input_tokens = chunk.input_tokens or self.input_tokens
        if chunk.cached_tokens is not None:
            self.cached_tokens = chunk.cached_tokens
        if chunk.engine_ttft_s is not None:
            self.engine_ttft = chunk.engine_ttft_s
        if chunk.adapter_load_s is not None:
            self.adapter_load_s = chunk.adapter_load_s

    def take(self, chunk: ModelChunk) -> tuple[list[tuple[str, Optional[str]]], Optional[HealReport]]:
        """Label the chunk's texts; while watching, only up to where the reply breaks the format
        (with tokens left to heal it), returning what broke it."""
        tokens: list[tuple[str, Optional[str]]] = []
        for i, text in enumerate(chunk.text):
            labelled = self.labeler.push(text)
            if self.watch is not None and text and (reason := prefix_violation(self.labeler.validator)) is not None:
                broke = self._cut(chunk, i, reason, tokens)
                if broke is not None:
                    return tokens, broke
                self.watch = None  # no tokens left to heal it: the reply goes on as the model writes it
            tokens += labelled
            self.parts.append(text)
        self.output_tokens += chunk.num_tokens
        return tokens, None

    def _cut(self, chunk: ModelChunk, index: int, reason: ErrorCode,
             tokens: list[tuple[str, Optional[str]]]) -> Optional[HealReport]:
        """Cut the reply inside ``chunk.text[index]``, where it stopped being a valid prefix."""
        assert self.watch is not None
        sent = self.text()
        text = chunk.text[index]
        cut = max(valid_prefix_length(sent + text), len(sent))  # what was sent was a valid prefix
        kept = text[:cut - len(sent)]
        counts = chunk.tokens_per_text
        if len(counts) != len(chunk.text):  # not known: the chunk's tokens count on its last text
            counts = [0] * (len(chunk.text) - 1) + [chunk.num_tokens]
        kept_tokens = sum(counts[:index]) + (counts[index] if kept else 0)
        if self.watch.tokens_left(self.output_tokens + kept_tokens) < 1:
            return None
        self.labeler = SectionLabeler()  # the labeler again, over the text sent only
        self.labeler.validator.feed(sent)
        if kept:
            tokens += self.labeler.push(kept)
            self.parts.append(kept)
        self.output_tokens += kept_tokens
        return HealReport(position=cut, reason=reason, dropped_tokens=chunk.num_tokens - kept_tokens)

    def ended_short(self) -> Optional[HealReport]:
        """While watching, a reply the model ended before it is complete (tokens left): heal it from its end."""
        if self.watch is None or self.watch.tokens_left(self.output_tokens) < 1:
            return None
        state = prefix_state(self.labeler.validator)
        if state.complete or not state.valid:
            return None
        text = self.text()
        return HealReport(position=len(text), reason=validate(text).errors[0].code, dropped_tokens=0)

    def healed(self, report: HealReport, own_time_s: float) -> None:
        self.watch, self.heal = None, report
        self.own_tokens, self.own_time_s = self.output_tokens, own_time_s

    def final(self, chunk: ModelChunk, with_repair: bool) -> FinalRecord:
        engine_ttft, engine_time = self.engine_ttft, chunk.engine_time_s
        if self.heal is not None:  # engine times over both parts
            engine_time = self.own_time_s + (engine_time or 0.0)
            if self.own_tokens == 0:  # the first token the client got is the continuation's
                engine_ttft = None if self.continuation_ttft is None else self.own_time_s + self.continuation_ttft
        final = FinalRecord(text=self.text(), validation=self.labeler.close(), input_tokens=self.input_tokens,
                            output_tokens=self.output_tokens, finish_reason=chunk.finish_reason,
                            engine_ttft_s=engine_ttft, engine_time_s=engine_time, cached_tokens=self.cached_tokens,
                            heal=self.heal, adapter_load_s=self.adapter_load_s)
        if with_repair:
            final.repaired_text, final.repair = repair(final.text)
        return final


async def _close(stream: AsyncIterator[ModelChunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
