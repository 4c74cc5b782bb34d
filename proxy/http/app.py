"""Builds the Starlette application: routes, middleware, error mapping, lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from gatekeeping.auth import KeyRing
from proxy.config import ProxySettings
from proxy.http.cors import CORSMiddleware, TenantOriginGate
from schemas.errors import APIError
from proxy.http.errors import EVENTS_ERRORS, handle_api_error, handle_http_exception, handle_unexpected
from proxy.http.middleware import AuthMiddleware, HeaderLimitMiddleware, RequestIdMiddleware
from proxy.http.openapi import openapi_endpoint
from proxy.http.routes import routes as all_routes
from proxy.runtime import Runtime
from proxy.http.telemetry import TelemetryMiddleware


def create_app(settings: ProxySettings, runtime: Runtime | None = None) -> Starlette:
    """With `runtime` given (tests), the app uses it and leaves starting and closing it to the caller."""

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if runtime is not None:
            yield
            return
        started = await Runtime.start(settings)
        app.state.runtime = started
        try:
            yield
        finally:
            await started.close()

    keys = KeyRing(settings.api_keys)
    routes = all_routes(openapi_endpoint)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TelemetryMiddleware),  # outermost: its span covers the access log line
                    Middleware(RequestIdMiddleware),
                    Middleware(CORSMiddleware, origins=settings.cors_origins),  # errors carry CORS too
                    Middleware(HeaderLimitMiddleware),
                    Middleware(AuthMiddleware, keys=keys),
                    Middleware(TenantOriginGate)],
        exception_handlers={APIError: handle_api_error, HTTPException: handle_http_exception,
                            **{t: handle_unexpected for t in EVENTS_ERRORS},  # a 503, not re-raised
                            Exception: handle_unexpected},
        lifespan=lifespan,
    )
    app.state.keys = keys
    if runtime is not None:
        app.state.runtime = runtime
    return app
