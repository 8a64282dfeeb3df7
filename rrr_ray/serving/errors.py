"""The serving errors: engine failures (a 500 once the reply began) and bad requests (their HTTP status)."""

from __future__ import annotations

from typing import Iterable, Optional


class EngineError(RuntimeError):
    """The engine failed while generating."""


class EngineDeadError(EngineError):
    """The engine is not running any more."""


class FailedBeforeFirstToken(EngineError):
    """The engine ended a request with an error before its first token."""


class BadRequestError(ValueError):
    """The request cannot be served as asked (prompt too long, unknown model...): a 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelNotServedError(BadRequestError):
    """A request names a model (or LoRA adapter) that this server, stage or engine does not serve: a 404."""

    def __init__(self, model: Optional[str], served: Iterable[str]) -> None:
        super().__init__(f"model {model!r} is not served; available: {', '.join(served)}", 404)
