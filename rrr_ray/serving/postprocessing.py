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
from typing import Any, AsyncIterator, Protocol

from rrr_ray.serving.adapters import SEPARATOR
from rrr_ray.serving.errors import ModelNotServedError
from rrr_ray.serving.healing import Healing
from rrr_ray.serving.messages import EngineRequest, ModelChunk, OutputChunk, StageHealth
from rrr_ray.serving.streams import postprocess


class Model(Protocol):
    """What the post-processing reads from a model."""

    def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]: ...

    async def health(self) -> StageHealth: ...

    async def load_adapter(self, name: str, path: str) -> dict[str, Any]: ...

    async def free_adapter(self, name: str) -> bool: ...


class PostProcessing:
    def __init__(self, models: dict[str, Model]) -> None:
        self.models = dict(models)

    def model(self, name: str) -> Model | None:
        """The model stage of a served name; an adapter loaded on demand (``<base>:<adapter>``) is its base's."""
        return self.models.get(name) or self.models.get(name.partition(SEPARATOR)[0])

    async def load_adapter(self, base: str, name: str, path: str) -> dict[str, Any]:
        """Load an adapter into its base's model stage (one replica)."""
        model = self.models.get(base)
        if model is None:
            return {"error": str(ModelNotServedError(base, self.models)), "status": 404}
        return await model.load_adapter(name, path)

    async def free_adapter(self, base: str, name: str) -> bool:
        """Unload an adapter from its base's model stage."""
        model = self.models.get(base)
        return bool(model is not None and await model.free_adapter(name))

    async def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        model = self.model(request.model)
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
