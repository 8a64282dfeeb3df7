"""Errors of the generation job, and the mapping of OpenAI client exceptions onto them.

An :class:`EndpointError` says by its class what happens next: ``retryable`` errors are sent
again with backoff; once no longer retried, a ``fatal`` one stops the job and any other one
rejects the dialogue with the error's ``code`` as its reason.
"""

from __future__ import annotations

from typing import ClassVar, Optional


class GenerationError(RuntimeError):
    """A problem that stops the whole job (bad key, unreachable endpoint, bad arguments)."""


class DialogueRejected(Exception):
    """One dialogue is given up; ``reasons`` are its reason codes (validator codes, ``parse_error``)."""

    def __init__(self, reasons: list[str]):
        super().__init__(", ".join(reasons))
        self.reasons = reasons


class EndpointError(Exception):
    """A request to the endpoint that failed.

    ``code`` is the reason code recorded when a dialogue is rejected for it (``http_<status>``
    for an HTTP status); ``status`` is the HTTP status, if any; ``attempts`` is how many times
    the request was sent.
    """

    code: str = "endpoint_error"
    retryable: ClassVar[bool] = False
    fatal: ClassVar[bool] = True

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status
        if status is not None:
            self.code = f"http_{status}"
        self.attempts = 1

    def describe(self) -> str:
        """The message; for a retryable error (so one that ran out of retries), with the attempts."""
        return f"{self} (after {self.attempts} attempts)" if self.retryable else str(self)


class EndpointUnreachable(EndpointError):
    """Connection error or timeout: retried, then fatal."""

    code = "unreachable"
    retryable = True


class AuthError(EndpointError):
    """HTTP 401 or 403: a bad or unauthorised API key. Fatal."""


class ModelNotFound(EndpointError):
    """HTTP 404: no such model or route. Fatal."""


class TransientStatus(EndpointError):
    """An HTTP status worth retrying (408, 409); once out of retries the dialogue is rejected."""

    retryable = True
    fatal = False


class RateLimited(TransientStatus):
    """HTTP 429."""


class ServerError(TransientStatus):
    """HTTP 5xx."""


class RequestRejected(EndpointError):
    """Any other HTTP status (400, 422, ...): not retried; the dialogue is rejected."""

    fatal = False


class BadReply(EndpointError):
    """Anything else that went wrong sending the request or reading its reply. Fatal."""

    code = "bad_reply"


def endpoint_error(exc: Exception, base_url: str, model: str) -> EndpointError:
    """The :class:`EndpointError` for an exception raised by an OpenAI client call."""
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return AuthError(f"authentication failed at {base_url} (HTTP 401): check OPENAI_API_KEY", exc.status_code)
    if isinstance(exc, openai.PermissionDeniedError):
        return AuthError(f"permission denied at {base_url} (HTTP 403): check OPENAI_API_KEY", exc.status_code)
    if isinstance(exc, openai.NotFoundError):
        return ModelNotFound(f"model {model!r} or route not found at {base_url} (HTTP 404)", exc.status_code)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is one
        return EndpointUnreachable(f"cannot reach {base_url}: {type(exc).__name__}: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"HTTP {status} from {base_url}"
        if status == 429:
            return RateLimited(message, status)
        if status >= 500:
            return ServerError(message, status)
        if status in (408, 409):
            return TransientStatus(message, status)
        return RequestRejected(message, status)
    return BadReply(f"unexpected error talking to {base_url}: {type(exc).__name__}: {exc}")
