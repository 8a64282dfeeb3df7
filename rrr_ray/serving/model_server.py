"""The model stage: one engine (vLLM by default, injected by import path), streaming batches.

``ModelServer`` runs as a deployment of its own (``deployments.model.RRRModel``, reached over a
Ray hop) or inside each ingress replica (``placement: ingress``: no Ray hop between HTTP and the
engine). A dead engine fails the health check of a replica of its own; inside a shared replica it
is restarted in place (``recover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Optional

from rrr_ray.serving.adapters import AdapterLRU
from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.engine import Engine, load_engine_class
from rrr_ray.serving.errors import BadRequestError, EngineDeadError, EngineError
from rrr_ray.serving.messages import EngineRequest, ModelChunk, StageHealth
from rrr_ray.serving.streams import model_stream

logger = logging.getLogger(__name__)


class ModelServer:
    """One engine, streaming each request's deltas as ``ModelChunk`` batches."""

    max_failed_restarts = 3  # restarts in place that may fail in a row before ``recover`` gives up

    def __init__(self, engine: EngineConfig, streaming: Optional[StreamingOptions] = None) -> None:
        self.config = engine
        self.window = (streaming or StreamingOptions()).window()
        self.engine = self._new_engine()
        self.restarting: Optional[asyncio.Task] = None
        self.dead_reason: Optional[str] = None
        self.failed_restarts = 0
        options = self.config.adapters
        self.adapters = AdapterLRU(options.max_cpu_loras if options else max(1, len(self.config.lora_modules)),
                                   static=self.config.lora_modules)

    def _new_engine(self) -> Engine:
        return load_engine_class(self.config.engine_class)(self.config)

    async def start(self) -> None:
        await self.engine.start()

    async def stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        """Closing the stream aborts the request in the engine."""
        if self.restarting is not None:
            yield ModelChunk(finished=True, status=503, error=f"model {self.config.name!r} is restarting after its "
                             f"engine died ({self.dead_reason}); retry shortly")
            return
        self.window.active += 1
        try:
            stream = (model_stream(self.engine, request, self.window) if request.adapter_path is None
                      else self._adapter_stream(request))
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.window.active -= 1

    async def _adapter_stream(self, request: EngineRequest) -> AsyncIterator[ModelChunk]:
        """A request for a LoRA adapter: loaded here first if it is not (``AdapterLRU``), held while
        the request runs; the first chunk carries the load time."""
        assert request.adapter_path is not None
        try:
            async with self.adapters.use(self.engine, request.model, request.adapter_path) as load_s:
                first = True
                async with contextlib.aclosing(model_stream(self.engine, request, self.window)) as chunks:
                    async for chunk in chunks:
                        if first:
                            chunk.adapter_load_s, first = load_s, False
                        yield chunk
        except BadRequestError as exc:  # the adapter could not be loaded: the engine serves on
            yield ModelChunk(finished=True, error=str(exc), status=exc.status)

    async def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        """Load an adapter into this replica's engine now (``POST /v1/load_lora_adapter``):
        ``{"load_s": seconds}``, or ``{"error", "status"}`` when the engine refuses it."""
        try:
            async with self.adapters.use(self.engine, name, path) as load_s:
                return {"load_s": load_s}
        except BadRequestError as exc:
            return {"error": str(exc), "status": exc.status}

    async def free_adapter(self, name: str) -> bool:
        """Unload an adapter from this replica's engine (``POST /v1/unload_lora_adapter``)."""
        return await self.adapters.release(self.engine, name)

    def adapter_stats(self) -> dict[str, Any]:
        """The adapters loaded here, and how many requests found theirs loaded (warm) or loaded it (cold)."""
        return self.adapters.stats()

    async def check_health(self) -> None:
        """Raises when the engine is dead (Serve then restarts the replica that holds it)."""
        await self.engine.check_health()

    async def health(self) -> StageHealth:
        """For the /health route: why the engine is unhealthy (None if it is not), and its load."""
        if self.restarting is not None:
            return StageHealth(error=f"restarting after the engine died: {self.dead_reason}", unfinished_requests=0)
        try:
            await self.engine.check_health()
            error = None
        except Exception as exc:
            error = str(exc)
        return StageHealth(error=error, unfinished_requests=self.engine.num_unfinished_requests())

    async def recover(self) -> None:
        """For an engine that shares its replica with others (``placement: ingress``): when it is
        dead, start a new one in its place in the background, so the replica and its other models
        keep serving; meanwhile this model's requests get a 503. Raises ``EngineDeadError`` (Serve
        then replaces the replica) after ``max_failed_restarts`` failed restarts in a row."""
        if self.restarting is not None:
            return
        try:
            await self.engine.check_health()
            return
        except EngineError as exc:
            reason = str(exc)
        if self.failed_restarts >= self.max_failed_restarts:
            raise EngineDeadError(f"{reason}; {self.failed_restarts} restarts in place failed")
        self.dead_reason = reason
        logger.warning("engine of %s died (%s); restarting it in place", self.config.name, reason)
        self.restarting = asyncio.create_task(self._restart())

    async def _restart(self) -> None:
        try:
            with contextlib.suppress(Exception):  # a dead engine's shutdown is best-effort
                self.engine.shutdown()
            engine = self._new_engine()
            try:
                await engine.start()
            except Exception:
                self.failed_restarts += 1
                logger.exception("restart %d of %s's engine failed", self.failed_restarts, self.config.name)
                return
            self.engine, self.failed_restarts, self.dead_reason = engine, 0, None
            logger.info("engine of %s restarted in place", self.config.name)
        finally:
            self.restarting = None

    def shutdown(self) -> None:
        task = getattr(self, "restarting", None)
        if task is not None:
            task.cancel()
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()
