"""The OpenAPI 3.1 document served at /openapi.json, built from the app's routes and our msgspec
structs (`msgspec.json.schema_components`), so a field added to a struct shows up here.

Every route the app serves gets an operation: the ones described in proxy/http/operations.py, and any
other (a route added without a description there) a minimal one marked `x-switchyard-undocumented`,
which tests/test_openapi.py refuses. Server-sent event responses are `text/event-stream` strings; the JSON
carried by each event's `data:` line is named by the `x-sse-data` extension (OpenAPI 3.1 has no
schema for event streams).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.routing import Route, WebSocketRoute

from proxy.http.operations import (
    ERROR_TEXT,
    REF,
    error_responses,
    json_content,
    ok,
    parameter,
)
from schemas.audio import SpeechRequest, TranscriptionJSON, VerboseTranscription
from schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorEnvelope,
    Model,
    ModelList,
    TextCompletion,
)
from schemas.files import FileDeleted, FileList, FileObject
from schemas.fine_tuning import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobCreate, FineTuningJobEvent
from schemas.batches import Batch, BatchCreate, BatchList
from schemas.responses import Response as ResponseObject, ResponsesRequest
from schemas.resources import AdminList, Health, JobCreate, JobList, JobView, Readiness
from schemas.tenancy import KeyCreate, KeyRecord, Tenant, TenantCreate, TenantUpdate

OPENAPI_VERSION = "3.1.0"
UNDOCUMENTED = "x-switchyard-undocumented"


def _structs() -> list[type]:
    found: list[type] = [ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, CompletionRequest,
                         TextCompletion, EmbeddingRequest, EmbeddingList, ErrorEnvelope, Model, ModelList,
                         JobCreate, JobView, JobList, Health, Readiness, AdminList, SpeechRequest,
                         TranscriptionJSON, VerboseTranscription, FileObject, FileList, FileDeleted,
                         Batch, BatchList, BatchCreate,
                         ResponsesRequest, ResponseObject, FineTuningJobCreate, FineTuningJob,
                         FineTuningJobEvent, FineTuningJobCheckpoint]
    found += [TenantCreate, TenantUpdate, KeyCreate, Tenant, KeyRecord]
    return found


_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def openapi_path(path: str) -> str:
    """Starlette's `/v1/models/{model:path}` as OpenAPI's `/v1/models/{model}`."""
    return _CONVERTER.sub(r"{\1}", path)


def _undocumented(method: str, path: str) -> dict[str, Any]:
    params = [parameter(name, "path", name) for name in re.findall(r"\{(\w+)\}", path)]
    op: dict[str, Any] = {"summary": f"{method} {path}", UNDOCUMENTED: True,
                          "responses": {"200": ok("Success."), **error_responses()}}
    if params:
        op["parameters"] = params
    return op


def _routes(routes: list[Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, WebSocketRoute):
            out.append(("GET", openapi_path(route.path)))
        elif isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                out.append((method, openapi_path(route.path)))
    return out


def build_openapi(routes: list[Any], version: str = "0.1.0") -> dict[str, Any]:
    from proxy.http.routes import operations

    described = operations()
    paths: dict[str, dict[str, Any]] = {}
    for method, path in _routes(routes):
        op = dict(described.get((method, path)) or _undocumented(method, path))
        op.setdefault("operationId", _operation_id(method, path))
        paths.setdefault(path, {})[method.lower()] = op
    _, components = msgspec.json.schema_components(_structs(), ref_template=REF)
    envelope = {"description": "An error in OpenAI's envelope.", "content": json_content("ErrorEnvelope"),
                "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}}}
    responses: dict[str, Any] = {"Error": envelope}
    for status, text in ERROR_TEXT.items():
        responses[f"Error{status}"] = {**envelope, "description": text}
    responses["Error500"] = {**envelope, "description": "An internal error, or a job that failed."}
    _add_request_id(paths)
    doc = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Switchyard", "version": version,
                 "description": "A durable OpenAI-compatible serving proxy. Every response carries "
                                "`x-request-id`; errors use OpenAI's envelope `{\"error\": {\"message\", "
                                "\"type\", \"param\", \"code\"}}`.",
                 "license": {"name": "Proprietary", "identifier": "LicenseRef-Proprietary"}},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in ("chat", "completions", "embeddings", "audio", "responses", "files",
                                        "batches", "fine-tuning", "jobs", "models", "websocket", "admin",
                                        "operations")],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": responses,
            "headers": {"RequestId": {"description": "The request's id (the client's `x-request-id` when "
                                                     "well-formed).", "schema": {"type": "string"}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "`Authorization: Bearer <API key>`."}},
        },
    }
    return msgspec.json.decode(msgspec.json.encode(doc))  # plain JSON values (tuples become lists)


def _add_request_id(paths: dict[str, dict[str, Any]]) -> None:
    for item in paths.values():
        for op in item.values():
            for status, response in list(op["responses"].items()):
                if "$ref" in response:
                    continue
                op["responses"][status] = {**response, "headers": {
                    **response.get("headers", {}), "x-request-id": {"$ref": "#/components/headers/RequestId"}}}


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.replace("{", "by_").replace("}", "")) if w]
    return method.lower() + "_" + "_".join(words)


async def openapi_endpoint(request):
    """GET /openapi.json: built once per app from its routes."""
    from starlette.responses import Response

    state = request.app.state
    body = getattr(state, "openapi_json", None)
    if body is None:
        body = state.openapi_json = msgspec.json.encode(build_openapi(request.app.routes))
    return Response(body, media_type="application/json")
