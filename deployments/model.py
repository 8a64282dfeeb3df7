"""The model stage: one engine (vLLM by default, injected by import path), streaming batches.

``ModelServer`` is the logic. It runs as a deployment of its own (``RRRModel``, reached over a
Ray hop) or inside each ingress replica (``placement: ingress`` on the model, the CPU default:
no Ray hop at all between HTTP and the engine), see ``deployments/app.py``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator

from ray import serve

from rrr_ray.serving.batching import LoadAwareWindow
from rrr_ray.serving.engine import EngineConfig, load_engine_class
from rrr_ray.serving.protocol import EngineRequest
from rrr_ray.serving.streams import ModelChunk, model_stream

logger = logging.getLogger("ray.serve")


class ModelServer:
    """One engine, streaming each request's deltas as ``ModelChunk`` batches."""

    def __init__(self, engine: dict, stream_interval_ms: float = 20.0, max_hop_messages_per_s: float = 200.0) -> None:
        self.config = EngineConfig(**engine)
        self.window = LoadAwareWindow(stream_interval_ms / 1000.0, max_hop_messages_per_s)
        self.engine = load_engine_class(self.config.engine_class)(self.config)

    async def start(self) -> None:
        await self.engine.start()

    async def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        """Closing the stream aborts the request in the engine."""
        self.window.active += 1
        try:
            async with contextlib.aclosing(model_stream(self.engine, request, self.window)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.window.active -= 1

    async def check_health(self) -> None:
        """Raises when the engine is dead (Serve then restarts the replica that holds it)."""
        await self.engine.check_health()

    async def health(self) -> dict[str, Any]:
        """For the /health route: why the engine is unhealthy (None if it is not), and its load."""
        try:
            await self.engine.check_health()
            error = None
        except Exception as exc:
            error = str(exc)
        return {"error": error, "unfinished_requests": self.engine.num_unfinished_requests()}

    def shutdown(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()


@serve.deployment(name="RRRModel", ray_actor_options={"num_cpus": 0.4}, health_check_period_s=5)
class RRRModel(ModelServer):
    """``ModelServer`` as a deployment of its own; the post-processing calls ``stream`` over a handle."""

    async def __init__(self, engine: dict, stream_interval_ms: float = 20.0,
                       max_hop_messages_per_s: float = 200.0) -> None:
        super().__init__(engine, stream_interval_ms, max_hop_messages_per_s)
        await self.start()

    def __del__(self) -> None:
        self.shutdown()
