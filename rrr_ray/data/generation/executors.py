"""Where dialogues are made: async Ray actors (the job), or one local event loop (tests, debugging).

Both take dialogue indices with ``submit`` and hand back ``(handle, DialogueResult)`` pairs, in
completion order, with ``wait``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
from typing import Any, Protocol

from rrr_ray.data.generation.config import GenerationConfig
from rrr_ray.data.generation.dialogue import DialogueGenerator, DialogueResult

logger = logging.getLogger(__name__)


class Executor(Protocol):
    nodes: list[str]  # the Ray node of each worker (one "local" for the local executor)

    def submit(self, index: int) -> Any: ...

    def wait(self, pending: list) -> tuple[Any, DialogueResult]: ...

    def close(self) -> None: ...


class GeneratorActor:
    """The Ray actor (async: many dialogues in flight per process)."""

    def __init__(self, cfg: dict):
        logging.basicConfig(level=logging.WARNING)
        self.gen = DialogueGenerator(GenerationConfig.model_validate(cfg))

    async def generate(self, index: int) -> dict:
        return (await self.gen.generate(index)).model_dump(mode="json")

    def ready(self) -> str:
        """The ID of the node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()


class RayExecutor:
    """``cfg.workers`` actors (default min(concurrency, 2)), spread over the cluster's nodes; each
    dialogue goes to the least loaded. An actor whose node dies is restarted elsewhere and its
    dialogues are retried; the driver records each dialogue once, when its task returns, so nothing
    is lost or doubled."""

    max_restarts = 3

    def __init__(self, cfg: GenerationConfig):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
            self._owns_ray = True
        else:
            self._owns_ray = False
        n = cfg.workers or min(cfg.concurrency, 2)
        per = math.ceil(cfg.concurrency / n)
        # SPREAD over the nodes (a CPU share, however small: Ray packs CPU-less actors on one node);
        # an actor whose node dies is restarted on another.
        actor_cls = ray.remote(num_cpus=0.01, max_concurrency=per, scheduling_strategy="SPREAD",
                               max_restarts=self.max_restarts, max_task_retries=self.max_restarts)(GeneratorActor)
        data = cfg.model_dump(mode="json")
        self.actors = [actor_cls.remote(data) for _ in range(n)]
        self.nodes = ray.get([a.ready.remote() for a in self.actors])  # started: throughput is timed from here
        self.load = [0] * n
        self.task: dict[Any, tuple[int, int, Any, int]] = {}  # a task -> (actor, dialogue index, first task, tries)
        self.latest: dict[Any, Any] = {}  # the first task of a dialogue -> its task now (a retry's)

    def submit(self, index: int) -> Any:
        return self._submit(index, first=None, tries=1)

    def _submit(self, index: int, first: Any, tries: int) -> Any:
        i = min(range(len(self.actors)), key=self.load.__getitem__)
        ref = self.actors[i].generate.remote(index)
        self.load[i] += 1
        first = ref if first is None else first
        self.task[ref] = (i, index, first, tries)
        self.latest[first] = ref
        return ref

    def wait(self, pending: list) -> tuple[Any, DialogueResult]:
        """The next finished dialogue, as ``(the task submit returned, result)``. A dialogue whose
        actor died or became unreachable (its node stopped) is submitted again, up to
        ``max_restarts`` times."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        while True:
            ready, _ = self.ray.wait([self.latest[p] for p in pending], num_returns=1)
            ref = ready[0]
            actor, index, first, tries = self.task.pop(ref)
            self.load[actor] -= 1
            try:
                result = DialogueResult.model_validate(self.ray.get(ref))
            except (RayActorError, ActorUnavailableError) as exc:
                if tries > self.max_restarts:
                    raise
                logger.warning("dialogue %d: its worker failed (%s); submitting it again", index, type(exc).__name__)
                self._submit(index, first, tries + 1)
                continue
            del self.latest[first]
            return first, result

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


class LocalExecutor:
    """One ``DialogueGenerator`` on an event loop in a background thread of this process."""

    def __init__(self, cfg: GenerationConfig):
        self.nodes = ["local"]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gen = asyncio.run_coroutine_threadsafe(self._make(cfg), self.loop).result()

    @staticmethod
    async def _make(cfg: GenerationConfig) -> DialogueGenerator:
        return DialogueGenerator(cfg)

    def submit(self, index: int) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(self.gen.generate(index), self.loop)

    def wait(self, pending: list) -> tuple[Any, DialogueResult]:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        fut = next(iter(done))
        return fut, fut.result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def make_executor(cfg: GenerationConfig, use_ray: bool = True) -> Executor:
    return RayExecutor(cfg) if use_ray else LocalExecutor(cfg)
