"""Builds the Starlette application: routes, middleware, error mapping, lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from proxy.auth import KeyRing
from proxy.config import ProxySettings
from proxy.errors import APIError, handle_api_error, handle_http_exception, handle_unexpected
from proxy.middleware import AuthMiddleware, RequestIdMiddleware
from proxy.runtime import Runtime
from proxy.serving_chat import chat_completions
from proxy.serving_health import healthz, readyz
from proxy.serving_jobs import cancel, create_job, events, get_job, list_all, result
from proxy.serving_models import get_model, list_models
from proxy.serving_ws import websocket_endpoint


def create_app(settings: ProxySettings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette):
        runtime = await Runtime.start(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    keys = KeyRing(settings.api_keys)
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/jobs", create_job, methods=["POST"]),
        Route("/v1/jobs", list_all, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/events", events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/result", result, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        WebSocketRoute("/v1/ws", websocket_endpoint),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware),
                    Middleware(AuthMiddleware, keys=keys)],
        exception_handlers={APIError: handle_api_error, HTTPException: handle_http_exception,
                            Exception: handle_unexpected},
        lifespan=lifespan,
    )
    app.state.keys = keys
    return app
