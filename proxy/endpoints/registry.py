"""Every OpenAI endpoint the proxy serves as a job, in one place. The app's routes, the jobs API,
the WebSocket and the OpenAPI document are generated from `ENDPOINTS`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.endpoints import audio, chat, completions, embeddings, responses
from proxy.endpoints.endpoint import Endpoint, Handler
from proxy.http.sse import SSEResponse
from proxy.jobs.run import serve_endpoint
from schemas.errors import InvalidRequest

ENDPOINTS: tuple[Endpoint, ...] = (
    chat.ENDPOINT,
    completions.ENDPOINT,
    embeddings.ENDPOINT,
    *audio.ENDPOINTS,
    responses.ENDPOINT,
)
BY_PATH: dict[str, Endpoint] = {e.path: e for e in ENDPOINTS}
# The endpoints a JSON body can create a job for (/v1/jobs, the WebSocket, batches).
JSON_ENDPOINTS: tuple[str, ...] = tuple(e.path for e in ENDPOINTS if e.prepare is not None)
JOB_ENDPOINTS: tuple[str, ...] = tuple(BY_PATH)  # every job's memo.endpoint is one of these


def endpoint_of(path: str) -> Endpoint:
    return BY_PATH[path]


def creatable(path: object) -> Endpoint:
    """The endpoint a JSON job names, or a 400 listing the ones there are."""
    endpoint = BY_PATH.get(path) if isinstance(path, str) else None
    if endpoint is None or endpoint.prepare is None:
        raise InvalidRequest(f"Unsupported endpoint '{path}'. Supported: {', '.join(JSON_ENDPOINTS)}.",
                             param="endpoint", code="unsupported_endpoint")
    return endpoint


def handler_of(endpoint: Endpoint) -> Handler:
    if endpoint.handler is not None:
        return endpoint.handler

    async def handle(request: Request) -> Response | SSEResponse:
        return await serve_endpoint(request, endpoint)

    handle.__name__ = handle.__qualname__ = endpoint.path.strip("/").replace("/", "_")
    return handle


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for endpoint in ENDPOINTS:
        out.append(Route(endpoint.path, handler_of(endpoint), methods=["POST"]))
        out.extend(endpoint.routes)
    return out


def operations() -> dict[tuple[str, str], dict]:
    out = {}
    for e in ENDPOINTS:
        out[("POST", e.path)] = e.operation
        out.update(e.route_operations)
    return out
