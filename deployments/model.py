"""The model deployment: one engine (vLLM by default, injected by import path), streaming batches."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from ray import serve

from rrr_ray.serving.batching import LoadAwareWindow
from rrr_ray.serving.engine import EngineConfig, load_engine_class
from rrr_ray.serving.protocol import EngineRequest
from rrr_ray.serving.streams import ModelChunk, model_stream

logger = logging.getLogger("ray.serve")


@serve.deployment(name="RRRModel", ray_actor_options={"num_cpus": 0.4}, health_check_period_s=5)
class RRRModel:
    async def __init__(self, engine: dict, stream_interval_ms: float = 20.0,
                       max_hop_messages_per_s: float = 200.0) -> None:
        self.config = EngineConfig(**engine)
        self.window = LoadAwareWindow(stream_interval_ms / 1000.0, max_hop_messages_per_s)
        self.engine = load_engine_class(self.config.engine_class)(self.config)
        await self.engine.start()

    async def generate(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        self.window.active += 1
        try:
            async for chunk in model_stream(self.engine, request, self.window):
                yield chunk
        finally:
            self.window.active -= 1

    async def check_health(self) -> None:
        """Serve's replica health check: a dead engine gets its replica restarted."""
        await self.engine.check_health()

    async def health(self) -> dict[str, Any]:
        """For the /health route: why the engine is unhealthy (None if it is not), and its load."""
        try:
            await self.engine.check_health()
            error = None
        except Exception as exc:
            error = str(exc)
        return {"error": error, "unfinished_requests": self.engine.num_unfinished_requests()}

    def num_unfinished_requests(self) -> int:
        return self.engine.num_unfinished_requests()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
