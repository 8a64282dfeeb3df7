"""The post-processing stage over the models: stream from a model, validating RRR on the way.

``PostProcessing`` maps every served name (models and LoRA adapters) to a ``Model``: a
``ModelServer`` in this process, or a model deployment reached over a Ray hop
(``deployments.postprocessor.RemoteModel``). It runs inside each ingress replica or as a
deployment of its own (``deployments.postprocessor.RRRPostProcessor``). A healed reply's
continuation (``rrr_ray.serving.healing``) goes to the same ``Model``, so healing works in every
placement.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Protocol

from rrr_ray.serving.errors import ModelNotServedError
from rrr_ray.serving.healing import Healing
from rrr_ray.serving.messages import EngineRequest, ModelChunk, OutputChunk, StageHealth
from rrr_ray.serving.streams import postprocess


class Model(Protocol):
    """What the post-processing reads from a model."""

    def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]: ...

    async def health(self) -> StageHealth: ...


class PostProcessing:
    def __init__(self, models: dict[str, Model]) -> None:
        self.models = dict(models)

    async def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        model = self.models.get(request.model)
        if model is None:
            yield OutputChunk(finished=True, error=str(ModelNotServedError(request.model, self.models)), status=404)
            return
        healing = Healing(request, model.stream) if request.heal else None  # continued by the same model
        async with contextlib.aclosing(model.stream(request)) as chunks, \
                contextlib.aclosing(postprocess(chunks, with_repair, healing)) as outputs:
            async for chunk in outputs:
                yield chunk

    async def health(self) -> dict[str, StageHealth]:
        """Health and load of every served name (LoRA adapters report their base model)."""
        names = list(self.models)
        results = await asyncio.gather(*(self.models[n].health() for n in names), return_exceptions=True)
        return {n: (StageHealth(error=f"{type(r).__name__}: {r}") if isinstance(r, BaseException) else r)
                for n, r in zip(names, results)}
