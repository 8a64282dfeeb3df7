"""A deterministic engine for fast tests of the serving graph (never the only test of it).

It "generates" a fixed valid RRR reply in small pieces at a steady pace. Markers in the last user
message drive the failure paths the tests need: ``[invalid]`` (a reply with no reflect),
``[broken]`` (a reply that breaks the format mid-stream: text between react and respond),
``[fail-after:N]`` (an engine error after N tokens), ``[kill-engine]`` (the engine dies).
A request that continues a reply (``continue_final_message``, as self-healing sends) gets the
remainder that completes it with the valid reply's sections, checked against its guided regex.
``sampling.stop`` ends the reply before the first stop string in it, as vLLM does (with the string as
``stop_reason``); ``ignore_eos`` and ``min_tokens`` repeat the reply's pieces up to the tokens asked;
``logprobs`` gives each piece a made-up log probability and ``logprobs`` alternatives. The other sampling
settings (temperature, penalties, seed...) do not change a fixed reply, and are ignored.
``engine_kwargs``: ``token_interval_s`` (the pace), ``start_s`` (how long ``start`` takes).
A prefix cache of the last ``CACHED_PROMPTS`` prompts reports each request's ``cached_tokens``
(its longest common prefix with one of them, as vLLM's prefix caching with one-token blocks).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import AsyncIterator, Optional

from rrr_ray.format import SECTIONS, prefix_state, validate
from rrr_ray.format.spec import SECTION_BY_NAME, SECTION_INDEX, SEPARATOR
from rrr_ray.serving.config import EngineConfig
from rrr_ray.serving.engine import Engine, EngineOutput
from rrr_ray.serving.errors import BadRequestError, EngineDeadError, EngineError
from rrr_ray.serving.messages import EngineRequest, TokenLogprob

FAKE_ENGINE = "rrr_ray.serving.fake_engine:FakeEngine"
"""This engine's import path, for ``EngineConfig.engine_class``."""
VALID_REPLY = ("<react>*leans in with a warm, attentive smile*</react>\n"
               "<respond>That sounds like a lot to carry. What feels heaviest right now?</respond>\n"
               "<reflect>They seem overwhelmed; an open question gives them room to name it.</reflect>")
INVALID_REPLY = "<react>*nods*</react>\n<respond>Sure, let me help with that.</respond>"
BROKEN_REPLY = ("<react>*nods slowly*</react>\nSure! Here is what I would say:\n"
                "<respond>Let us look at it together.</respond>\n<reflect>They want a plan.</reflect>")
_PIECE = re.compile(r".{1,4}", re.DOTALL)
_FAIL_AFTER = re.compile(r"\[fail-after:(\d+)\]")
CACHED_PROMPTS = 64


def common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class FakeEngine(Engine):
    """Pieces of about four characters, one every ``engine_kwargs['token_interval_s']`` seconds."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.interval = float(config.engine_kwargs.get("token_interval_s", 0.005))
        self.start_s = float(config.engine_kwargs.get("start_s", 0.0))
        self.dead = False
        self.running = 0
        self.cache: list[list[str]] = []  # the pieces of the latest prompts
        self.adapters: dict[str, str] = {}  # loaded LoRA adapters: name -> folder
        self.adapter_load_s = float(config.engine_kwargs.get("adapter_load_s", 0.0))

    async def start(self) -> None:
        await asyncio.sleep(self.start_s)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        self.check_served(request.model)
        prompt = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        prompt_pieces = [p for m in request.messages for p in [f"<{m['role']}>", *_PIECE.findall(m["content"])]]
        input_tokens = sum(len(_PIECE.findall(m["content"])) for m in request.messages)
        cached = min(input_tokens, max((common_prefix(prompt_pieces, seen) for seen in self.cache), default=0))
        self.cache = [*self.cache[-(CACHED_PROMPTS - 1):], prompt_pieces]
        if input_tokens > self.config.max_model_len:
            raise BadRequestError(f"the prompt is {input_tokens} tokens; the context is {self.config.max_model_len}")
        if "[kill-engine]" in prompt:
            self.dead = True
            raise EngineDeadError("fake engine was killed")
        if request.continue_final_message:
            reply = continuation(request.messages[-1]["content"], request.guided_regex)
        else:
            reply = BROKEN_REPLY if "[broken]" in prompt else INVALID_REPLY if "[invalid]" in prompt else VALID_REPLY
        sampling = request.sampling
        stops = sorted((i, stop) for stop in sampling.stop if (i := reply.find(stop)) >= 0)
        stop_reason = stops[0][1] if stops else None
        reply = reply[:stops[0][0]] if stops else reply  # vLLM's stop: the reply ends before it
        pieces = _PIECE.findall(reply) or [""]  # stopped at once: one token, its text cut (as vLLM)
        least = sampling.max_new_tokens if sampling.ignore_eos else sampling.min_tokens
        if least > len(pieces):  # no end before ``least`` tokens: the reply's pieces again
            pieces = (pieces * (least // len(pieces) + 1))[:least]
            stop_reason = None
        pieces = pieces[:sampling.max_new_tokens]
        fail = _FAIL_AFTER.search(prompt)
        self.running += 1
        try:
            for i, piece in enumerate(pieces, 1):
                await asyncio.sleep(self.interval)
                if fail and i > int(fail.group(1)):
                    raise EngineError("fake engine failed mid-stream")
                last = i == len(pieces)
                finish = ("stop" if len(pieces) < sampling.max_new_tokens else "length") if last else None
                logprobs = None if request.logprobs is None else [fake_logprob(piece, i, request.logprobs)]
                yield EngineOutput(text=piece, num_tokens=1, input_tokens=input_tokens, cached_tokens=cached,
                                   finished=last, finish_reason=finish,
                                   stop_reason=stop_reason if finish == "stop" else None, logprobs=logprobs)
        finally:
            self.running -= 1

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def num_unfinished_requests(self) -> int:
        return self.running

    def loaded_adapters(self) -> list[str]:
        return list(self.adapters)

    async def add_adapter(self, name: str, path: str, adapter_id: int) -> None:
        """Takes ``adapter_load_s``; a folder without adapter weights (or empty ones) fails as vLLM's check would."""
        await asyncio.sleep(self.adapter_load_s)
        weights = [Path(path) / f for f in ("adapter_model.safetensors", "adapter_model.bin")]
        if not any(w.exists() and w.stat().st_size > 0 for w in weights):
            raise BadRequestError(f"adapter {name!r} cannot be loaded: no weights in {path}")
        self.adapters[name] = path

    async def remove_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)


def fake_logprob(piece: str, index: int, top: int) -> TokenLogprob:
    """A made-up log probability for the ``index``-th piece, the most likely at its position, and
    ``top`` alternatives (the piece first), each less likely than the one before."""
    logprob = -0.05 * (index % 7 + 1)
    return TokenLogprob(piece, logprob, [(piece, logprob), *((f"<alt{j}>", logprob - j) for j in range(1, top))][:top])


def continuation(prefix: str, regex: Optional[str]) -> str:
    """What completes a valid reply prefix into a valid reply (with ``VALID_REPLY``'s sections)."""
    state = prefix_state(prefix)
    if not state.valid:
        raise EngineError(f"fake engine: cannot continue an invalid reply prefix ({state.violation.value})")
    content = validate(VALID_REPLY).sections
    rest = ""
    if state.section is not None:
        spec = SECTION_BY_NAME[state.section]
        if state.pending and state.has_content and spec.close_tag.startswith(state.pending):
            rest = spec.close_tag[len(state.pending):]  # the closing tag being written
        elif state.pending:
            rest = " " + spec.close_tag  # what may have become a tag stays text
        else:
            rest = ("" if state.has_content else content[spec.name]) + spec.close_tag
        following = SECTION_INDEX[spec.name] + 1
    else:
        following = state.opened
        if state.pending:  # the opening tag being written
            spec = SECTIONS[following]
            rest = spec.open_tag[len(state.pending):] + content[spec.name] + spec.close_tag
            following += 1
    for spec in SECTIONS[following:]:
        written = prefix + rest
        rest += ("" if not written or written[-1].isspace() else SEPARATOR) + spec.open_tag + content[spec.name] \
            + spec.close_tag
    if regex is not None and not re.fullmatch(regex, rest):
        raise EngineError("fake engine: the continuation does not match the guided regex")
    return rest
