"""Builds the Starlette application: routes, middleware, error mapping, lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from gatekeeping.auth import KeyRing
from proxy.config import ProxySettings
from proxy.http.cors import CORSMiddleware, TenantOriginGate
from schemas.errors import APIError
from proxy.http.errors import EVENTS_ERRORS, handle_api_error, handle_http_exception, handle_unexpected
from proxy.http.middleware import AuthMiddleware, HeaderLimitMiddleware, RequestIdMiddleware
from proxy.http.openapi import openapi_endpoint
from proxy.runtime import Runtime
from proxy.http.telemetry import TelemetryMiddleware, metrics_endpoint
from proxy.endpoints.audio import speech, transcriptions, translations
from proxy.endpoints.chat import chat_completions
from proxy.endpoints.completions import completions
from proxy.endpoints.embeddings import embeddings
from proxy.endpoints.health import healthz, readyz
from proxy.jobs.api import cancel, create_job, events, get_job, list_all, result
from proxy.endpoints.admin import ROUTES as ADMIN_ROUTES
from proxy.endpoints.codec import ROUTES as CODEC_ROUTES
from proxy.endpoints.models import get_model, list_models
from proxy.jobs.ws import websocket_endpoint
from proxy.endpoints.ui import ROUTES as UI_ROUTES


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
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", translations, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/jobs", create_job, methods=["POST"]),
        Route("/v1/jobs", list_all, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/events", events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/result", result, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        WebSocketRoute("/v1/ws", websocket_endpoint),
        *ADMIN_ROUTES,
        *CODEC_ROUTES,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        *UI_ROUTES,
    ]
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
