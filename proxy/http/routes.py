"""Every route the proxy serves, and where each is described for /openapi.json: only a map.

The job endpoints (chat, completions, embeddings, audio, responses) come from the endpoint registry;
the resources beside them (files, batches, fine-tuning jobs, tenant webhooks) bring their own
`ROUTES` and `OPERATIONS`; the rest is described in proxy/http/operations.py."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Route, WebSocketRoute

from proxy.endpoints import admin, batches, codec, files, fine_tuning, registry, rollouts, tenant_webhooks, ui
from proxy.endpoints.health import healthz, readyz
from proxy.endpoints.models import get_model, list_models
from proxy.http.operations import described_operations
from proxy.http.telemetry import metrics_endpoint
from proxy.jobs.api import cancel, create_job, events, get_job, list_all, result
from proxy.jobs.ws import websocket_endpoint

RESOURCES = (files, batches, fine_tuning)  # OpenAI's resources that are not a single job
ADMIN = (admin, rollouts, codec, tenant_webhooks)


def routes(openapi_endpoint: Any) -> list[BaseRoute]:
    return [
        *registry.routes(),
        Route("/v1/jobs", create_job, methods=["POST"]),
        Route("/v1/jobs", list_all, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/events", events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/result", result, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        WebSocketRoute("/v1/ws", websocket_endpoint),
        *(route for module in RESOURCES for route in module.ROUTES),
        *(route for module in ADMIN for route in module.ROUTES),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        *ui.ROUTES,
    ]


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    """The OpenAPI operation of every documented (method, path)."""
    out = {**described_operations(), **registry.operations()}
    for module in (*RESOURCES, tenant_webhooks):
        out.update(module.OPERATIONS)
    return out
