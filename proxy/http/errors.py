"""The one mapping of typed errors (schemas/errors.py) to OpenAI's error envelope, and the HTTP handlers."""

from __future__ import annotations

import msgspec
import nats.errors
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from schemas.errors import APIError, ServiceUnavailable
from schemas.openai import ErrorBody, ErrorEnvelope

_encoder = msgspec.json.Encoder()


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
