"""Ray Serve glue of the post-processing stage (``rrr_ray.serving.postprocessing``): models and the
post-processor reached over Ray handles, and ``RRRPostProcessor``, its deployment of its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable, Iterable, Optional, TypeVar

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from rrr_ray.serving.messages import EngineRequest, ModelChunk, OutputChunk, StageHealth
from rrr_ray.serving.postprocessing import PostProcessing

logger = logging.getLogger(__name__)

T = TypeVar("T", ModelChunk, OutputChunk)
MODEL_HEALTH_TIMEOUT_S = 3.0
"""How long /health waits for a model deployment's answer (none while no replica of it is ready)."""
POSTPROCESSOR_HEALTH_TIMEOUT_S = MODEL_HEALTH_TIMEOUT_S + 2
"""The post-processor's answer includes its models': it may take longer."""


def hop_failure(exc: Exception, deployment: str) -> str:
    """What the client is told of a failed Ray hop."""
    if isinstance(exc, BackPressureError):
        return f"{deployment} is at capacity (max_ongoing_requests and max_queued_requests); retry shortly"
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{deployment} failed ({type(exc).__name__}: {first_line}); retry shortly"


async def cancelling(response: Any, deployment: str, failed: Callable[[str, Optional[int]], T]) -> AsyncIterator[T]:
    """Iterate a streaming handle call; closing the iterator before the finished chunk cancels the
    call down the graph (a call whose finished chunk arrived is left to end by itself: cancelling
    it would cost a gRPC round for nothing).

    A replica that is at capacity, or that dies mid-stream, ends the stream with ``failed``'s chunk
    (an error, with a 503 status while nothing was sent yet), so the client always gets a terminal
    line instead of a cut connection.
    """
    began = False
    ended = False
    try:
        async for item in response:
            began = True
            ended = item.finished
            yield item
        ended = True
    except Exception as exc:  # a Ray error: the chunks themselves carry the stages' own errors
        message = hop_failure(exc, deployment)
        logger.warning("stream from %s ended: %s", deployment, message)
        yield failed(message, None if began else 503)  # before the reply began: a 503 with Retry-After
    finally:
        if not ended:  # closed early (the client left) or failed
            response.cancel()


def _model_failure(message: str, status: Optional[int]) -> ModelChunk:
    return ModelChunk(finished=True, error=message, status=status)


def _output_failure(message: str, status: Optional[int]) -> OutputChunk:
    return OutputChunk(finished=True, error=message, status=status)


async def remote_health(call: Any, deployment: str, timeout_s: float) -> Any:
    """A deployment's ``health`` answer, waiting at most ``timeout_s``."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except asyncio.TimeoutError:
        call.cancel()
        raise TimeoutError(f"{deployment} did not answer within {timeout_s:.0f} s "
                           "(its replica is restarting, or busy)") from None


class RemoteModel:
    """A model deployment (``RRRModel``) as a post-processing ``Model``: one Ray hop per request.

    With ``multiplexed``, a request for a LoRA adapter names it as Serve's ``multiplexed_model_id``:
    Serve routes it to a replica that holds the adapter already (a healed reply's continuation names
    the same adapter, so it goes there too)."""

    FREE_CALLS = 4
    """Unloading an adapter asks up to this many replicas that Serve says hold it."""

    def __init__(self, handle: DeploymentHandle, multiplexed: bool = False) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)
        self.name = handle.deployment_name
        self.multiplexed = multiplexed
        self._by_adapter: dict[str, DeploymentHandle] = {}

    def _for(self, request: EngineRequest) -> DeploymentHandle:
        if not self.multiplexed or request.adapter_path is None:
            return self.streaming
        handle = self._by_adapter.get(request.model)
        if handle is None:
            handle = self._by_adapter[request.model] = self.streaming.options(multiplexed_model_id=request.model)
        return handle

    def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        return cancelling(self._for(request).stream.remote(request), self.name, _model_failure)

    async def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        handle = self.handle.options(multiplexed_model_id=name) if self.multiplexed else self.handle
        return await handle.load_adapter.remote(name, path)

    async def free_adapter(self, name: str) -> bool:
        """Unload ``name`` from the replicas that hold it (as far as Serve's routing knows)."""
        handle = self.handle.options(multiplexed_model_id=name) if self.multiplexed else self.handle
        freed = False
        for _ in range(self.FREE_CALLS):
            if not await handle.free_adapter.remote(name):
                break
            freed = True
        self._by_adapter.pop(name, None)
        return freed

    async def health(self) -> StageHealth:
        return await remote_health(self.handle.health.remote(), self.name, MODEL_HEALTH_TIMEOUT_S)


def remote_models(handles: dict[str, DeploymentHandle], multiplexed: Iterable[str] = ()) -> dict[str, RemoteModel]:
    """``multiplexed``: the served names whose deployments route adapters by Serve model multiplexing."""
    routed = set(multiplexed)
    return {name: RemoteModel(handle, name in routed) for name, handle in handles.items()}


class RemotePostProcessing:
    """The ``RRRPostProcessor`` deployment behind ``PostProcessing``'s interface, for the ingress."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)
        self.name = handle.deployment_name

    def stream(self, request: EngineRequest, with_repair: bool = False) -> AsyncIterator[OutputChunk]:
        return cancelling(self.streaming.stream.remote(request, with_repair), self.name, _output_failure)

    async def health(self) -> dict[str, StageHealth]:
        return await remote_health(self.handle.health.remote(), self.name, POSTPROCESSOR_HEALTH_TIMEOUT_S)

    async def load_adapter(self, base: str, name: str, path: str) -> dict[str, Any]:
        return await self.handle.load_adapter.remote(base, name, path)

    async def free_adapter(self, base: str, name: str) -> bool:
        return await self.handle.free_adapter.remote(base, name)


@serve.deployment(name="RRRPostProcessor")
class RRRPostProcessor(PostProcessing):
    """``PostProcessing`` in replicas of its own, over the model deployments' handles."""

    def __init__(self, models: dict[str, DeploymentHandle], multiplexed: Iterable[str] = ()) -> None:
        super().__init__(remote_models(models, multiplexed))
