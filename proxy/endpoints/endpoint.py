"""An endpoint as data: what `schemas.endpoints.EndpointSpec` says of it everywhere, plus its HTTP
half. The registry (proxy/endpoints/registry.py) lists them; routes, the jobs API, the WebSocket
and the OpenAPI document are generated from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from proxy.http.sse import SSEResponse
from proxy.jobs.prepare import Prepare, PreparedJob
from proxy.jobs.render import ChunkWriter, CompletionAssembler
from schemas.endpoints import EndpointSpec

Handler = Callable[[Request], Awaitable[Response | SSEResponse]]
# How a collected result becomes the HTTP answer (proxy.jobs.run.json_response, results.stored_result).
Respond = Callable[[Any, Any, dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    spec: EndpointSpec
    operation: dict[str, Any]  # the OpenAPI operation of `POST spec.path`
    writer: type[ChunkWriter] = ChunkWriter  # renders the job's events (SSE, /events, WebSocket)
    assembler: type[CompletionAssembler] = CompletionAssembler  # the events as one result
    # A JSON body as a job: what POST spec.path, /v1/jobs, the WebSocket and batches create jobs
    # with. None: the endpoint takes no JSON body (uploads).
    prepare: Prepare | None = None
    # What of a JSON-created job must outlive its request, stored once it is admitted (the Responses
    # API's record), for jobs made through /v1/jobs and the WebSocket; the handler does its own.
    keep: Callable[[Any, PreparedJob], Awaitable[None]] | None = None
    respond: Respond | None = None  # None: the result encoded as JSON
    handler: Handler | None = None  # None: proxy.jobs.run.serve_endpoint with the fields above
    routes: tuple[BaseRoute, ...] = field(default=())  # the endpoint's other routes (GET {id}, ...)
    route_operations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # theirs, by (method, path)

    @property
    def path(self) -> str:
        return self.spec.path

    def chunk_writer(self, job_id: str, model: str, created: int, include_usage: bool,
                     after_id: int = -1) -> ChunkWriter:
        return self.writer(job_id, model, created, include_usage, after_id)
