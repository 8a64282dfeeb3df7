"""The ingress deployment: HTTP (FastAPI) in front of the post-processor.

The post-processor is either a deployment of its own (``postprocessor``, a handle) or runs in
this replica over the model handles (``models``): one Ray hop less per request.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.postprocessor import PostProcessing
from rrr_ray.serving.api import create_app, install_service
from rrr_ray.serving.metrics import try_create_metrics
from rrr_ray.serving.protocol import EngineRequest
from rrr_ray.serving.service import RRRService, ServedModel
from rrr_ray.serving.streams import OutputChunk

app = create_app()


@serve.deployment(name="RRRIngress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class RRRIngress:
    def __init__(self, cards: list[dict], default_model: Optional[str],
                 postprocessor: Optional[DeploymentHandle] = None,
                 models: Optional[dict[str, DeploymentHandle]] = None) -> None:
        if (postprocessor is None) == (models is None):
            raise ValueError("give the ingress either a post-processor deployment or the model deployments")
        self.postprocessor = postprocessor
        self.streaming = postprocessor.options(stream=True) if postprocessor is not None else None
        self.local = PostProcessing(models) if models is not None else None
        install_service(RRRService(
            stream=self._stream, health=self._health, models=[ServedModel(**m) for m in cards],
            default_model=default_model, metrics=try_create_metrics()))

    async def _stream(self, request: EngineRequest, with_repair: bool) -> AsyncIterator[OutputChunk]:
        if self.local is not None:
            async for chunk in self.local.stream(request, with_repair):
                yield chunk
            return
        response = self.streaming.stream.remote(request, with_repair)
        try:
            async for chunk in response:
                yield chunk
        finally:
            response.cancel()

    async def _health(self) -> dict[str, dict[str, Any]]:
        try:
            if self.local is not None:
                return await self.local.health()
            return await self.postprocessor.health.remote()
        except Exception as exc:
            return {"graph": {"error": f"{type(exc).__name__}: {exc}", "unfinished_requests": None}}
