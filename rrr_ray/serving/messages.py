"""What passes between the stages of the graph: the request, the chunks, the final record, health.

    ingress --EngineRequest--> post-processor --EngineRequest--> model
    ingress <--OutputChunk---- post-processor <--ModelChunk----- model
    /health: each stage answers ``StageHealth`` per served name

These cross Ray hops (pickled), so the chunks are plain dataclasses with slots (one per batch of
tokens: the hot path). Errors travel as data (a chunk with ``error``), so every hop ends its
stream cleanly. ``HealReport`` is also a field of the HTTP bodies (``protocol``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, Field

from rrr_ray.format import ErrorCode, RepairReport, Validation
from rrr_ray.serving.sampling import SamplingOptions


class EngineRequest(BaseModel):
    """What the ingress asks of a model (one request, already validated)."""

    request_id: str
    model: str
    messages: list[dict[str, str]]
    sampling: SamplingOptions
    guided_regex: Optional[str] = None
    heal: bool = Field(False, description="Heal the reply if it breaks the RRR format (see GenerateRequest.heal).")
    continue_final_message: bool = Field(False, description="The last message is the start of the assistant's "
                                         "reply: the engine continues it (no end of turn, no new turn).")
    logprobs: Optional[int] = Field(None, ge=0, description="Return each generated token's log probability "
                                    "and those of the given number of most likely tokens; None: none.")
    adapter_path: Optional[str] = Field(None, description="The LoRA adapter that ``model`` names: its folder or "
                                        "URI (rrr_ray.serving.adapters); None for a base model.")


class HealReport(BaseModel):
    """A healed reply: the model's own text up to ``position``, then its continuation under the regex
    of the valid remainders of that text."""

    position: int = Field(description="Character offset in the reply where the model's own text broke the format.")
    reason: ErrorCode = Field(description="The violation that broke it.")
    dropped_tokens: int = Field(description="Tokens generated past the break, never sent (not in output_tokens).")


class StageHealth(BaseModel):
    """One served name's health as a stage reports it: why it cannot serve (None: it can), its load."""

    error: Optional[str] = None
    unfinished_requests: Optional[int] = None  # None: not known (the stage did not answer)


@dataclass(slots=True)
class TokenLogprob:
    """One generated token's log probability, and the most likely tokens at its position."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class ModelChunk:
    """One Ray message from the model stage: the text of one or more engine steps."""

    text: list[str] = field(default_factory=list)
    num_tokens: int = 0
    tokens_per_text: list[int] = field(default_factory=list)  # the tokens of each text, when known
    input_tokens: int = 0
    cached_tokens: Optional[int] = None  # of the input, found in the engine's prefix cache
    finished: bool = False
    finish_reason: Optional[str] = None
    engine_ttft_s: Optional[float] = None  # on the first chunk
    engine_time_s: Optional[float] = None  # on the last chunk
    error: Optional[str] = None
    status: Optional[int] = None  # an HTTP status when the request itself was bad
    stop_reason: Optional[str] = None  # the stop string that ended the request
    logprobs: Optional[list[list[TokenLogprob]]] = None  # per text, its tokens' (when the request asks)
    adapter_load_s: Optional[float] = None  # on the first chunk, for a LoRA adapter: its load time here (0: warm)


@dataclass(slots=True)
class FinalRecord:
    """A finished reply: its text, the verdict, the engine's counts and times, and the repair if asked."""

    text: str
    validation: Validation
    input_tokens: int
    output_tokens: int
    finish_reason: Optional[str] = None
    engine_ttft_s: Optional[float] = None
    engine_time_s: Optional[float] = None
    cached_tokens: Optional[int] = None  # of the input, found in the engine's prefix cache
    repaired_text: Optional[str] = None  # with repair only
    repair: Optional[RepairReport] = None  # with repair only
    heal: Optional[HealReport] = None  # a healed reply only
    stop_reason: Optional[str] = None  # the stop string that ended the reply (never healed)
    adapter_load_s: Optional[float] = None  # a LoRA adapter's load time for this request (0: warm)


@dataclass(slots=True)
class OutputChunk:
    """One Ray message from the post-processing stage: labelled tokens, and the verdict at the end."""

    tokens: list[tuple[str, Optional[str]]] = field(default_factory=list)
    logprobs: Optional[list[TokenLogprob]] = None  # of the tokens sent in this chunk, when the request asks
    finished: bool = False
    final: Optional[FinalRecord] = None
    error: Optional[str] = None
    status: Optional[int] = None
