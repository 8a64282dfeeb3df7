"""Request and response models of the HTTP API, shared by the ingress, the client and the tests.

The sampling fields are defined once, as annotated types, and used by both request models. A
response field marked ``exclude_if=_absent`` is left out of the body when it is ``None`` (the
body omits it rather than sending ``null``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from rrr_ray.format import ErrorCode, RepairReport, Validation

STRICT = ConfigDict(strict=True)
"""Request models take JSON types as they are: ``"1"`` is not a number, ``0`` is not a boolean."""


def _integral(value: object) -> object:
    """JSON has one kind of number: ``3.0`` is the integer 3, as JSON Schema says (``3.5`` stays a 422)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(_integral)
"""Put after an integer field's constraints (so that the schema states them as minimum/maximum)."""


def _absent(value: object) -> bool:
    return value is None


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "user", "assistant"]
    content: str


# -- sampling fields, shared by /generate and /v1/chat/completions -------------------------------

MaxNewTokens = Annotated[int, Field(ge=1, description="At most the server's limits.max_new_tokens (see the schema)."),
                         INTEGRAL]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False, description="0 is greedy.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False,
                              description="Nucleus sampling: the probability mass kept.")]
TopK = Annotated[int, Field(ge=-1, description="-1 or 0 disables top-k."), INTEGRAL]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=2.0, allow_inf_nan=False,
                                           description="Above 1 discourages repeating tokens.")]
SAFE_INTEGER = 2**53 - 1
"""The largest integer every JSON parser reads exactly (RFC 7493, I-JSON)."""
Seed = Annotated[Optional[Annotated[int, Field(ge=-SAFE_INTEGER, le=SAFE_INTEGER), INTEGRAL]],
                 Field(description="Sampling seed, for reproducible replies.")]
StopString = Annotated[str, Field(min_length=1)]
Heal = Annotated[Optional[bool], Field(description=(
    "Self-healing: the model writes freely; if its reply breaks the RRR format, what broke it is never sent "
    "and the reply goes on from the valid part, guided by the regex of its valid remainders. Default (null): "
    "on, unless the served model is configured otherwise, 'guided' is set (valid already) or 'ignore_eos' is."))]

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
    seed: Seed = None
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence (benchmarks).")
    stop: list[StopString] = Field(default_factory=list, description="Stop before any of these strings "
                                   "(at most the server's limits.max_stop_strings).")


class GenerateRequest(SamplingOptions):
    """``POST /generate``: the seed's body, plus multi-turn messages, model choice and guided decoding."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [  # exactly one of prompt, messages
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]})

    prompt: Optional[str] = Field(None, min_length=1, description="A single user message.")
    messages: Optional[list[ChatMessage]] = Field(None, min_length=1, description="Multi-turn history instead of prompt.")
    system: Optional[str] = Field(None, description="System message put before the conversation.")
    model: Optional[str] = Field(None, description="Served model or LoRA adapter (see /v1/models); default: the fine-tuned one.")
    guided: bool = Field(False, description="Constrain decoding with guided_regex(): valid RRR by construction.")
    heal: Heal = None
    repair: bool = Field(False, description="Also return the repaired text and what repair changed.")
    stream: bool = Field(False, description="Stream NDJSON lines, one per token.")

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "GenerateRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(**self.model_dump(include=set(SamplingOptions.model_fields)))

    def chat_messages(self) -> list[dict[str, str]]:
        history = [m.model_dump() for m in self.messages] if self.messages else [{"role": "user", "content": self.prompt}]
        if self.system and not any(m["role"] == "system" for m in history):
            history.insert(0, {"role": "system", "content": self.system})
        return history


class EngineRequest(BaseModel):
    """What the ingress asks of a model deployment (one request, already validated)."""

    request_id: str
    model: str
    messages: list[dict[str, str]]
    sampling: SamplingOptions
    guided_regex: Optional[str] = None
    heal: bool = Field(False, description="Heal the reply if it breaks the RRR format (see GenerateRequest.heal).")
    continue_final_message: bool = Field(False, description="The last message is the start of the assistant's "
                                         "reply: the engine continues it (no end of turn, no new turn).")
    adapter_path: Optional[str] = Field(None, description="The LoRA adapter that ``model`` names: its folder or "
                                        "URI (rrr_ray.serving.adapters); None for a base model.")


# -- /generate responses --------------------------------------------------------------------------

class GenerationMetadata(BaseModel):
    input_tokens: int
    cached_input_tokens: Optional[int] = Field(
        None, description="Of the input tokens, those found in the engine's prefix cache (an earlier request's "
                          "prompt), whose prefill was skipped; null where the engine does not say.")
    output_tokens: int
    inference_time_seconds: float = Field(description="Request arrival at the ingress to the last token.")
    tokens_per_second: float
    time_to_first_token_seconds: Optional[float] = None
    engine_time_to_first_token_seconds: Optional[float] = Field(None, description="The same, inside the engine.")
    engine_time_seconds: Optional[float] = Field(None, description="Time the engine spent on the request.")
    adapter_load_seconds: Optional[float] = Field(None, description="For a LoRA adapter: the time its replica "
                                                  "spent loading it for this request (0: it was loaded already).")
    finish_reason: Optional[str] = None
    model: Optional[str] = None


class HealReport(BaseModel):
    """A healed reply: the model's own text up to ``position``, then its continuation under the regex
    of the valid remainders of that text."""

    position: int = Field(description="Character offset in the reply where the model's own text broke the format.")
    reason: ErrorCode = Field(description="The violation that broke it.")
    dropped_tokens: int = Field(description="Tokens generated past the break, never sent (not in output_tokens).")


class GenerateResponse(BaseModel):
    """``POST /generate``, not streamed: the reply and its verdict."""

    generated_text: str
    metadata: Optional[GenerationMetadata]
    validation: Optional[Validation]
    repaired_text: Optional[str] = Field(None, description="With repair: the reply after repair.")
    repair: Optional[RepairReport] = Field(None, description="With repair: what repair changed.")
    error: Optional[str] = None
    heal: Optional[HealReport] = Field(None, exclude_if=_absent, description="Present when the reply was healed.")


class GenerateFailure(BaseModel):
    """``POST /generate``, not streamed, when the engine failed after the reply began (a 500)."""

    generated_text: str = Field(description="The text generated before the error.")
    metadata: None = None
    validation: None = None
    error: str


class GenerateStreamToken(BaseModel):
    """One NDJSON line of a streamed ``POST /generate``: a token and the RRR section it belongs to."""

    token: str
    section: Optional[str] = Field(description="react, respond or reflect; null outside the sections.")
    finished: Literal[False] = False


class GenerateStreamEnd(BaseModel):
    """The last NDJSON line: the metadata and verdict, or the error that ended the stream."""

    token: Literal[""] = ""
    finished: Literal[True] = True
    metadata: Optional[GenerationMetadata] = Field(None, exclude_if=_absent)
    validation: Optional[Validation] = Field(None, exclude_if=_absent)
    repaired_text: Optional[str] = Field(None, exclude_if=_absent)
    repair: Optional[RepairReport] = Field(None, exclude_if=_absent)
    error: Optional[str] = Field(None, exclude_if=_absent)
    heal: Optional[HealReport] = Field(None, exclude_if=_absent, description="Present when the reply was healed.")


class ValidationIssue(BaseModel):
    type: str
    loc: list[Union[str, int]]
    msg: str


class ErrorBody(BaseModel):
    """A 4xx (or a 500 before the reply began) outside ``/v1``."""

    error: str
    detail: Optional[list[ValidationIssue]] = Field(None, exclude_if=_absent,
                                                    description="The validation errors (422, invalid JSON).")


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy"]
    model_loaded: bool
    models: dict[str, bool] = Field(description="Per served name: whether its engine is healthy.")
    unfinished_requests: dict[str, Optional[int]]
    error: Optional[str] = Field(None, exclude_if=_absent, description="What is wrong, when unhealthy.")


# -- OpenAI-compatible ---------------------------------------------------------------------------

class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that rrr-ray honours (plus ``guided``)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[MaxNewTokens] = None
    max_completion_tokens: Optional[MaxNewTokens] = None
    temperature: Temperature = DEFAULT_TEMPERATURE
    top_p: TopP = DEFAULT_TOP_P
    top_k: TopK = DEFAULT_TOP_K
    repetition_penalty: RepetitionPenalty = DEFAULT_REPETITION_PENALTY
    seed: Seed = None
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] = Field(1, description="Only one choice per request.")
    stream: bool = False
    stop: Optional[Union[StopString, list[StopString]]] = Field(
        None, description="Stop before this string or any of these (at most the server's limits.max_stop_strings).")
    guided: bool = Field(False, description="rrr-ray extension (pass through extra_body).")
    heal: Heal = None

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            repetition_penalty=self.repetition_penalty, seed=self.seed,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []))


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens found in the engine's prefix cache.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Optional[str]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    rrr_validation: Validation = Field(description="rrr-ray extension: the RRR verdict on the reply.")
    rrr_heal: Optional[HealReport] = Field(None, exclude_if=_absent,
                                           description="rrr-ray extension: present when the reply was healed.")


class ChunkDelta(BaseModel):
    role: Optional[Literal["assistant"]] = Field(None, exclude_if=_absent)
    content: Optional[str] = Field(None, exclude_if=_absent)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed chat completion; the last one carries usage and the verdict."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = Field(None, exclude_if=_absent)
    rrr_validation: Optional[Validation] = Field(None, exclude_if=_absent)
    rrr_heal: Optional[HealReport] = Field(None, exclude_if=_absent)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rrr-ray"
    root: str
    parent: Optional[str] = Field(description="The base model, for a LoRA adapter.")
    description: str
    status: Optional[Literal["loaded", "available"]] = Field(None, description=(
        "For a LoRA adapter: loaded (served now), or available (found in an adapter folder or the config, "
        "loaded on first use)."))


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoraAdapterRequest(BaseModel):
    """``POST /v1/load_lora_adapter``, as vLLM takes it."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=256, description=(
        "'<model>:<adapter>', or a plain adapter name where one served model takes adapters (or its "
        "adapter_config.json names the model)."))
    lora_path: Optional[str] = Field(None, min_length=1, max_length=4096, description=(
        "The adapter's folder on the server (relative to the repository) or a pyarrow.fs URI; left out: "
        "the adapter of that name in the model's adapter folders."))
    load_inplace: bool = Field(False, description="Replace an adapter loaded under this name (e.g. a new "
                               "version published to the same folder).")


class UnloadLoraAdapterRequest(BaseModel):
    """``POST /v1/unload_lora_adapter``, as vLLM takes it."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=256)
    lora_int_id: Optional[int] = Field(None, description="Accepted for vLLM's clients; not used.")


class AdapterStatus(BaseModel):
    """The answer of the load and unload routes."""

    object: Literal["lora_adapter"] = "lora_adapter"
    lora_name: str = Field(description="The name requests use: '<model>:<adapter>'.")
    parent: str
    lora_path: str
    status: Literal["loaded", "unloaded"]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class OpenAIError(BaseModel):
    """Every error under ``/v1``, in OpenAI's shape."""

    error: OpenAIErrorDetail
