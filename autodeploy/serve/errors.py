"""OpenAI-style error bodies, and the HTTP status of every error the routes can meet.

Body: ``{"error": {"message", "type", "param", "code"}}``. Statuses:

- 400 ``invalid_request_error``: a malformed or out-of-range field (``param`` names it); a
  request that can never fit (``code: context_length_exceeded``, the message gives both sizes);
- 404 ``not_found_error``: an unknown model (``code: model_not_found``; the message lists the
  served ones);
- 503 ``server_overloaded`` + ``Retry-After``: the waiting queue is full; 503 ``engine_dead``:
  the engine hit a fatal error;
- 500 ``server_error``: the engine failed this request (the server keeps serving others).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..utils.errors import CapacityError, ConfigError, EngineDeadError, QueueFullError

RETRY_AFTER_S = 1
_SAMPLING_FIELD = re.compile(r"SamplingParams\.(\w+)=")


class APIError(Exception):
    """An error with its HTTP status and OpenAI body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_validation_error(exc: ValidationError) -> APIError:
    """Pydantic's first error -> 400 naming the field (dotted path, list indices included)."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {param!r}; remove it (see the OpenAI API for the fields)"
    elif param:
        message = f"{param}: {message} (got {first.get('input')!r:.80})"
    return APIError(400, message, param=param)


def from_exception(exc: BaseException) -> APIError:
    """Map an error raised while preparing or running a request onto its API error."""
    if isinstance(exc, APIError):
        return exc
    cause = getattr(exc, "cause", None)  # a Ray task error wraps the original exception
    if isinstance(cause, BaseException) and cause is not exc:
        return from_exception(cause)
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, QueueFullError):
        return APIError(
            503,
            str(exc),
            error_type="server_overloaded",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, CapacityError):
        return APIError(400, str(exc), param="max_tokens", code="context_length_exceeded")
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), error_type="server_error", code="engine_dead")
    if isinstance(exc, ConfigError):
        match = _SAMPLING_FIELD.search(str(exc))
        param = match.group(1) if match else _leading_field(str(exc))
        return APIError(400, str(exc), param=param)
    return APIError(500, f"{type(exc).__name__}: {exc}", error_type="server_error")


def _leading_field(message: str) -> str | None:
    """The request field an error message starts with ("prompt 0: ...", "messages: ...")."""
    for name in ("messages", "prompt"):
        if message.startswith(name) or f" {name} " in message[:40]:
            return name
    return None
