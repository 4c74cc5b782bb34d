"""Pure ASGI middleware: request ids and access logs, then API-key authentication."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gatekeeping.auth import KeyRing, bearer_token
from schemas.errors import APIError, HeaderFieldsTooLarge, Unauthorized
from proxy.http.errors import envelope_bytes

MAX_HEADER_BYTES = 32 * 1024  # all request header fields together: name + value + 4 (": ", CRLF) each
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = structlog.get_logger("switchyard.proxy")


class RequestIdMiddleware:
    """Gives every request an `x-request-id` (the client's if well-formed) and logs one access line."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                limits = scope.get("state", {}).get("ratelimit_headers")
                if limits and message["status"] < 400:
                    extra += [(k.encode(), v.encode()) for k, v in limits.items()]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            state = scope.get("state", {})
            log.info("request", method=scope["method"], path=scope["path"], status=status,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2),
                     job_id=state.get("job_id"), model=state.get("model"), tenant=state.get("tenant"))
            structlog.contextvars.clear_contextvars()


class HeaderLimitMiddleware:
    """431 `request_header_fields_too_large` when an HTTP request's header fields exceed `limit`
    bytes in all. (The server has buffered them by now; proxy.http.protocol refuses them while they
    arrive, where uvicorn runs with it.)"""

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.limit:
            await send_error(send, header_fields_too_large(self.limit))
            return
        await self.app(scope, receive, send)


def header_fields_too_large(limit: int = MAX_HEADER_BYTES) -> HeaderFieldsTooLarge:
    return HeaderFieldsTooLarge(f"The request's header fields are larger than the limit of {limit} bytes.")


async def send_error(send: Send, exc: APIError) -> None:
    """`exc` in OpenAI's envelope, sent straight from ASGI middleware."""
    body = envelope_bytes(exc.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items())]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Requires a valid bearer key on /v1/*; answers 401 in OpenAI's envelope otherwise."""

    def __init__(self, app: ASGIApp, keys: KeyRing):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        token = bearer_token(_header(scope, b"authorization") or "")
        runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
        keys = runtime.keystore if runtime is not None and runtime.keystore is not None else self.keys
        principal = keys.verify(token) if token else None
        if principal is None:
            message = ("You didn't provide an API key. Pass it as 'Authorization: Bearer <key>'."
                       if token is None else "Incorrect API key provided.")
            await send_error(send, Unauthorized(message,
                                                headers={"www-authenticate": 'Bearer realm="switchyard"'}))
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["tenant"] = principal.tenant
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
