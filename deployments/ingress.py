"""The ingress deployment: HTTP (FastAPI, ``rrr_ray.serving.api``) in front of the post-processing.

The post-processing is either a deployment of its own (``postprocessor``, a handle) or runs in
this replica over the model deployments' handles (``models``) and over the ``engines`` this
replica runs itself (models with ``placement: ingress``: no Ray hop between HTTP and the engine).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.postprocessor import RemotePostProcessing, remote_models
from rrr_ray.serving.adapters import AdapterCatalog
from rrr_ray.serving.api import create_app, install_service
from rrr_ray.serving.config import StreamingOptions
from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.metrics import try_create_metrics
from rrr_ray.serving.model_server import ModelServer
from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.service import RRRService, ServedModel

app = create_app()


@serve.deployment(name="RRRIngress", ray_actor_options={"num_cpus": 0.1}, health_check_period_s=5)
@serve.ingress(app)
class RRRIngress:
    async def __init__(self, cards: list[dict], default_model: Optional[str], streaming: dict[str, Any],
                       postprocessor: Optional[DeploymentHandle] = None,
                       models: Optional[dict[str, DeploymentHandle]] = None,
                       engines: Optional[list[dict]] = None, limits: Optional[dict[str, Any]] = None,
                       adapters: Optional[dict[str, Any]] = None) -> None:
        """``engines``: configs (``EngineConfig`` fields) of the models this replica runs itself;
        ``limits``: ``HttpLimits`` fields, what one HTTP request may ask; ``adapters``: the configs of
        the models with LoRA adapters, ``runtime_loading``, ``root`` and the ``multiplexed`` models."""
        if (postprocessor is None) == (not models and not engines):
            raise ValueError("give the ingress either a post-processor deployment or the models")
        if postprocessor is not None and engines:
            raise ValueError("models in the ingress need the post-processor in the ingress too")
        options = StreamingOptions(**streaming)
        self.servers = [ModelServer(e, options) for e in engines or []]
        await asyncio.gather(*(s.start() for s in self.servers))
        if postprocessor is not None:
            self.postprocessing = RemotePostProcessing(postprocessor)
        else:
            local = {name: s for s in self.servers for name in s.config.served_names()}
            multiplexed = (adapters or {}).get("multiplexed", [])
            self.postprocessing = PostProcessing({**remote_models(models or {}, multiplexed), **local})
        catalog = None
        if adapters and adapters.get("models"):
            catalog = AdapterCatalog.from_models(adapters["models"], adapters.get("runtime_loading", "off"),
                                                 adapters.get("root"))
            catalog.stages = self.postprocessing
        install_service(RRRService(
            stream=self.postprocessing.stream, health=self._health, models=[ServedModel(**m) for m in cards],
            default_model=default_model, metrics=try_create_metrics(), limits=HttpLimits(**(limits or {})),
            adapters=catalog))

    async def _health(self) -> dict[str, dict[str, Any]]:
        try:
            return await self.postprocessing.health()
        except Exception as exc:
            return {"graph": {"error": f"{type(exc).__name__}: {exc}", "unfinished_requests": None}}

    async def check_health(self) -> None:
        """Serve's replica health check: a dead engine in this replica is restarted in place while
        the replica's other models keep serving; the replica itself is replaced only when restarting
        it fails (``ModelServer.recover``)."""
        for server in self.servers:
            await server.recover()

    def __del__(self) -> None:
        for server in getattr(self, "servers", []):
            server.shutdown()
