"""Ray Serve glue of the post-processing stage (``rrr_ray.serving.postprocessing``): models and the
post-processor reached over Ray handles, and ``RRRPostProcessor``, its deployment of its own."""

from __future__ import annotations

from typing import Any, AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.protocol import EngineRequest
from rrr_ray.serving.streams import ModelChunk, OutputChunk


async def cancelling(response: Any) -> AsyncIterator[Any]:
    """Iterate a streaming handle call; closing the iterator cancels the call down the graph."""
    try:
        async for item in response:
            yield item
    finally:
        response.cancel()


class RemoteModel:
    """A model deployment (``RRRModel``) as a post-processing ``Model``: one Ray hop per request."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)

    def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        return cancelling(self.streaming.stream.remote(request))

    async def health(self) -> dict[str, Any]:
        return await self.handle.health.remote()


def remote_models(handles: dict[str, DeploymentHandle]) -> dict[str, RemoteModel]:
    return {name: RemoteModel(handle) for name, handle in handles.items()}


class RemotePostProcessing:
    """The ``RRRPostProcessor`` deployment behind ``PostProcessing``'s interface, for the ingress."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)

    def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        return cancelling(self.streaming.stream.remote(request, with_repair))

    async def health(self) -> dict[str, dict[str, Any]]:
        return await self.handle.health.remote()


@serve.deployment(name="RRRPostProcessor", ray_actor_options={"num_cpus": 0.1})
class RRRPostProcessor(PostProcessing):
    """``PostProcessing`` in replicas of its own, over the model deployments' handles."""

    def __init__(self, models: dict[str, DeploymentHandle]) -> None:
        super().__init__(remote_models(models))
