"""Batch a stream of items for a Ray hop: the first item at once, then whatever arrived meanwhile.

Ray Serve handles carry a few hundred messages per second per stream on a small CPU, fewer than
an engine makes tokens, so tokens cross each hop in batches. As in Ray Serve LLM's ``Batcher``,
the first item is flushed immediately (time to first token is not delayed), later ones are
gathered for ``interval_s``; the last one is flushed as soon as the source ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, TypeVar

T = TypeVar("T")


async def batched(source: AsyncIterator[T], interval_s: float = 0.02) -> AsyncIterator[list[T]]:
    """Yield lists of items from ``source``; closing this generator closes ``source`` too."""
    items: list[T] = []
    arrived = asyncio.Event()
    done = False
    failure: BaseException | None = None

    async def pump() -> None:
        nonlocal done, failure
        try:
            async for item in source:
                items.append(item)
                arrived.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, raised there
            failure = exc
        finally:
            done = True
            arrived.set()

    task = asyncio.create_task(pump())
    first = True
    try:
        while True:
            await arrived.wait()
            if not first and not done and interval_s > 0:
                await asyncio.sleep(interval_s)
            first = False
            arrived.clear()
            if items:
                out = items[:]
                items.clear()
                yield out
            if done and not items:
                if failure is not None:
                    raise failure
                return
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
