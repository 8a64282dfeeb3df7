"""The ingress deployment: HTTP (FastAPI, ``rrr_ray.serving.api``) in front of the post-processing.

The post-processing is either a deployment of its own (``postprocessor``, a handle) or runs in
this replica over the model deployments' handles (``models``) and over the ``engines`` this
replica runs itself (models with ``placement: ingress``: no Ray hop between HTTP and the engine).
The HTTP app is built in the replica, over the replica's service (``__serve_build_asgi_app__``),
which it keeps on ``app.state``.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.postprocessor import RemotePostProcessing, remote_models
from rrr_ray.serving.adapters import AdapterCatalog, AdapterServing
from rrr_ray.serving.api import create_app
from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.messages import StageHealth
from rrr_ray.serving.metrics import try_create_metrics
from rrr_ray.serving.model_server import ModelServer
from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.service import RRRService, ServedModel


@serve.deployment(name="RRRIngress", health_check_period_s=5)
@serve.ingress()
class RRRIngress:
    async def __init__(self, served: list[ServedModel], default_model: Optional[str], streaming: StreamingOptions,
                       limits: HttpLimits, postprocessor: Optional[DeploymentHandle] = None,
                       models: Optional[dict[str, DeploymentHandle]] = None,
                       engines: Optional[list[EngineConfig]] = None,
                       adapters: Optional[AdapterServing] = None) -> None:
        """``engines``: the models this replica runs itself; ``limits``: what one HTTP request may ask;
        ``adapters``: the models that take LoRA adapters on demand (``rrr_ray.serving.adapters``)."""
        if (postprocessor is None) == (not models and not engines):
            raise ValueError("give the ingress either a post-processor deployment or the models")
        if postprocessor is not None and engines:
            raise ValueError("models in the ingress need the post-processor in the ingress too")
        self.servers = [ModelServer(e, streaming) for e in engines or []]
        await asyncio.gather(*(s.start() for s in self.servers))
        if postprocessor is not None:
            self.postprocessing = RemotePostProcessing(postprocessor)
        else:
            local = {name: s for s in self.servers for name in s.config.served_names()}
            multiplexed = adapters.multiplexed if adapters is not None else []
            self.postprocessing = PostProcessing({**remote_models(models or {}, multiplexed), **local})
        catalog = None
        if adapters is not None and adapters.models:
            catalog = AdapterCatalog.from_models(adapters.models, adapters.runtime_loading)
            catalog.stages = self.postprocessing
        self.service = RRRService(stream=self.postprocessing.stream, health=self._health, models=served,
                                  default_model=default_model, metrics=try_create_metrics(), limits=limits,
                                  adapters=catalog)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve's hook, after ``__init__``: the HTTP app over this replica's service."""
        return create_app(self.service)

    async def _health(self) -> dict[str, StageHealth]:
        try:
            return await self.postprocessing.health()
        except Exception as exc:
            return {"graph": StageHealth(error=f"{type(exc).__name__}: {exc}")}

    async def check_health(self) -> None:
        """Serve's replica health check: a dead engine in this replica is restarted in place while
        the replica's other models keep serving; the replica itself is replaced only when restarting
        it fails (``ModelServer.recover``)."""
        for server in self.servers:
            await server.recover()

    def __del__(self) -> None:
        for server in getattr(self, "servers", []):
            server.shutdown()
