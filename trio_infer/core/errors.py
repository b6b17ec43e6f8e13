"""The service's error hierarchy: each error carries its HTTP status and what a client needs to act on it.

Every error a handler raises is a `ServiceError`; `app.py` maps them to responses in one place.
"""

from __future__ import annotations

import math


class ServiceError(Exception):
    """An error answered with `status` and a JSON body `{"error": kind, "detail": detail}`."""

    status: int = 500
    kind: str = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.param = param
        self.code = code

    @property
    def openai_type(self) -> str:
        """The `type` of OpenAI's nested error shape."""
        if self.status == 401:
            return "authentication_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    @property
    def close_connection(self) -> bool:
        """Whether the connection must close: a body refused unread, or not all received, leaves the
        stream mid-request."""
        return self.status in (408, 413)

    @property
    def retry_after_header(self) -> str | None:
        """Whole seconds for a Retry-After header (at least 1), or None."""
        if self.retry_after is None:
            return None
        return str(max(1, math.ceil(self.retry_after)))


class BadRequest(ServiceError):
    status = 400
    kind = "bad_request"


class InputTooLong(BadRequest):
    """A text over the model's token limit, sent with truncation off."""

    kind = "input_too_long"

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        super().__init__(detail, param=param, code="input_too_long")

    @classmethod
    def counted(cls, tokens: int, exact: bool, limit: int) -> InputTooLong:
        """The error for a text of `tokens` tokens (at least that many when not `exact`)."""
        count = f"{tokens}" if exact else f"at least {tokens}"
        return cls(
            f"the text has {count} tokens, over this model's limit of {limit}; "
            "shorten it, or send truncate: true to embed its first tokens"
        )


class InvalidJSON(BadRequest):
    kind = "invalid_json"


class Unauthorized(ServiceError):
    status = 401
    kind = "unauthorized"


class NotFound(ServiceError):
    status = 404
    kind = "not_found"


class MethodNotAllowed(ServiceError):
    status = 405
    kind = "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status = 413
    kind = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    kind = "unsupported_media_type"


class ValidationFailed(ServiceError):
    status = 422
    kind = "validation_error"


class InferenceFailed(ServiceError):
    """The model raised: the client sees a generic message, the log has the cause."""

    status = 500
    kind = "inference_error"


class Unavailable(ServiceError):
    """Not ready, draining, or overloaded: retry later (elsewhere)."""

    status = 503
    kind = "unavailable"


class Overloaded(Unavailable):
    kind = "overloaded"


class Draining(Unavailable):
    kind = "shutting_down"


class RequestTimeout(ServiceError):
    status = 504
    kind = "timeout"


class BodyTimeout(ServiceError):
    """The request body did not arrive within its deadline; the connection is closed after the answer."""

    status = 408
    kind = "body_timeout"


class ModelNotFound(NotFound):
    """A request named a model this server does not serve."""

    kind = "model_not_found"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, param="model", code="model_not_found")
