"""The OpenAI-compatible client of the job: every request goes through one retry loop.

Failures come out as :class:`~rrr_ray.data.generation.errors.EndpointError` subclasses;
retryable ones are sent again, with exponential backoff and jitter, up to ``max_retries`` times.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
from typing import Any, Awaitable, Callable, Coroutine, Optional, TypeVar

from rrr_ray.data.generation.config import GenerationConfig
from rrr_ray.data.generation.errors import endpoint_error

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [d/2, d], d = min(cap, base * 2**attempt)."""
    d = min(cap, base * (2 ** attempt))
    return d / 2 + rng.random() * d / 2


class EndpointClient:
    """An ``AsyncOpenAI`` client for ``cfg``'s endpoint and model, without the SDK's own retries."""

    def __init__(self, cfg: GenerationConfig, timeout: Optional[float] = None):
        from openai import AsyncOpenAI

        self.base_url = cfg.base_url
        self.model = cfg.resolved_model()
        self.max_retries = cfg.max_retries
        self.backoff_base = cfg.backoff_base
        self.backoff_max = cfg.backoff_max
        self.openai = AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0,
                                  timeout=timeout or cfg.request_timeout)

    async def request(self, send: Callable[..., Awaitable[T]], *args: Any, rng: random.Random,
                      on_retry: Optional[Callable[[], None]] = None, **kwargs: Any) -> T:
        """``await send(*args, **kwargs)``, retried while the error is retryable; raises an ``EndpointError``."""
        attempt = 0
        while True:
            try:
                return await send(*args, **kwargs)
            except Exception as exc:  # mapped by type onto an EndpointError
                error = endpoint_error(exc, self.base_url, self.model)
            error.attempts = attempt + 1
            if not error.retryable or attempt >= self.max_retries:
                raise error
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, rng)
            log.warning("%s; retry %d/%d in %.1fs", error, attempt + 1, self.max_retries, delay)
            if on_retry is not None:
                on_retry()
            attempt += 1
            await asyncio.sleep(delay)

    async def chat(self, messages: list[dict], *, temperature: float, top_p: float, max_tokens: int,
                   seed: Optional[int], extra_body: Optional[dict[str, Any]], rng: random.Random,
                   on_retry: Optional[Callable[[], None]] = None) -> str:
        """The text of one chat completion."""
        return await self.request(self._chat_once, messages, temperature, top_p, max_tokens, seed, extra_body,
                                  rng=rng, on_retry=on_retry)

    async def model_ids(self, rng: random.Random) -> list[str]:
        """The ids of the models the endpoint serves (``GET /models``)."""
        return await self.request(self._model_ids_once, rng=rng)

    async def _chat_once(self, messages: list[dict], temperature: float, top_p: float, max_tokens: int,
                         seed: Optional[int], extra_body: Optional[dict[str, Any]]) -> str:
        resp = await self.openai.chat.completions.create(
            model=self.model, messages=messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
            seed=seed, extra_body=extra_body)
        return resp.choices[0].message.content or ""

    async def _model_ids_once(self) -> list[str]:
        return [m.id async for m in self.openai.models.list()]

    async def close(self) -> None:
        await self.openai.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code (in a new thread if this one runs a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
