"""The post-processor: streams from the model stage, validating RRR on the way.

``PostProcessing`` is the logic over the models, each either a ``ModelServer`` in this process
or a model deployment's handle (``RemoteModel``). It runs either as its own deployment
(``RRRPostProcessor``, scaled apart from the ingress: one more Ray hop per request) or inside
each ingress replica (``placement: ingress``, the default on CPU), see ``deployments/app.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Protocol, Union

from ray import serve
from ray.serve.handle import DeploymentHandle

from rrr_ray.serving.protocol import EngineRequest
from rrr_ray.serving.streams import ModelChunk, OutputChunk, postprocess


async def cancelling(response: Any) -> AsyncIterator[Any]:
    """Iterate a streaming handle call; closing the iterator cancels the call down the graph."""
    try:
        async for item in response:
            yield item
    finally:
        response.cancel()


class Model(Protocol):
    """What the post-processing reads from a model: ``ModelServer`` in-process, or ``RemoteModel``."""

    def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]: ...

    async def health(self) -> dict[str, Any]: ...


class RemoteModel:
    """A model deployment (``RRRModel``) behind the ``Model`` interface: one Ray hop per request."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)

    def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        return cancelling(self.streaming.stream.remote(request))

    async def health(self) -> dict[str, Any]:
        return await self.handle.health.remote()


class PostProcessing:
    def __init__(self, models: dict[str, Union[Model, DeploymentHandle]]) -> None:
        """``models`` maps every served name (models and LoRA adapters) to its model: a model
        deployment's handle, or a ``ModelServer`` running in this process."""
        self.models: dict[str, Model] = {
            name: RemoteModel(m) if isinstance(m, DeploymentHandle) else m for name, m in models.items()}

    async def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        model = self.models.get(request.model)
        if model is None:
            yield OutputChunk(finished=True, error=f"model {request.model!r} is not served", status=404)
            return
        async with contextlib.aclosing(model.stream(request)) as chunks, \
                contextlib.aclosing(postprocess(chunks, with_repair)) as outputs:
            async for chunk in outputs:
                yield chunk

    async def health(self) -> dict[str, dict[str, Any]]:
        """Health and load of every served name (LoRA adapters report their base model)."""
        names = list(self.models)
        results = await asyncio.gather(*(self.models[n].health() for n in names), return_exceptions=True)
        return {n: ({"error": f"{type(r).__name__}: {r}", "unfinished_requests": None}
                    if isinstance(r, BaseException) else r) for n, r in zip(names, results)}


class RemotePostProcessing:
    """The ``RRRPostProcessor`` deployment behind the same interface, for the ingress to call."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)

    def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        return cancelling(self.streaming.stream.remote(request, with_repair))

    async def health(self) -> dict[str, dict[str, Any]]:
        return await self.handle.health.remote()


RRRPostProcessor = serve.deployment(name="RRRPostProcessor", ray_actor_options={"num_cpus": 0.1})(PostProcessing)
