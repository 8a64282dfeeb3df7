"""``RRRModel``: the model stage (``rrr_ray.serving.model_server.ModelServer``) as a deployment of its
own, reached over a Ray hop and scaled apart (``placement: deployment``)."""

from __future__ import annotations

from ray import serve

from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.model_server import ModelServer


@serve.deployment(name="RRRModel", health_check_period_s=5)
class RRRModel(ModelServer):
    """The post-processing calls ``stream`` over a handle; a dead engine fails ``check_health``, and
    Serve replaces the replica."""

    async def __init__(self, engine: EngineConfig, streaming: StreamingOptions) -> None:
        super().__init__(engine, streaming)
        await self.start()

    def __del__(self) -> None:
        self.shutdown()
