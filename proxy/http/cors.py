"""CORS for browser pages: a global origin allow-list (SWITCHYARD_CORS_ORIGINS) plus each tenant's
`cors_origins`.

A preflight carries no key, so it is answered by the global list or any tenant's list; responses get
their CORS headers by the same rule, so a page can read a 401 or 403 too. Once the key is known,
`TenantOriginGate` refuses (403 `origin_not_allowed`) a cross-origin request whose origin neither
the global list nor the caller's tenant allows, before any work starts. Same-origin requests (the
chat page the proxy serves) always pass.

An origin pattern is `scheme://host[:port]`; `*` for the port takes any port (or none), a leading
`*.` on the host any subdomain, and `*` alone any origin.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.errors import APIError
from proxy.http.middleware import send_error

DEFAULT_ORIGINS = tuple(f"{scheme}://{host}:*" for host in ("localhost", "127.0.0.1", "[::1]")
                        for scheme in ("http", "https"))
ALLOW_METHODS = b"GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = frozenset({"authorization", "content-type", "idempotency-key", "last-event-id", "prefer",
                           "x-request-id", "accept", "openai-organization", "openai-project",
                           "x-namespace"})  # Temporal's UI, calling the codec server (/admin/codec)
ALLOW_HEADER_PREFIX = "x-stainless-"  # the openai SDKs' telemetry headers (x-stainless-os, -retry-count…)
EXPOSE_HEADERS = ", ".join((
    "x-job-id", "x-request-id", "retry-after", "retry-after-ms", "location", "etag", "preference-applied",
    "cancel-requested", *(f"x-ratelimit-{kind}-{dim}" for kind in ("limit", "remaining", "reset")
                          for dim in ("requests", "tokens")))).encode()
MAX_AGE = b"600"

_ORIGIN = re.compile(r"^(https?)://(\*\.)?([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}|\*))?$")


class OriginPattern:
    def __init__(self, pattern: str):
        text = pattern.strip().lower().rstrip("/")
        self.any = text == "*"
        if self.any:
            return
        m = _ORIGIN.match(text)
        if m is None:
            raise ValueError(f"not an origin pattern: {pattern!r} (use scheme://host[:port|:*])")
        self.scheme, self.subdomains, self.host, self.port = m.group(1), bool(m.group(2)), m.group(3), m.group(4)

    def matches(self, origin: str) -> bool:
        if self.any:
            return True
        m = _ORIGIN.match(origin.lower())
        if m is None or m.group(2) or m.group(4) == "*" or m.group(1) != self.scheme:
            return False
        host, port = m.group(3), m.group(4)
        if self.subdomains:
            if not host.endswith("." + self.host):
                return False
        elif host != self.host:
            return False
        return self.port == "*" or port == self.port


def parse_origins(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The env value (comma-separated) or a list, checked; None or blank: the loopback default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_ORIGINS
    items = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(i.strip() for i in items if i.strip())
    for item in out:
        OriginPattern(item)  # ValueError names the bad entry
    return out


class OriginList:
    def __init__(self, patterns: Iterable[str]):
        self.patterns = [OriginPattern(p) for p in patterns]

    def allows(self, origin: str) -> bool:
        return any(p.matches(origin) for p in self.patterns)


@lru_cache(maxsize=4096)
def _pattern(text: str) -> OriginPattern | None:
    try:
        return OriginPattern(text)
    except ValueError:  # checked when set; one stored otherwise (CLI, KV by hand) matches nothing
        return None


def tenant_allows(tenant: Any, origin: str) -> bool:
    patterns = (_pattern(p) for p in getattr(tenant, "cors_origins", ()))
    return any(p is not None and p.matches(origin) for p in patterns)


def _keystore(scope: Scope) -> Any:
    runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
    return getattr(runtime, "keystore", None)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def same_origin(scope: Scope, origin: str) -> bool:
    host = _header(scope, b"host")
    return host is not None and origin.partition("://")[2].lower() == host.lower()


class CORSMiddleware:
    """Answers preflights and adds CORS headers to responses; outside authentication, so errors
    carry them too."""

    def __init__(self, app: ASGIApp, origins: Iterable[str] = DEFAULT_ORIGINS):
        self.app = app
        self.origins = OriginList(origins)

    def known(self, scope: Scope, origin: str) -> bool:
        if self.origins.allows(origin):
            return True
        store = _keystore(scope)
        return store is not None and any(tenant_allows(t, origin) for t in store.list_tenants())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["cors"] = self
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await self._preflight(scope, send, origin)
            return
        allowed = self.known(scope, origin)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"vary"]
                vary = [v for k, v in message.get("headers", []) if k.lower() == b"vary"]
                headers.append((b"vary", b", ".join([*vary, b"Origin"])))
                if allowed:
                    headers += [(b"access-control-allow-origin", origin.encode("latin-1")),
                                (b"access-control-expose-headers", EXPOSE_HEADERS)]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, send: Send, origin: str) -> None:
        requested = [h.strip().lower() for h in (_header(scope, b"access-control-request-headers") or "").split(",")
                     if h.strip()]
        refused = [h for h in requested if h not in ALLOW_HEADERS and not h.startswith(ALLOW_HEADER_PREFIX)]
        method = _header(scope, b"access-control-request-method") or ""
        if not self.known(scope, origin):
            problem = f"The origin '{origin[:200]}' is not allowed (SWITCHYARD_CORS_ORIGINS or the tenant's cors_origins)."
        elif method.upper() not in ALLOW_METHODS.decode().split(", "):
            problem = f"The method '{method[:20]}' is not allowed."
        elif refused:
            problem = f"The header(s) {', '.join(refused)[:200]} are not allowed."
        else:
            allow = ", ".join(sorted(ALLOW_HEADERS | set(requested))).encode()
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", ALLOW_METHODS),
                (b"access-control-allow-headers", allow),
                (b"access-control-max-age", MAX_AGE),
                (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send_error(send, APIError(problem, status=403, type="invalid_request_error",
                                        code="origin_not_allowed", headers={"vary": "Origin"}))


class TenantOriginGate:
    """Inside authentication: a cross-origin request must come from an origin that the global list or
    the caller's own tenant allows."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state", {}) if scope["type"] == "http" else {}
        cors: CORSMiddleware | None = state.get("cors")
        tenant = state.get("tenant")
        origin = _header(scope, b"origin") if cors is not None else None
        if origin is not None and cors is not None and tenant is not None and not same_origin(scope, origin) \
                and not cors.origins.allows(origin):
            store = _keystore(scope)
            if not tenant_allows(store.get_tenant(tenant) if store is not None else None, origin):
                await send_error(send, APIError(
                    f"The origin '{origin[:200]}' is not allowed for this API key's tenant.", status=403,
                    type="invalid_request_error", code="origin_not_allowed"))
                return
        await self.app(scope, receive, send)
