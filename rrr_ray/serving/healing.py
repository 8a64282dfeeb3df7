"""Self-healing streams: what the post-processing needs to continue a reply that broke the RRR format.

When a reply is healed (``EngineRequest.heal``) the post-processing (``streams.postprocess``) watches
every token: once the text stops being a valid prefix (``rrr_ray.format.prefix_violation``), or the
model ends a reply that is not complete, nothing past the longest valid prefix is sent, the engine's
stream is closed, and ``Healing.continuation`` asks the same model to go on from that prefix: the same
messages plus a final assistant message holding it, continued (``continue_final_message``), guided by
the regex of its valid remainders (``rrr_ray.format.remainder_regex``), within the tokens left, with
the request's own sampling settings. A reply that a stop string ended is not healed: the client asked
for it to end there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable

from rrr_ray.serving.messages import EngineRequest, ModelChunk

HEAL_SUFFIX = "-heal"
"""Appended to a request's id for its continuation."""


@dataclass(frozen=True)
class Healing:
    """How to heal one reply: its request, and the model stage that continues it."""

    request: EngineRequest
    stream: Callable[[EngineRequest], AsyncIterator[ModelChunk]]

    def continuation(self, prefix: str, regex: str, tokens_left: int) -> EngineRequest:
        """The request that continues the reply from ``prefix``, guided by ``regex``, with the
        request's own sampling (penalties, seed, stop strings, logprobs...) over the tokens left:
        ``min_tokens`` counts the tokens already sent."""
        request = self.request
        sampling = request.sampling
        done = sampling.max_new_tokens - tokens_left
        return request.model_copy(update={
            "request_id": request.request_id + HEAL_SUFFIX,
            "messages": [*request.messages, {"role": "assistant", "content": prefix}],
            "sampling": sampling.model_copy(update={
                "max_new_tokens": tokens_left, "min_tokens": min(max(sampling.min_tokens - done, 0), tokens_left)}),
            "guided_regex": regex, "continue_final_message": True, "heal": False,
        })

    def tokens_left(self, output_tokens: int) -> int:
        return self.request.sampling.max_new_tokens - output_tokens
