"""The ingress deployment: HTTP (FastAPI) in front of the post-processor.

The post-processor is either a deployment of its own (``postprocessor``, a handle) or runs in
this replica over the model handles (``models``): one Ray hop less per request.
"""

from __future__ import annotations

from typing import Any, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.postprocessor import PostProcessing, RemotePostProcessing
from rrr_ray.serving.api import create_app, install_service
from rrr_ray.serving.metrics import try_create_metrics
from rrr_ray.serving.service import RRRService, ServedModel

app = create_app()


@serve.deployment(name="RRRIngress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class RRRIngress:
    def __init__(self, cards: list[dict], default_model: Optional[str],
                 postprocessor: Optional[DeploymentHandle] = None,
                 models: Optional[dict[str, DeploymentHandle]] = None) -> None:
        if (postprocessor is None) == (models is None):
            raise ValueError("give the ingress either a post-processor deployment or the model deployments")
        self.postprocessing = PostProcessing(models) if models is not None else RemotePostProcessing(postprocessor)
        install_service(RRRService(
            stream=self.postprocessing.stream, health=self._health, models=[ServedModel(**m) for m in cards],
            default_model=default_model, metrics=try_create_metrics()))

    async def _health(self) -> dict[str, dict[str, Any]]:
        try:
            return await self.postprocessing.health()
        except Exception as exc:
            return {"graph": {"error": f"{type(exc).__name__}: {exc}", "unfinished_requests": None}}
