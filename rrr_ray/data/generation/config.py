"""``GenerationConfig``: every setting of the generation job, with its default and description."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, Field, field_validator

from rrr_ray.data.generation.topics import TOPICS
from rrr_ray.model_names import MERGED_NAME

DEFAULT_EXAMPLES = Path("data/seed/curated_seed_dialogues")  # relative to the working directory (the checkout)
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = MERGED_NAME  # what `make serve` serves by default
OPENAI_MODEL = "gpt-4o-mini"


def _env_base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def _env_api_key() -> str:
    return os.environ.get("OPENAI_API_KEY") or "EMPTY"


def is_openai(base_url: str) -> bool:
    """Whether ``base_url`` is OpenAI's own API."""
    return "api.openai.com" in base_url


class GenerationConfig(BaseModel):
    """Everything the generation job needs; the CLI fills it from arguments."""

    base_url: str = Field(default_factory=_env_base_url,
                          description=f"OpenAI-compatible API root (…/v1); defaults to $OPENAI_BASE_URL, else rrr-ray's own endpoint "
                                      f"({DEFAULT_BASE_URL}).")
    api_key: str = Field(default_factory=_env_api_key, repr=False,
                         description="API key; defaults to $OPENAI_API_KEY ('EMPTY' for local servers).")
    model: Optional[str] = Field(default=None, description=f"Served model name; default {DEFAULT_MODEL}, or gpt-4o-mini for api.openai.com.")
    num_dialogues: int = Field(default=10, ge=1, description="How many accepted dialogues the output folder must hold.")
    concurrency: int = Field(default=4, ge=1, description="Most dialogues in flight at once (across all workers).")
    workers: Optional[int] = Field(default=None, ge=1, description="Ray actors; default min(concurrency, 2). Each is async.")
    output: Path = Field(default=Path("out/generated"), description="Folder for the JSONL shards.")
    resume: bool = Field(default=False, description="Continue a previous run in the same folder.")
    seed: int = Field(default=0, description="Fixes ids, topics, examples, temperatures and user lines.")
    mode: Literal["auto", "turns", "whole"] = Field(
        default="auto", description="turns: one completion per assistant reply; whole: one completion per dialogue; auto: whole for OpenAI.")
    min_turns: int = Field(default=2, ge=1, description="Fewest assistant replies per dialogue.")
    max_turns: int = Field(default=3, ge=1, description="Most assistant replies per dialogue.")
    few_shot_turns: int = Field(default=2, ge=0, description="Exchanges of the curated example given as few-shot context (turns mode).")
    max_tokens: int = Field(default=256, ge=16, description="Completion budget per reply (turns) or per dialogue x turns (whole).")
    temperature: float = Field(default=0.8, ge=0, le=2, description="Base sampling temperature.")
    temperature_jitter: float = Field(default=0.15, ge=0, le=1, description="Each dialogue's temperature is base ± jitter.")
    top_p: float = Field(default=1.0, gt=0, le=1,
                         description="Nucleus sampling (OpenAI's default, 1.0, is off: on a CPU engine it sorts the vocabulary per token).")
    top_k: int = Field(default=40, ge=0,
                       description="Top-k sampling, sent to rrr-ray and vLLM servers (not to api.openai.com); 0 leaves the server's.")
    max_retries: int = Field(default=4, ge=0, description="Retries of one request on connection errors, timeouts, 429 and 5xx.")
    backoff_base: float = Field(default=0.5, ge=0, description="First retry delay in seconds; doubles each retry (with jitter).")
    backoff_max: float = Field(default=8.0, ge=0, description="Longest retry delay in seconds.")
    format_retries: int = Field(default=2, ge=0, description="New samples asked for a reply that fails validation.")
    repair: bool = Field(default=True, description="Accept a reply that the format core's repair makes valid.")
    guided: bool = Field(default=False, description="Ask the server for guided decoding with the RRR regex (rrr-ray and vLLM servers).")
    request_timeout: float = Field(default=120.0, gt=0, description="Seconds before one request times out.")
    shard_size: int = Field(default=10, ge=1, description="Accepted dialogues per JSONL shard.")
    max_attempts: Optional[int] = Field(default=None, ge=1, description="Stop after this many dialogue attempts; default 3N+10.")
    examples: Path = Field(default=DEFAULT_EXAMPLES, description="Curated dialogues used as few-shot examples "
                           "(a relative path is taken from the working directory).")
    topics: list[str] = Field(default_factory=lambda: list(TOPICS), description="Topics, drawn per dialogue.")
    progress: bool = Field(default=True, description="Show a progress bar.")

    @field_validator("examples")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        """Resolved where the config is made, so that Ray workers find the same folder."""
        return path.resolve()

    def resolved_model(self) -> str:
        """The model asked for: ``model``, else the default for the endpoint."""
        return self.model or (OPENAI_MODEL if is_openai(self.base_url) else DEFAULT_MODEL)

    def resolved_mode(self) -> str:
        """``turns`` or ``whole``: ``mode``, or for ``auto`` whole for OpenAI models."""
        if self.mode != "auto":
            return self.mode
        return "whole" if is_openai(self.base_url) or self.resolved_model().startswith("gpt-") else "turns"

    def resolved_attempts(self) -> int:
        """The most dialogue attempts: ``max_attempts``, else 3N+10."""
        return self.max_attempts or 3 * self.num_dialogues + 10
