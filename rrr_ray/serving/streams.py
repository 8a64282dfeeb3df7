"""The two streaming stages of the graph, as plain async generators over ``messages``.

``model_stream``: engine deltas -> ``ModelChunk`` batches (the model stage's output).
``postprocess``: ``ModelChunk`` batches -> ``OutputChunk`` batches with every token labelled by
its RRR section (``labeling``) and, on the last, the ``FinalRecord`` (the post-processing stage's
output); with ``Healing``, a reply that breaks the format is continued from its valid part
(``rrr_ray.serving.healing``), in one stream to the client.
Errors travel as data (a chunk with ``error``), so every hop ends its stream cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import AsyncIterator, Callable, Optional, Union

from rrr_ray.format import (
    ErrorCode, prefix_state, prefix_violation, remainder_regex, repair, valid_prefix_length, validate)
from rrr_ray.serving.aio import close_quietly
from rrr_ray.serving.batching import batched
from rrr_ray.serving.engine import Engine
from rrr_ray.serving.errors import BadRequestError, EngineError
from rrr_ray.serving.healing import Healing
from rrr_ray.serving.labeling import SectionLabeler
from rrr_ray.serving.messages import EngineRequest, FinalRecord, HealReport, ModelChunk, OutputChunk, TokenLogprob

logger = logging.getLogger(__name__)


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
                    finish_reason=last.finish_reason, stop_reason=last.stop_reason,
                    logprobs=None if request.logprobs is None else [o.logprobs or [] for o in outputs],
                    engine_ttft_s=now - start if first else None,
                    engine_time_s=now - start if last.finished else None)
                first = False
    except BadRequestError as exc:
        yield ModelChunk(finished=True, error=str(exc), status=exc.status if first else None)
    except EngineError as exc:
        logger.warning("engine error on %s: %s", request.request_id, exc)
        yield ModelChunk(finished=True, error=str(exc))


async def postprocess(chunks: AsyncIterator[ModelChunk], with_repair: bool = False,
                      healing: Optional[Healing] = None) -> AsyncIterator[OutputChunk]:
    """Validate the model's stream as it passes, labelling tokens; end with the verdict.

    With ``healing``, a reply that breaks the format is cut at its longest valid prefix (nothing past
    it is sent), the model's stream is closed, and the reply goes on with the tokens of a
    continuation from that prefix; so does a reply that the model ends before it is complete.
    A reply is healed at most once. Two steps: ``_until_broken``, then, when the reply broke,
    ``_from_valid_prefix``.
    """
    reply = _Reply(healing, with_repair)
    async with contextlib.aclosing(_until_broken(chunks, reply)) as outputs:
        async for output in outputs:
            yield output
    if reply.ended:
        return
    assert healing is not None
    async with contextlib.aclosing(_from_valid_prefix(healing, reply)) as outputs:
        async for output in outputs:
            yield output


async def _until_broken(chunks: AsyncIterator[ModelChunk], reply: _Reply) -> AsyncIterator[OutputChunk]:
    """Step 1: stream the model's own reply until it ends, or (healed) until it breaks the format;
    then close the model's stream and keep the valid prefix. The reply has ``ended`` unless it is
    to be continued from that prefix."""
    started = time.perf_counter()
    async for chunk in chunks:
        if chunk.error is not None:
            yield reply.fail(chunk.error, status=None if reply.began else chunk.status)
            return
        reply.note_times(chunk, continued=False)
        tokens, broke = reply.label(chunk)
        if broke is None and chunk.finished and chunk.finish_reason == "stop" and chunk.stop_reason is None:
            broke = reply.ended_short()  # the model's end of sequence (a stop string is the client's)
        if broke is None:
            if chunk.finished:
                yield reply.finish(tokens, chunk)
                return
            if tokens:
                yield reply.send(tokens)
            continue
        # The model's own part of the reply ends here.
        reply.mark_healed(broke, chunk.engine_time_s if chunk.finished and chunk.engine_time_s is not None
                          else time.perf_counter() - started)
        await close_quietly(chunks)
        if prefix_state(reply.labeler.validator).complete:  # what was cut followed a whole reply
            yield reply.finish(tokens, ModelChunk(finished=True, finish_reason="stop"))
        elif tokens:
            yield reply.send(tokens)
        return
    yield reply.fail("the model stream ended without finishing")


async def _from_valid_prefix(healing: Healing, reply: _Reply) -> AsyncIterator[OutputChunk]:
    """Step 2: ask the same model to continue the reply from its valid prefix, guided by the regex
    of that prefix's valid remainders within the tokens left, and stream the continuation."""
    request = healing.continuation(reply.text(), remainder_regex(reply.labeler.validator),
                                   healing.tokens_left(reply.output_tokens))
    logger.info("%s: healing the reply at character %d (%s), continued as %s",
                healing.request.request_id, reply.heal.position, reply.heal.reason.value, request.request_id)
    continuation = healing.stream(request)
    try:
        async for chunk in continuation:
            if chunk.error is not None:
                if chunk.status is not None and chunk.status < 500:
                    # refused before it began (in practice: no room left in the context)
                    logger.warning("%s: the continuation was refused (%s); the reply ends as sent",
                                   healing.request.request_id, chunk.error)
                    yield reply.finish([], ModelChunk(finished=True, finish_reason="length"))
                else:
                    yield reply.fail(chunk.error)  # the reply began: no status
                return
            reply.note_times(chunk, continued=True)
            tokens, _ = reply.label(chunk)  # no longer checked: it cannot break
            if chunk.finished:
                yield reply.finish(tokens, chunk)
                return
            if tokens:
                yield reply.send(tokens)
        yield reply.fail("the model stream ended without finishing")
    finally:
        await close_quietly(continuation)


class _Reply:
    """The reply as the client gets it: the text sent, labelled, its token counts and engine times;
    and the output chunks that send it."""

    def __init__(self, healing: Optional[Healing], with_repair: bool) -> None:
        self.healing = healing  # while set, every token is checked (until the reply is healed, or cannot be)
        self.with_repair = with_repair
        self.ended = False  # the last chunk (finished, or an error) was made
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
        self.logprobs: Optional[list[TokenLogprob]] = None  # of the tokens labelled since the last chunk sent
        self.adapter_load_s: Optional[float] = None

    def text(self) -> str:
        return "".join(self.parts)

    def send(self, tokens: list[tuple[str, Optional[str]]]) -> OutputChunk:
        self.began = True
        return OutputChunk(tokens=tokens, logprobs=self._sent_logprobs())

    def finish(self, tokens: list[tuple[str, Optional[str]]], chunk: ModelChunk) -> OutputChunk:
        """The last chunk of a reply that finished (``chunk`` gives its finish reason and engine time)."""
        self.ended = True
        return OutputChunk(tokens=tokens, logprobs=self._sent_logprobs(), finished=True, final=self.final(chunk))

    def _sent_logprobs(self) -> Optional[list[TokenLogprob]]:
        """The logprobs of the tokens labelled since the last chunk sent (None: not asked for)."""
        taken, self.logprobs = self.logprobs, None
        return taken

    def _keep_logprobs(self, chunk: ModelChunk, upto: int) -> None:
        """Keep the logprobs of the chunk's first ``upto`` texts."""
        if chunk.logprobs is not None:
            self.logprobs = (self.logprobs or []) + [lp for per_text in chunk.logprobs[:upto] for lp in per_text]

    def fail(self, error: str, status: Optional[int] = None) -> OutputChunk:
        """The last chunk of a reply that failed (a status only while nothing was sent)."""
        self.ended = True
        return OutputChunk(finished=True, error=error, status=status)

    def note_times(self, chunk: ModelChunk, continued: bool) -> None:
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

    def label(self, chunk: ModelChunk) -> tuple[list[tuple[str, Optional[str]]], Optional[HealReport]]:
        """Label the chunk's texts; while healing, only up to where the reply breaks the format
        (with tokens left to heal it), returning what broke it."""
        tokens: list[tuple[str, Optional[str]]] = []
        for i, text in enumerate(chunk.text):
            labelled = self.labeler.push(text)
            if self.healing is not None and text and (reason := prefix_violation(self.labeler.validator)) is not None:
                broke = self._cut(chunk, i, reason, tokens)
                if broke is not None:
                    return tokens, broke
                self.healing = None  # no tokens left to heal it: the reply goes on as the model writes it
            tokens += labelled
            self.parts.append(text)
        self.output_tokens += chunk.num_tokens
        self._keep_logprobs(chunk, len(chunk.text))
        return tokens, None

    def _cut(self, chunk: ModelChunk, index: int, reason: ErrorCode,
             tokens: list[tuple[str, Optional[str]]]) -> Optional[HealReport]:
        """Cut the reply inside ``chunk.text[index]``, where it stopped being a valid prefix."""
        assert self.healing is not None
        sent = self.text()
        text = chunk.text[index]
        cut = max(valid_prefix_length(sent + text), len(sent))  # what was sent was a valid prefix
        kept = text[:cut - len(sent)]
        counts = chunk.tokens_per_text
        if len(counts) != len(chunk.text):  # not known: the chunk's tokens count on its last text
            counts = [0] * (len(chunk.text) - 1) + [chunk.num_tokens]
        kept_tokens = sum(counts[:index]) + (counts[index] if kept else 0)
        if self.healing.tokens_left(self.output_tokens + kept_tokens) < 1:
            return None
        self.labeler = SectionLabeler()  # the labeler again, over the text sent only
        self.labeler.validator.feed(sent)
        if kept:
            tokens += self.labeler.push(kept)
            self.parts.append(kept)
        self.output_tokens += kept_tokens
        self._keep_logprobs(chunk, index + (1 if kept else 0))
        return HealReport(position=cut, reason=reason, dropped_tokens=chunk.num_tokens - kept_tokens)

    def ended_short(self) -> Optional[HealReport]:
        """While healing, a reply the model ended before it is complete (tokens left): heal it from its end."""
        if self.healing is None or self.healing.tokens_left(self.output_tokens) < 1:
            return None
        state = prefix_state(self.labeler.validator)
        if state.complete or not state.valid:
            return None
        text = self.text()
        return HealReport(position=len(text), reason=validate(text).errors[0].code, dropped_tokens=0)

    def mark_healed(self, report: HealReport, own_time_s: float) -> None:
        self.healing, self.heal = None, report
        self.own_tokens, self.own_time_s = self.output_tokens, own_time_s

    def final(self, chunk: ModelChunk) -> FinalRecord:
        engine_ttft, engine_time = self.engine_ttft, chunk.engine_time_s
        if self.heal is not None:  # engine times over both parts
            engine_time = self.own_time_s + (engine_time or 0.0)
            if self.own_tokens == 0:  # the first token the client got is the continuation's
                engine_ttft = None if self.continuation_ttft is None else self.own_time_s + self.continuation_ttft
        final = FinalRecord(text=self.text(), validation=self.labeler.close(), input_tokens=self.input_tokens,
                            output_tokens=self.output_tokens, finish_reason=chunk.finish_reason,
                            stop_reason=chunk.stop_reason,
                            engine_ttft_s=engine_ttft, engine_time_s=engine_time, cached_tokens=self.cached_tokens,
                            heal=self.heal, adapter_load_s=self.adapter_load_s)
        if self.with_repair:
            final.repaired_text, final.repair = repair(final.text)
        return final
