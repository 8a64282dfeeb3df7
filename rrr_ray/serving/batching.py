"""Batch a stream of items for a Ray hop: the first item at once, then whatever arrived meanwhile.

Ray Serve handles carry a few hundred messages per second per stream on a small CPU, fewer than
an engine makes tokens, so tokens cross each hop in batches. As in Ray Serve LLM's ``Batcher``,
the first item is flushed immediately (time to first token is not delayed), later ones are
gathered for ``interval_s``; when the source ends the rest is flushed at once, even mid-window
(a final batch held for the window would hold the client's next request back as long).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable, TypeVar, Union

from rrr_ray.serving.aio import close_quietly

T = TypeVar("T")


class LoadAwareWindow:
    """A batch window that widens with the number of streams sharing a hop.

    Ray messages, not tokens, cost CPU on a hop; with ``active`` concurrent streams each flushing
    every ``window`` seconds, a hop carries ``active / window`` messages per second. The window is
    ``max(min_s, active / max_messages_per_s)``: short under light load (smooth streams), wider
    under heavy load (bounded message rate, more tokens per message).
    """

    def __init__(self, min_s: float, max_messages_per_s: float) -> None:
        self.min_s = min_s
        self.max_messages_per_s = max_messages_per_s
        self.active = 0

    def __call__(self) -> float:
        if self.max_messages_per_s <= 0:
            return self.min_s
        return max(self.min_s, self.active / self.max_messages_per_s)


async def batched(source: AsyncIterator[T], interval_s: Union[float, Callable[[], float]]) -> AsyncIterator[list[T]]:
    """Yield lists of items from ``source``; closing this generator closes ``source`` too.

    ``interval_s`` is the batch window in seconds, or a function returning it (read per batch);
    the graph's comes from ``config.StreamingOptions``.
    """
    window = interval_s if callable(interval_s) else (lambda: interval_s)
    items: list[T] = []
    arrived = asyncio.Event()
    ended = asyncio.Event()
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
            ended.set()

    task = asyncio.create_task(pump())
    first = True
    try:
        while True:
            await arrived.wait()
            wait = 0.0 if first or done else window()
            if wait > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ended.wait(), wait)
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
        await close_quietly(source)
