"""``RRRModel``: the model stage (``rrr_ray.serving.model_server.ModelServer``) as a deployment of its
own, reached over a Ray hop and scaled apart (``placement: deployment``)."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Callable, Optional

from ray import serve

from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.messages import EngineRequest, ModelChunk
from rrr_ray.serving.model_server import ModelServer

_MULTIPLEX_WRAPPER = "__serve_multiplex_wrapper"  # where serve.multiplexed keeps its LRU on the function


@serve.deployment(name="RRRModel", health_check_period_s=5)
class RRRModel(ModelServer):
    """The post-processing calls ``stream`` over a handle; a dead engine fails ``check_health``, and
    Serve replaces the replica.

    LoRA adapters (``adapters:``): the replica's ``AdapterLRU`` loads and evicts them; Serve's model
    multiplexing mirrors it (same size, same order of use) so that Serve's router knows which
    replica holds which adapter and sends a request for one where it is loaded."""

    async def __init__(self, engine: EngineConfig, streaming: StreamingOptions) -> None:
        super().__init__(engine, streaming)
        self._route: Optional[Callable[[str], Any]] = None  # Serve's multiplexing record of the adapters here
        options = self.config.adapters
        if options is not None and options.multiplexed:
            async def held(adapter: str) -> str:  # what Serve caches per adapter: the name (the engine holds it)
                return adapter

            self._route = serve.multiplexed(max_num_models_per_replica=options.max_cpu_loras)(held)
        await self.start()

    async def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        if self._route is not None and request.adapter_path is not None:
            await self._route(request.model)  # Serve's record of what this replica holds, for routing
        async with contextlib.aclosing(super().stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        if self._route is not None:
            await self._route(name)
        return await super().load_adapter(name, path)

    async def free_adapter(self, name: str) -> bool:
        freed = await super().free_adapter(name)
        wrapper = getattr(self._route, _MULTIPLEX_WRAPPER, None)
        if wrapper is not None and wrapper.models.pop(name, None) is not None:
            wrapper._push_multiplexed_replica_info = True  # Serve's router learns it is gone
        return freed

    def __del__(self) -> None:
        self.shutdown()
