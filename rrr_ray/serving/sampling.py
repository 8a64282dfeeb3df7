"""The sampling fields, defined once as annotated types, and ``SamplingOptions``: used by the
request bodies (``protocol``) and by the ``EngineRequest`` between the stages (``messages``)."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

STRICT = ConfigDict(strict=True)
"""Request models take JSON types as they are: ``"1"`` is not a number, ``0`` is not a boolean."""


def _integral(value: object) -> object:
    """JSON has one kind of number: ``3.0`` is the integer 3, as JSON Schema says (``3.5`` stays a 422)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(_integral)
"""Put after an integer field's constraints (so that the schema states them as minimum/maximum)."""

MaxNewTokens = Annotated[int, Field(ge=1, description="At most the server's limits.max_new_tokens (see the schema)."),
                         INTEGRAL]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False, description="0 is greedy.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False,
                              description="Nucleus sampling: the probability mass kept.")]
TopK = Annotated[int, Field(ge=-1, description="-1 or 0 disables top-k."), INTEGRAL]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=2.0, allow_inf_nan=False,
                                           description="Above 1 discourages repeating tokens.")]
PresencePenalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False, description=(
    "Above 0 discourages tokens that appeared in the reply so far (OpenAI's range)."))]
FrequencyPenalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False, description=(
    "Above 0 discourages tokens in proportion to how often they appeared in the reply so far (OpenAI's range)."))]
MinP = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, description=(
    "Drop tokens less likely than this fraction of the most likely one; 0 disables it."))]
MinTokens = Annotated[int, Field(ge=0, description=(
    "Generate at least this many tokens before end-of-sequence or a stop string may end the reply "
    "(at most the reply's max tokens).")), INTEGRAL]
SAFE_INTEGER = 2**53 - 1
"""The largest integer every JSON parser reads exactly (RFC 7493, I-JSON)."""
Seed = Annotated[Optional[Annotated[int, Field(ge=-SAFE_INTEGER, le=SAFE_INTEGER), INTEGRAL]],
                 Field(description="Sampling seed, for reproducible replies.")]
StopString = Annotated[str, Field(min_length=1)]

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40
DEFAULT_REPETITION_PENALTY = 1.1


class SamplingOptions(BaseModel):
    """Sampling settings, validated at the edge (out-of-range values are a 422)."""

    model_config = STRICT

    max_new_tokens: MaxNewTokens = Field(DEFAULT_MAX_NEW_TOKENS, description="Most tokens to generate.")
    temperature: Temperature = DEFAULT_TEMPERATURE
    top_p: TopP = DEFAULT_TOP_P
    top_k: TopK = DEFAULT_TOP_K
    repetition_penalty: RepetitionPenalty = DEFAULT_REPETITION_PENALTY
    presence_penalty: PresencePenalty = 0.0
    frequency_penalty: FrequencyPenalty = 0.0
    min_p: MinP = 0.0
    min_tokens: MinTokens = 0
    seed: Seed = None
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence (benchmarks).")
    stop: list[StopString] = Field(default_factory=list, description="Stop before any of these strings "
                                   "(at most the server's limits.max_stop_strings). A stop string ends the reply "
                                   "where it is, valid or not: a reply it cuts short is never healed.")

    @model_validator(mode="after")
    def _min_within_max(self) -> "SamplingOptions":
        self.min_tokens = min(self.min_tokens, self.max_new_tokens)  # at most the reply's max tokens
        return self
