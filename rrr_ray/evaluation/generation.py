"""Replies for the benchmark, generated through an OpenAI-compatible endpoint and cached.

Each reply is one streamed ``/v1/chat/completions`` request (rrr-ray's own API, vLLM's, or any
other), timed on the client: time to first token, total time, tokens per second. Guided replies
ask for rrr-ray's ``guided`` extension and vLLM's ``structured_outputs`` regex at once (each server
reads the field it knows); healed replies ask for rrr-ray's ``heal``, and the others send
``heal: false``, so that an unguided reply is the model's own text.

The cache is a JSON-lines file with one line per finished request, written as soon as the request
ends, keyed by everything that decides a reply (endpoint, model, prompt, sample, seed, sampling,
guided). A rerun, or a run after a crash, sends only what the cache lacks; failed requests are
recorded with their error, never scored, and sent again by the next run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any, Iterable, Optional

from pydantic import BaseModel, Field

from rrr_ray.data.generation.errors import EndpointError, endpoint_error
from rrr_ray.evaluation.jsonl_cache import JsonlCache
from rrr_ray.format import guided_regex

log = logging.getLogger(__name__)


class SamplingSettings(BaseModel):
    """The sampling of every benchmark request (part of the cache key)."""

    max_tokens: int = Field(256, ge=1, le=2048, description="Most tokens per reply.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature (0 is greedy).")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")


class GenerationTask(BaseModel):
    """One request of the benchmark: a prompt, a model, a sample index, guided or not."""

    endpoint: str
    model: str
    prompt_id: str
    category: str
    prompt: str
    sample: int
    seed: Optional[int] = Field(description="The request's seed: the run's seed plus the sample index.")
    guided: bool
    heal: bool = Field(False, description="rrr-ray's self-healing (never with guided).")
    sampling: SamplingSettings

    @property
    def key(self) -> str:
        """The cache key: a digest of everything that decides the reply."""
        data = self.model_dump(include={"endpoint", "model", "prompt", "sample", "seed", "guided", "sampling"})
        if self.heal:
            data["heal"] = True
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


class Generation(BaseModel):
    """A finished request: the reply and its timings, or the error it failed with."""

    key: str
    task: GenerationTask
    reply: Optional[str] = None
    error: Optional[str] = Field(None, description="Why the request failed; a failed request is never scored.")
    ttft_s: Optional[float] = Field(None, description="Seconds from sending to the first reply text.")
    total_s: Optional[float] = Field(None, description="Seconds from sending to the end of the stream.")
    output_tokens: Optional[int] = None
    input_tokens: Optional[int] = None
    finish_reason: Optional[str] = None
    heal_report: Optional[dict[str, Any]] = Field(None, description="rrr-ray's heal record of a healed reply.")

    @property
    def ok(self) -> bool:
        return self.error is None and self.reply is not None

    @property
    def tokens_per_second(self) -> Optional[float]:
        if not self.ok or not self.output_tokens or not self.total_s:
            return None
        return self.output_tokens / self.total_s


def v1_base(endpoint: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> the ``/v1`` base URL."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class GenerationCache(JsonlCache[Generation]):
    """The JSON-lines cache of finished requests; the last line of a key wins."""

    record_type = Generation

    def done(self, task: GenerationTask) -> Optional[Generation]:
        entry = self.entries.get(task.key)
        return entry if entry is not None and entry.ok else None


def request_body_extra(guided: bool, heal: bool = False) -> dict[str, Any]:
    """The fields beyond OpenAI's of a guided, healed or plain request."""
    if guided:
        return {"guided": True, "structured_outputs": {"regex": guided_regex()}}
    return {"heal": heal}


async def generate_one(client: Any, task: GenerationTask, timeout: float) -> Generation:
    """Send one streamed chat completion and time it; an error is recorded, not raised."""
    start = time.perf_counter()
    ttft = None
    parts: list[str] = []
    usage = None
    finish = None
    heal_report = None
    try:
        stream = await client.chat.completions.create(
            model=task.model, messages=[{"role": "user", "content": task.prompt}], stream=True,
            stream_options={"include_usage": True}, max_tokens=task.sampling.max_tokens,
            temperature=task.sampling.temperature, top_p=task.sampling.top_p, seed=task.seed,
            extra_body=request_body_extra(task.guided, task.heal), timeout=timeout)
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            heal_report = (chunk.model_extra or {}).get("rrr_heal") or heal_report
            for choice in chunk.choices:
                text = choice.delta.content if choice.delta else None
                if text:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(text)
                if choice.finish_reason:
                    finish = choice.finish_reason
    except Exception as exc:  # mapped by type onto one line
        error = endpoint_error(exc, str(client.base_url), task.model)
        return Generation(key=task.key, task=task, error=f"{error.code}: {error}")
    total = time.perf_counter() - start
    if finish == "error":
        return Generation(key=task.key, task=task, error="engine_error: the stream ended with finish_reason error")
    return Generation(key=task.key, task=task, reply="".join(parts), ttft_s=ttft, total_s=total,
                      output_tokens=getattr(usage, "completion_tokens", None),
                      input_tokens=getattr(usage, "prompt_tokens", None), finish_reason=finish,
                      heal_report=heal_report)


async def served_models(endpoint: str, api_key: str, timeout: float = 10.0) -> list[str]:
    """The model ids an endpoint serves; raises an ``EndpointError`` when it cannot say."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=v1_base(endpoint), api_key=api_key, max_retries=0, timeout=timeout)
    try:
        return [m.id async for m in client.models.list()]
    except Exception as exc:
        raise endpoint_error(exc, v1_base(endpoint), "") from None
    finally:
        await client.close()


async def generate_all(tasks: Iterable[GenerationTask], cache: GenerationCache, *, api_key: str,
                       concurrency: int, timeout: float, progress: bool = True) -> list[Generation]:
    """Every task's generation, from the cache where it holds one, else sent (``concurrency`` at
    once) and added to the cache as it finishes. Returns them in the order of ``tasks``."""
    from openai import AsyncOpenAI
    from tqdm.auto import tqdm

    tasks = list(tasks)
    results: dict[str, Generation] = {}
    todo = []
    for t in tasks:
        hit = cache.done(t)
        if hit is not None:
            results[t.key] = hit
        else:
            todo.append(t)
    if todo:
        clients = {e: AsyncOpenAI(base_url=v1_base(e), api_key=api_key, max_retries=0, timeout=timeout)
                   for e in {t.endpoint for t in todo}}
        semaphore = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(todo), desc="generating", unit="reply", disable=not progress)

        async def run(task: GenerationTask) -> None:
            async with semaphore:
                entry = await generate_one(clients[task.endpoint], task, timeout)
            cache.add(entry)
            results[task.key] = entry
            bar.update(1)
            if entry.error:
                bar.set_postfix_str(f"last error: {entry.error[:60]}")

        try:
            await asyncio.gather(*(run(t) for t in todo))
        finally:
            bar.close()
            for c in clients.values():
                await c.close()
    return [results[t.key] for t in tasks]


__all__ = ["EndpointError", "Generation", "GenerationCache", "GenerationTask", "SamplingSettings",
           "generate_all", "generate_one", "served_models", "v1_base"]
