"""Request and response models of the HTTP API, shared by the ingress, the client and the tests."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_NEW_TOKENS_LIMIT = 2048


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class SamplingOptions(BaseModel):
    """Sampling settings, validated at the edge (out-of-range values are a 422)."""

    max_new_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS_LIMIT, description="Most tokens to generate.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=-1, description="-1 or 0 disables top-k.")
    repetition_penalty: float = Field(1.1, gt=0.0, le=2.0)
    seed: Optional[int] = Field(None, description="Sampling seed, for reproducible replies.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence (benchmarks).")


class GenerateRequest(SamplingOptions):
    """``POST /generate``: the seed's body, plus multi-turn messages, model choice and guided decoding."""

    model_config = ConfigDict(extra="forbid")

    prompt: Optional[str] = Field(None, min_length=1, description="A single user message.")
    messages: Optional[list[ChatMessage]] = Field(None, min_length=1, description="Multi-turn history instead of prompt.")
    system: Optional[str] = Field(None, description="System message put before the conversation.")
    model: Optional[str] = Field(None, description="Served model or LoRA adapter (see /v1/models); default: the fine-tuned one.")
    guided: bool = Field(False, description="Constrain decoding with guided_regex(): valid RRR by construction.")
    repair: bool = Field(False, description="Also return the repaired text and what repair changed.")
    stream: bool = Field(False, description="Stream NDJSON lines, one per token.")

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "GenerateRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("the last message must be a user message")
        return self

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


class GenerationMetadata(BaseModel):
    input_tokens: int
    output_tokens: int
    inference_time_seconds: float = Field(description="Request arrival at the ingress to the last token.")
    tokens_per_second: float
    time_to_first_token_seconds: Optional[float] = None
    engine_time_to_first_token_seconds: Optional[float] = Field(None, description="The same, inside the engine.")
    engine_time_seconds: Optional[float] = Field(None, description="Time the engine spent on the request.")
    finish_reason: Optional[str] = None
    model: Optional[str] = None


class GenerateResponse(BaseModel):
    generated_text: str
    metadata: Optional[GenerationMetadata]
    validation: Optional[dict[str, Any]]
    repaired_text: Optional[str] = None
    repair: Optional[dict[str, Any]] = None
    error: Optional[str] = None


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


# -- OpenAI-compatible ---------------------------------------------------------------------------

class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that rrr-ray honours (plus ``guided``)."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=-1)
    repetition_penalty: float = Field(1.1, gt=0.0, le=2.0)
    seed: Optional[int] = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    stream: bool = False
    guided: bool = Field(False, description="rrr-ray extension (pass through extra_body).")

    @model_validator(mode="after")
    def _last_is_user(self) -> "ChatCompletionRequest":
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be a user message")
        return self

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or 256,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            repetition_penalty=self.repetition_penalty, seed=self.seed)
