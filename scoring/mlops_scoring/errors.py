"""Typed errors of the scoring service and the one map from error to HTTP status.

Tree::

    ScoringError                      500 internal_error
    ├── BadJson                       400 bad_json
    ├── BadRequest                    400 bad_request
    ├── Unauthorized                  401 unauthorized
    ├── NotFound                      404 not_found
    ├── MethodNotAllowed              405 method_not_allowed
    ├── PayloadTooLarge               413 payload_too_large
    ├── UnsupportedMediaType          415 unsupported_media_type
    ├── InvalidInput                  422 invalid_input
    │   ├── MissingInput              422 missing_input
    │   ├── UnknownInput              422 unknown_input
    │   ├── InvalidShape              422 invalid_shape
    │   ├── InvalidDtype              422 invalid_dtype
    │   └── EmptyBatch                422 empty_batch
    ├── Unavailable                   503 (not_ready, overloaded, queue_timeout, draining)
    ├── ScoringTimeout                504 timeout
    └── RunFailed                     500 run_failed (the model or the entry script raised)

Every error reaches the caller as ``{"error": {"code": ..., "message": ...}}`` and never
with a stack trace.
"""

from __future__ import annotations

import orjson

__all__ = [
    "BadJson",
    "BadRequest",
    "EmptyBatch",
    "InvalidDtype",
    "InvalidInput",
    "InvalidShape",
    "MethodNotAllowed",
    "MissingInput",
    "NotFound",
    "PayloadTooLarge",
    "RunFailed",
    "ScoringError",
    "ScoringTimeout",
    "Unauthorized",
    "Unavailable",
    "UnknownInput",
    "UnsupportedMediaType",
    "error_body",
]


class ScoringError(Exception):
    """Base of every error the service answers with; ``status`` and ``code`` say how."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadJson(ScoringError):
    """The body is not valid JSON (or not UTF-8)."""

    status, code = 400, "bad_json"


class BadRequest(ScoringError):
    """The request is malformed in a way that is not about one input."""

    status, code = 400, "bad_request"


class Unauthorized(ScoringError):
    """No key, or a key that matches neither the primary nor the secondary key."""

    status, code = 401, "unauthorized"


class NotFound(ScoringError):
    """No such route."""

    status, code = 404, "not_found"


class MethodNotAllowed(ScoringError):
    """The route exists but not for this method."""

    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(ScoringError):
    """The body is larger than ``--max-body-bytes``."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ScoringError):
    """The body is not ``application/json``."""

    status, code = 415, "unsupported_media_type"


class InvalidInput(ScoringError):
    """Valid JSON that does not fit the model's inputs."""

    status, code = 422, "invalid_input"


class MissingInput(InvalidInput):
    """A model input is not in the request."""

    code = "missing_input"


class UnknownInput(InvalidInput):
    """The request names an input the model does not have."""

    code = "unknown_input"


class InvalidShape(InvalidInput):
    """An input's shape does not match the model's declared shape."""

    code = "invalid_shape"


class InvalidDtype(InvalidInput):
    """An input's values cannot be cast to the model's declared type."""

    code = "invalid_dtype"


class EmptyBatch(InvalidInput):
    """The request holds zero rows."""

    code = "empty_batch"


class Unavailable(ScoringError):
    """The service cannot take the request now: not ready, overloaded or draining."""

    status, code = 503, "unavailable"

    def __init__(self, message: str, *, code: str, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ScoringTimeout(ScoringError):
    """The model did not answer within the scoring timeout."""

    status, code = 504, "timeout"


class RunFailed(ScoringError):
    """The model or the entry script raised; the service itself is fine."""

    status, code = 500, "run_failed"


def error_body(code: str, message: str) -> bytes:
    """Return the JSON body every error response carries."""
    return orjson.dumps({"error": {"code": code, "message": message}})
