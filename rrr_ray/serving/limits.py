"""What one HTTP request may ask of the server: ``HttpLimits``, the ``limits:`` of serve_config.yaml.

The sizes (body, headers) are enforced by ``guard.RequestGuard`` before a route runs; the others
after the body is parsed (``request_errors``: a 422 in the shape of pydantic's errors), and
``document`` writes them all into the OpenAPI schema, so that the schema bounds exactly what the
server accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rrr_ray.serving.protocol import (
    DEFAULT_MAX_NEW_TOKENS, ChatCompletionRequest, ChatMessage, ContentPart, GenerateRequest,
)

TOKEN_FIELDS = ("max_new_tokens", "max_tokens", "max_completion_tokens")
"""The request fields that ask for a number of new tokens (``/generate``, OpenAI's two names)."""
TEXT_FIELDS = ("prompt", "system")


class HttpLimits(BaseModel):
    """Bounds on one HTTP request, checked before any engine work (``limits:`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")  # a mistyped limit is an error, not a default

    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body; a larger one is a 413 "
                                "(from Content-Length at once, or while a chunked body is read).")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Largest total size of a request's headers "
                                  "(names and values); more is a 431.")
    max_new_tokens: int = Field(2048, ge=1, description="Most new tokens a request may ask for (max_new_tokens; "
                                f"max_tokens / max_completion_tokens on /v1); more is a 422 (on /v1 a 400). A "
                                f"request that asks for none gets {DEFAULT_MAX_NEW_TOKENS}, or this limit when it is "
                                "lower.")
    max_messages: int = Field(256, ge=1, description="Most entries in 'messages'.")
    max_prompt_chars: int = Field(100_000, ge=1, description="Most characters in 'prompt', in 'system' and in "
                                  "the content of each message (the model's context may be smaller: a prompt "
                                  "that does not fit it is a 400).")
    max_stop_strings: int = Field(4, ge=0, description="Most strings in 'stop' (OpenAI's limit is 4).")

    def request_errors(self, body: BaseModel) -> list[dict[str, Any]]:
        """What in a parsed request body is over these limits, as pydantic-style errors (empty: none)."""
        errors: list[dict[str, Any]] = []

        def over(loc: tuple[Any, ...], kind: str, limit_name: str, what: str) -> None:
            limit = getattr(self, limit_name)
            errors.append({"type": kind, "loc": ("body", *loc),
                           "msg": f"{what}; this server's limit ({limit_name}) is {limit}"})

        for name in TOKEN_FIELDS:
            value = getattr(body, name, None)
            if value is not None and value > self.max_new_tokens:
                over((name,), "less_than_equal", "max_new_tokens", f"asks for {value} new tokens")
        for name in TEXT_FIELDS:
            value = getattr(body, name, None)
            if value is not None and len(value) > self.max_prompt_chars:
                over((name,), "string_too_long", "max_prompt_chars", f"is {len(value)} characters")
        messages = getattr(body, "messages", None) or []
        if len(messages) > self.max_messages:
            over(("messages",), "too_long", "max_messages", f"has {len(messages)} messages")
        for i, message in enumerate(messages):
            if len(message.text) > self.max_prompt_chars:
                over(("messages", i, "content"), "string_too_long", "max_prompt_chars",
                     f"is {len(message.text)} characters")
        stop = getattr(body, "stop", None)
        if isinstance(stop, list) and len(stop) > self.max_stop_strings:
            over(("stop",), "too_long", "max_stop_strings", f"has {len(stop)} strings")
        return errors

    def document(self, schema: dict[str, Any]) -> None:
        """Write these limits into an OpenAPI schema's request models (``maximum``, ``maxItems``, ``maxLength``)."""
        components = schema.get("components", {}).get("schemas", {})
        bounds = [
            *[(GenerateRequest, name, "maximum", self.max_new_tokens) for name in TOKEN_FIELDS],
            *[(ChatCompletionRequest, name, "maximum", self.max_new_tokens) for name in TOKEN_FIELDS],
            *[(GenerateRequest, name, "maxLength", self.max_prompt_chars) for name in TEXT_FIELDS],
            (GenerateRequest, "messages", "maxItems", self.max_messages),
            (ChatCompletionRequest, "messages", "maxItems", self.max_messages),
            (ChatMessage, "content", "maxLength", self.max_prompt_chars),
            (ContentPart, "text", "maxLength", self.max_prompt_chars),
            (GenerateRequest, "stop", "maxItems", self.max_stop_strings),
            (ChatCompletionRequest, "stop", "maxItems", self.max_stop_strings),
        ]
        for model, name, keyword, value in bounds:
            prop = components.get(model.__name__, {}).get("properties", {}).get(name)
            if prop is not None:
                _bound(prop, keyword, value)


_KEYWORD_TYPES = {"maximum": ("integer", "number"), "maxItems": ("array",), "maxLength": ("string",)}


def _bound(prop: dict[str, Any], keyword: str, value: int) -> None:
    """Set ``keyword`` on the branches of a property schema it applies to (``anyOf`` of type and null)."""
    branches = prop.get("anyOf") or prop.get("oneOf") or [prop]
    for branch in branches:
        if branch.get("type") in _KEYWORD_TYPES[keyword]:
            branch[keyword] = value
