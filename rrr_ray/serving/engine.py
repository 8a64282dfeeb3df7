"""The engine interface the model stage drives: ``Engine`` streams ``EngineOutput`` deltas.

An engine turns an ``EngineRequest`` into a stream of ``EngineOutput`` deltas. The model stage
takes the engine class by import path (``EngineConfig.engine_class``), so tests inject
``FakeEngine`` (``rrr_ray.serving.fake_engine``) and GPU users run the same code on CUDA vLLM
(``rrr_ray.serving.vllm_engine.VLLMEngine``, the default).
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from rrr_ray.serving.config import EngineConfig
from rrr_ray.serving.errors import BadRequestError, ModelNotServedError
from rrr_ray.serving.messages import EngineRequest, TokenLogprob


@dataclass(slots=True)
class EngineOutput:
    """New text and tokens from one engine step of one request."""

    text: str
    num_tokens: int
    input_tokens: int
    finished: bool = False
    finish_reason: Optional[str] = None
    cached_tokens: Optional[int] = None  # prompt tokens found in the prefix cache (None: not known)
    stop_reason: Optional[str] = None  # the stop string that ended the request (finish_reason "stop")
    logprobs: Optional[list[TokenLogprob]] = None  # one per new token, when the request asks for them


class Engine(abc.ABC):
    """What the model deployment needs from an engine."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; called once before serving."""

    def check_served(self, model: str) -> None:
        """Raise ``ModelNotServedError`` unless this engine serves ``model`` (or has it loaded as an adapter)."""
        if model not in self.config.served_names() and model not in self.loaded_adapters():
            raise ModelNotServedError(model, [*self.config.served_names(), *self.loaded_adapters()])

    # -- LoRA adapters loaded at run time (rrr_ray.serving.adapters.AdapterLRU drives these) --------

    def loaded_adapters(self) -> list[str]:
        return []

    async def add_adapter(self, name: str, path: str, adapter_id: int) -> None:
        """Load the LoRA adapter in folder ``path`` as ``name``; raise ``BadRequestError`` when it cannot be."""
        raise BadRequestError(f"the engine of {self.config.name} cannot load LoRA adapters")

    async def remove_adapter(self, name: str) -> None:  # noqa: B027 - optional hook
        """Free the adapter ``name``."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream deltas; closing the iterator aborts the request in the engine."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise ``EngineDeadError`` when the engine cannot serve."""

    @abc.abstractmethod
    def num_unfinished_requests(self) -> int:
        """Requests the engine holds (running or waiting)."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""


def load_engine_class(path: str) -> type[Engine]:
    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"engine_class {path!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(f"engine_class {path!r} is not an rrr_ray Engine")
    return cls
