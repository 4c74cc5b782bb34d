"""Typed API errors and their one mapping to OpenAI's error envelope."""

from __future__ import annotations

import math

import msgspec
import nats.errors
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from schemas.openai import ErrorBody, ErrorEnvelope

_encoder = msgspec.json.Encoder()


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
                 **kwargs):
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


# NATS (JetStream: job events, key store, limiter state) failing or unreachable: nats.js.errors.*
# and nats.errors.TimeoutError / ConnectionClosedError / NoRespondersError all derive from this.
EVENTS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error,)


def events_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("The event store is unavailable; please retry.", code="events_unavailable",
                              headers={"retry-after": "1"})


def envelope_bytes(body: ErrorBody) -> bytes:
    return _encoder.encode(ErrorEnvelope(error=body))


def error_response(exc: APIError) -> Response:
    return Response(envelope_bytes(exc.body()), status_code=exc.status,
                    media_type="application/json", headers=exc.headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


_HTTP_TYPES = {404: ("invalid_request_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    type_, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", None))
    message = f"Unknown request URL: {request.method} {request.url.path}." if exc.status_code == 404 else str(exc.detail)
    return error_response(APIError(message, status=exc.status_code, type=type_, code=code,
                                   headers=dict(exc.headers or {})))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """The last resort, for any exception no handler took; NATS errors are a 503 `events_unavailable`
    (also registered for them by type, so they reach here only from outside the router)."""
    import structlog

    log = structlog.get_logger("switchyard.proxy")
    if isinstance(exc, EVENTS_ERRORS):
        log.warning("events_unavailable", error_type=type(exc).__name__, error=str(exc)[:200])
        return error_response(events_unavailable())
    log.error("unhandled_error", error_type=type(exc).__name__)
    return error_response(APIError("The server had an error while processing your request.",
                                   code="internal_error"))
