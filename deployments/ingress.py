"""The ingress deployment: HTTP (FastAPI) in front of the post-processor."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle

from rrr_ray.serving.api import create_app, install_service
from rrr_ray.serving.metrics import try_create_metrics
from rrr_ray.serving.protocol import EngineRequest
from rrr_ray.serving.service import RRRService, ServedModel
from rrr_ray.serving.streams import OutputChunk

app = create_app()


@serve.deployment(name="RRRIngress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class RRRIngress:
    def __init__(self, postprocessor: DeploymentHandle, models: list[dict], default_model: Optional[str]) -> None:
        self.postprocessor = postprocessor
        self.streaming = postprocessor.options(stream=True)
        install_service(RRRService(
            stream=self._stream, health=self._health, models=[ServedModel(**m) for m in models],
            default_model=default_model, metrics=try_create_metrics()))

    async def _stream(self, request: EngineRequest, with_repair: bool) -> AsyncIterator[OutputChunk]:
        response = self.streaming.stream.remote(request, with_repair)
        try:
            async for chunk in response:
                yield chunk
        finally:
            response.cancel()

    async def _health(self) -> dict[str, dict[str, Any]]:
        try:
            return await self.postprocessor.health.remote()
        except Exception as exc:
            return {"graph": {"error": f"{type(exc).__name__}: {exc}", "unfinished_requests": None}}
