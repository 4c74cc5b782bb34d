"""OpenAI's error types and codes as typed exceptions: what went wrong, in the envelope's terms
(status, type, code, param). Raised anywhere; mapped to a response in one place (proxy/http/errors.py)."""

from __future__ import annotations

import math
from typing import Any

from schemas.openai import ErrorBody


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = headers or {}

    def body(self) -> ErrorBody:
        return ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(APIError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"


class Conflict(APIError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class _Throttled(APIError):
    """A 429 carrying `retry-after` (whole seconds, rounded up) and `retry-after-ms`, which the
    OpenAI SDKs honour, plus whatever `x-ratelimit-*` headers the limiter computed."""

    status = 429

    def __init__(self, message: str, *, retry_after: float = 1.0, headers: dict[str, str] | None = None,
                 **kwargs: Any):
        self.retry_after = max(0.0, float(retry_after))
        merged = dict(headers or {})
        merged["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        merged["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        super().__init__(message, headers=merged, **kwargs)


class RateLimited(_Throttled):
    type = "requests"   # "tokens" for a TPM refusal, as OpenAI sends it
    code = "rate_limit_exceeded"


class QuotaExceeded(_Throttled):
    type = "insufficient_quota"
    code = "insufficient_quota"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeaderFieldsTooLarge(APIError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class ServiceUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
