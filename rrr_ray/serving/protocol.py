"""Request and response models of the HTTP API, shared by the ingress, the client and the tests.

HTTP bodies only: the sampling fields are defined once in ``sampling``, the messages between the
stages in ``messages`` (a healed reply's ``HealReport`` is also a field of the bodies). A
response field marked ``exclude_if=_absent`` is left out of the body when it is ``None`` (the
body omits it rather than sending ``null``).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema, field_validator,
    model_validator,
)

from rrr_ray.format import RepairReport, Validation, guided_regex
from rrr_ray.serving.messages import HealReport
from rrr_ray.serving.sampling import (
    DEFAULT_MAX_NEW_TOKENS, DEFAULT_REPETITION_PENALTY, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, INTEGRAL,
    FrequencyPenalty, MaxNewTokens, MinP, MinTokens, PresencePenalty, RepetitionPenalty, SamplingOptions, Seed,
    StopString, Temperature, TopK, TopP)


def _absent(value: object) -> bool:
    return value is None


class ContentPart(BaseModel):
    """One part of a message's content, as OpenAI's API sends it. rrr-ray serves text: a part of any
    other type (an image, audio, a file) is refused, by name."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={  # the schema: a text part
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}}, "required": ["type", "text"],
        "additionalProperties": False})  # an image part is refused by its type, not by its other fields

    type: str
    text: Optional[str] = None

    @model_validator(mode="after")
    def _text_only(self) -> "ContentPart":
        if self.type != "text":
            raise ValueError(f"content parts of type {self.type!r} are not supported: rrr-ray serves text "
                             "(parts of type 'text' only)")
        if self.text is None:
            raise ValueError("a content part of type 'text' needs 'text'")
        if self.model_extra:
            raise ValueError(f"a text part has only 'type' and 'text', not {', '.join(map(repr, self.model_extra))}")
        return self


def _parts_or_text(value: object) -> object:
    """A message's content: a string, or a list of parts, each reported by its index when it is bad."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("content must be a string or a list of content parts")
    parts = []
    for i, part in enumerate(value):
        try:
            parts.append(ContentPart.model_validate(part))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(x) for x in error["loc"])
            raise ValueError(f"part {i}{f' ({where})' if where else ''}: "
                             f"{error['msg'].removeprefix('Value error, ')}") from None
    return parts


PART_SEPARATOR = "\n"
"""Between the text parts of one message, joined (as vLLM's OpenAI server joins them)."""


class ChatMessage(BaseModel):
    """A message of the conversation: ``content`` a string, or OpenAI's list of text parts.
    OpenAI's ``developer`` role is the ``system`` role of the chat template."""

    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Union[str, list[ContentPart]], BeforeValidator(_parts_or_text)]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return PART_SEPARATOR.join(part.text or "" for part in self.content)

    def as_dict(self) -> dict[str, str]:
        """The message as the chat template takes it."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text}


# -- request bodies -------------------------------------------------------------------------------

Heal = Annotated[Optional[bool], Field(description=(
    "Self-healing: the model writes freely; if its reply breaks the RRR format, what broke it is never sent "
    "and the reply goes on from the valid part, guided by the regex of its valid remainders. Default (null): "
    "on, unless the served model is configured otherwise, 'guided' is set (valid already), or 'ignore_eos' or "
    "'min_tokens' asks for a long reply."))]


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
        history = [m.as_dict() for m in self.messages] if self.messages else [{"role": "user", "content": self.prompt}]
        if self.system and not any(m["role"] == "system" for m in history):
            history.insert(0, {"role": "system", "content": self.system})
        return history


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

class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: Optional[bool] = Field(None, description="End the stream with one more chunk, with no "
                                          "choices and the request's usage (before data: [DONE]).")
    include_obfuscation: Optional[bool] = Field(None, description="Accepted and ignored (no padding is sent).")


_UNSUPPORTED = {
    "tools": "tool calls are not supported: replies are React-Respond-Reflect text",
    "tool_choice": "tool calls are not supported: replies are React-Respond-Reflect text",
    "functions": "function calls are not supported: replies are React-Respond-Reflect text",
    "function_call": "function calls are not supported: replies are React-Respond-Reflect text",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported: rrr-ray serves text",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning_effort is not supported: the served models are not reasoning models",
    "verbosity": "verbosity is not supported",
}
"""OpenAI fields that would change the reply in a way rrr-ray cannot: a 400 naming the field
when one is set (null, an empty list or object: as if absent)."""

Refused = Annotated[Optional[Any], WithJsonSchema({
    "anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}, {"type": "object", "maxProperties": 0}],
    "description": "Not supported: only null (or empty) is accepted; anything else is a 400 naming the field."})]
"""The schema of a refused field says what the server accepts: null or empty."""


@functools.cache
def _rrr_regexes() -> tuple[str, ...]:
    return guided_regex(bounded=True), guided_regex(bounded=False)


_STRUCTURED_OUTPUTS_SCHEMA = {"anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}, {
    "type": "object", "required": ["regex"], "additionalProperties": False,
    "properties": {"regex": {"enum": list(_rrr_regexes())}}}]}
"""What ``structured_outputs`` may be: null or empty, or vLLM's ``{"regex": ...}`` with the RRR regex."""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request, as far as it concerns text; plus vLLM's sampling extras
    (``top_k``, ``repetition_penalty``, ``min_p``, ``min_tokens``, ``ignore_eos``) and rrr-ray's
    (``guided``, ``heal``). Every field is honoured, refused with a 400 naming it (tools, other
    response formats, ``n`` > 1, ...), or ignored where OpenAI's reply does not depend on it
    (``user``, ``metadata``, ``store``...). A field nobody defines is a 400, never ignored.
    Null is the default, as in OpenAI's API."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=lambda schema: schema.update(allOf=[
        {  # top_logprobs above 0 needs logprobs: true (as vLLM and OpenAI have it)
            "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
            "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}},
        {  # structured_outputs only as vLLM's spelling of guided: true
            "if": {"required": ["structured_outputs"], "properties": {"structured_outputs": {"type": "object", "minProperties": 1}}},
            "then": {"required": ["guided"], "properties": {"guided": {"const": True}}}},
    ]))

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[MaxNewTokens] = None
    max_completion_tokens: Optional[MaxNewTokens] = Field(None, description=(
        "OpenAI's newer name for max_tokens; where both are given, this one (as vLLM has it)."))
    temperature: Optional[Temperature] = Field(None, description=f"0 is greedy; default {DEFAULT_TEMPERATURE}.")
    top_p: Optional[TopP] = Field(None, description=f"Nucleus sampling; default {DEFAULT_TOP_P}.")
    presence_penalty: Optional[PresencePenalty] = None
    frequency_penalty: Optional[FrequencyPenalty] = None
    seed: Seed = None
    stop: Optional[Union[StopString, list[StopString]]] = Field(
        None, description="Stop before this string or any of these (at most the server's limits.max_stop_strings). "
                          "A stop string ends the reply where it is, valid RRR or not (rrr_validation says which); "
                          "a reply it cuts short is never healed.")
    n: Optional[Annotated[int, INTEGRAL]] = Field(None, description="1: one choice per request.")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[bool] = Field(None, description="Return the log probability of each token of the reply.")
    top_logprobs: Optional[Annotated[int, Field(ge=0, le=20), INTEGRAL]] = Field(
        None, description="With logprobs: also the most likely tokens at each position, this many.")
    response_format: Annotated[Optional[dict[str, Any]], WithJsonSchema({"anyOf": [{"type": "null"}, {
        "type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}}]})] = Field(
        None, description="Only {'type': 'text'}: replies follow the RRR format (guided: true constrains decoding to it).")
    modalities: Annotated[Optional[list[str]], WithJsonSchema({"anyOf": [{"type": "null"}, {
        "type": "array", "items": {"const": "text"}}]})] = Field(None, description="Only ['text'].")
    # vLLM's sampling extras
    top_k: Optional[TopK] = Field(None, description=f"vLLM extension; default {DEFAULT_TOP_K}.")
    repetition_penalty: Optional[RepetitionPenalty] = Field(
        None, description=f"vLLM extension; default {DEFAULT_REPETITION_PENALTY}.")
    min_p: Optional[MinP] = Field(None, description="vLLM extension.")
    min_tokens: Optional[MinTokens] = Field(None, description="vLLM extension.")
    ignore_eos: Optional[bool] = Field(None, description="vLLM extension: keep generating past end-of-sequence.")
    structured_outputs: Annotated[Optional[dict[str, Any]], WithJsonSchema(_STRUCTURED_OUTPUTS_SCHEMA)] = Field(
        None, description="vLLM's spelling of guided decoding: accepted with guided: true and the RRR regex only.")
    # rrr-ray's extensions
    guided: bool = Field(False, description="rrr-ray extension (pass through extra_body).")
    heal: Heal = None
    # ignored, as OpenAI's reply does not depend on them
    user: Optional[str] = Field(None, description="Ignored.")
    metadata: Optional[dict[str, str]] = Field(None, description="Ignored.")
    store: Optional[bool] = Field(None, description="Ignored (nothing is stored).")
    service_tier: Optional[str] = Field(None, description="Ignored.")
    parallel_tool_calls: Optional[bool] = Field(None, description="Ignored (no tools).")
    prompt_cache_key: Optional[str] = Field(None, description="Ignored (the prefix cache needs no key).")
    safety_identifier: Optional[str] = Field(None, description="Ignored.")
    # refused when set
    tools: Refused = None
    tool_choice: Refused = None
    functions: Refused = None
    function_call: Refused = None
    logit_bias: Refused = None
    audio: Refused = None
    prediction: Refused = None
    web_search_options: Refused = None
    reasoning_effort: Refused = None
    verbosity: Refused = None

    @field_validator(*_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and value != [] and value != {}:
            raise ValueError(_UNSUPPORTED[info.field_name])
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value != 1:
            raise ValueError(f"n = {value}: rrr-ray returns one choice per request (n = 1)")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if value is not None and value.get("type") != "text":
            raise ValueError(f"response_format of type {value.get('type')!r} is not supported: replies follow "
                             "the RRR format ({'type': 'text'}; guided: true constrains decoding to the format)")
        return value

    @field_validator("modalities")
    @classmethod
    def _text_modality(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and any(m != "text" for m in value):
            raise ValueError(f"modalities {value}: rrr-ray serves text only (['text'])")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.structured_outputs and not (
                self.guided and set(self.structured_outputs) == {"regex"}
                and self.structured_outputs["regex"] in _rrr_regexes()):
            raise ValueError("structured_outputs is accepted only as vLLM's spelling of guided: true, "
                             "{'regex': guided_regex()} with guided: true; rrr-ray constrains decoding to the "
                             "RRR format only")
        return self

    def sampling(self) -> SamplingOptions:
        given = {name: getattr(self, name) for name in _CHAT_SAMPLING if getattr(self, name) is not None}
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        most = self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS
        return SamplingOptions(max_new_tokens=most, stop=stop, **given)  # min_tokens: at most `most` there

    def top_logprobs_count(self) -> Optional[int]:
        """What the engine request asks for: None without logprobs, else how many alternatives."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_CHAT_SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty",
                  "min_p", "min_tokens", "seed", "ignore_eos")
"""The fields of ``ChatCompletionRequest`` that are ``SamplingOptions`` fields of the same name."""


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


class TopLogprob(BaseModel):
    token: str
    logprob: float = Field(description="Natural log of the probability; -9999.0 stands for minus infinity.")
    bytes: list[int] = Field(description="The token's UTF-8 bytes.")


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The most likely tokens at this position (top_logprobs).")


class ChoiceLogprobs(BaseModel):
    """With ``logprobs``: one entry per token of the reply (or of the chunk, streamed)."""

    content: list[TokenLogprobEntry]


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str]
    stop_reason: Optional[str] = Field(None, description="vLLM extension: the stop string that ended the reply, "
                                       "if one did (finish_reason is then 'stop').")


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
    logprobs: Optional[ChoiceLogprobs] = Field(None, exclude_if=_absent)
    finish_reason: Optional[str] = None
    stop_reason: Optional[str] = Field(None, exclude_if=_absent, description="As in ChatCompletionChoice.")


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed chat completion. The one with ``finish_reason`` carries the verdict;
    with ``stream_options.include_usage`` one more follows, with no choices and the usage."""

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
    dtype: Optional[str] = Field(None, description="The dtype the weights are served in (a config's `auto` as "
                                 "resolved at start-up: bfloat16 on a CPU with AVX-512 BF16 or AMX, else float32).")
    status: Optional[Literal["loaded", "available"]] = Field(None, description=(
        "For a LoRA adapter: loaded (served now), or available (found in an adapter folder or the config, "
        "loaded on first use)."))


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoraAdapterRequest(BaseModel):
    """``POST /v1/load_lora_adapter``, as vLLM takes it."""

    model_config = ConfigDict(extra="forbid", strict=True)
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

    model_config = ConfigDict(extra="forbid", strict=True)
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
