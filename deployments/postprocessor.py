"""The post-processor: streams from a model deployment, validating RRR on the way.

``PostProcessing`` is the logic over model handles. It runs either as its own deployment
(``RRRPostProcessor``, scaled apart from the ingress: one more Ray hop per request) or inside
each ingress replica (``placement: ingress``, the default on CPU), see ``deployments/app.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from rrr_ray.serving.protocol import EngineRequest
from rrr_ray.serving.streams import OutputChunk, postprocess


class PostProcessing:
    def __init__(self, models: dict[str, DeploymentHandle]) -> None:
        """``models`` maps every served name (models and LoRA adapters) to its model deployment."""
        self.models = models
        self.streams = {name: handle.options(stream=True) for name, handle in models.items()}

    async def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        handle = self.streams.get(request.model)
        if handle is None:
            yield OutputChunk(finished=True, error=f"model {request.model!r} is not served", status=404)
            return
        model_stream = handle.generate.remote(request)
        try:
            async for chunk in postprocess(model_stream, with_repair):
                yield chunk
        finally:
            model_stream.cancel()

    async def health(self) -> dict[str, dict[str, Any]]:
        """Health and load of every served name (LoRA adapters report their base deployment)."""
        names = list(self.models)
        results = await asyncio.gather(*(self.models[n].health.remote() for n in names), return_exceptions=True)
        return {n: ({"error": f"{type(r).__name__}: {r}", "unfinished_requests": None}
                    if isinstance(r, BaseException) else r) for n, r in zip(names, results)}


class RemotePostProcessing:
    """The ``RRRPostProcessor`` deployment behind the same interface, for the ingress to call."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)

    async def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        response = self.streaming.stream.remote(request, with_repair)
        try:
            async for chunk in response:
                yield chunk
        finally:
            response.cancel()

    async def health(self) -> dict[str, dict[str, Any]]:
        return await self.handle.health.remote()


RRRPostProcessor = serve.deployment(name="RRRPostProcessor", ray_actor_options={"num_cpus": 0.1})(PostProcessing)
