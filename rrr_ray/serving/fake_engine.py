"""A deterministic engine for fast tests of the serving graph (never the only test of it).

It "generates" a fixed valid RRR reply in small pieces at a steady pace. Markers in the last user
message drive the failure paths the tests need: ``[invalid]`` (a reply with no reflect),
``[fail-after:N]`` (an engine error after N tokens), ``[kill-engine]`` (the engine dies).
``engine_kwargs``: ``token_interval_s`` (the pace), ``start_s`` (how long ``start`` takes).
"""

from __future__ import annotations

import asyncio
import re
from typing import AsyncIterator

from rrr_ray.serving.engine import BadRequestError, Engine, EngineConfig, EngineDeadError, EngineError, EngineOutput
from rrr_ray.serving.protocol import EngineRequest

VALID_REPLY = ("<react>*leans in with a warm, attentive smile*</react>\n"
               "<respond>That sounds like a lot to carry. What feels heaviest right now?</respond>\n"
               "<reflect>They seem overwhelmed; an open question gives them room to name it.</reflect>")
INVALID_REPLY = "<react>*nods*</react>\n<respond>Sure, let me help with that.</respond>"
_PIECE = re.compile(r".{1,4}", re.DOTALL)
_FAIL_AFTER = re.compile(r"\[fail-after:(\d+)\]")


class FakeEngine(Engine):
    """Pieces of about four characters, one every ``engine_kwargs['token_interval_s']`` seconds."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.interval = float(config.engine_kwargs.get("token_interval_s", 0.005))
        self.start_s = float(config.engine_kwargs.get("start_s", 0.0))
        self.dead = False
        self.running = 0

    async def start(self) -> None:
        await asyncio.sleep(self.start_s)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        self.check_served(request.model)
        prompt = request.messages[-1]["content"]
        input_tokens = sum(len(_PIECE.findall(m["content"])) for m in request.messages)
        if input_tokens > self.config.max_model_len:
            raise BadRequestError(f"the prompt is {input_tokens} tokens; the context is {self.config.max_model_len}")
        if "[kill-engine]" in prompt:
            self.dead = True
            raise EngineDeadError("fake engine was killed")
        reply = INVALID_REPLY if "[invalid]" in prompt else VALID_REPLY
        pieces = _PIECE.findall(reply)
        if request.sampling.ignore_eos:
            pieces = (pieces * (request.sampling.max_new_tokens // len(pieces) + 1))
        pieces = pieces[:request.sampling.max_new_tokens]
        fail = _FAIL_AFTER.search(prompt)
        self.running += 1
        try:
            for i, piece in enumerate(pieces, 1):
                await asyncio.sleep(self.interval)
                if fail and i > int(fail.group(1)):
                    raise EngineError("fake engine failed mid-stream")
                last = i == len(pieces)
                yield EngineOutput(text=piece, num_tokens=1, input_tokens=input_tokens, finished=last,
                                   finish_reason=("stop" if len(pieces) < request.sampling.max_new_tokens else "length")
                                   if last else None)
        finally:
            self.running -= 1

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def num_unfinished_requests(self) -> int:
        return self.running
