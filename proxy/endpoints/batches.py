"""The Batch API: POST/GET /v1/batches, GET /v1/batches/{batch_id}, POST /v1/batches/{batch_id}/cancel.

A batch is a BatchWorkflow (orchestration/batch_workflow.py); its status and request counts are read
from NATS KV (orchestration/batch_store.py), so these routes answer with no worker running. A batch
is its tenant's alone: another tenant's id is a 404, as an unknown one."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gatekeeping.admission import require_scopes
from gatekeeping.auth import Principal
from orchestration.batch_store import MAX_LIST_LIMIT, BatchStore
from proxy.batches.service import BatchService
from proxy.endpoints.registry import JSON_ENDPOINTS
from proxy.http.body import read_json_body
from proxy.http.operations import error_responses, json_content, ok, parameter
from proxy.jobs.prepare import convert_request
from proxy.runtime import Runtime
from schemas.batches import (
    BATCH_CANCEL_SIGNAL,
    BATCH_WORKFLOW,
    BATCHES_ENDPOINT,
    COMPLETION_WINDOWS,
    Batch,
    BatchCreate,
    BatchInput,
)
from schemas.errors import Conflict, InvalidRequest, ServiceUnavailable
from schemas.jobs import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, EMBEDDINGS_ENDPOINT

RESPONSES_ENDPOINT = "/v1/responses"
# The endpoints a batch may target: OpenAI's, as far as this proxy serves them with a JSON body.
BATCH_ENDPOINTS = tuple(e for e in (CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, COMPLETIONS_ENDPOINT, RESPONSES_ENDPOINT)
                        if e in JSON_ENDPOINTS)
_encoder = msgspec.json.Encoder()


def _json(value: Any) -> Response:
    return Response(_encoder.encode(value), media_type="application/json")


def _service(request: Request) -> tuple[Runtime, BatchService, Principal]:
    principal: Principal = request.state.principal
    require_scopes(principal, BATCHES_ENDPOINT)
    rt: Runtime = request.app.state.runtime
    if rt.batches is None or rt.files is None:
        raise ServiceUnavailable("Batches are not available.", code="batches_unavailable")
    return rt, rt.batches, principal


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata and (len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
        raise InvalidRequest("metadata takes at most 16 keys of 64 characters, values of 512.", param="metadata")


async def create_batch(request: Request) -> Response:
    rt, service, principal = _service(request)
    spec = convert_request(await read_json_body(request, rt.settings.max_body_bytes), BatchCreate)
    if spec.endpoint not in BATCH_ENDPOINTS:
        raise InvalidRequest(f"Unsupported endpoint '{spec.endpoint}'. Supported: {', '.join(BATCH_ENDPOINTS)}.",
                             param="endpoint", code="unsupported_endpoint")
    require_scopes(principal, spec.endpoint)
    window_s = COMPLETION_WINDOWS.get(spec.completion_window)
    if window_s is None:
        raise InvalidRequest("completion_window must be '24h'.", param="completion_window", code="invalid_value")
    _check_metadata(spec.metadata)
    assert rt.files is not None
    file = await rt.files.get(principal.tenant, spec.input_file_id)  # another tenant's: 404
    if file.purpose != "batch":
        raise InvalidRequest(f"The file '{file.id}' has purpose '{file.purpose}'; a batch needs purpose 'batch'.",
                             param="input_file_id", code="invalid_file_purpose")
    now = int(time.time())
    batch = Batch(id=f"batch_{uuid.uuid4().hex}", endpoint=spec.endpoint, input_file_id=file.id,
                  completion_window=spec.completion_window, created_at=now, expires_at=now + window_s,
                  metadata=spec.metadata)
    settings = service.settings
    inp = BatchInput(batch_id=batch.id, tenant=principal.tenant, principal=msgspec.to_builtins(principal),
                     endpoint=spec.endpoint, input_file_id=file.id, expires_at=now + window_s,
                     window=settings.window, lines_per_run=settings.lines_per_run,
                     cpu_queue=rt.settings.workflow_queue)
    await service.store.create(principal.tenant, batch)
    try:
        await rt.temporal.start_workflow(BATCH_WORKFLOW, inp, id=batch.id, task_queue=rt.settings.workflow_queue)
    except Exception:
        await service.store.move(principal.tenant, batch.id, "failed")
        raise ServiceUnavailable("The batch could not be started; please retry.",
                                 code="orchestrator_unavailable") from None
    return _json(batch)


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.", param="limit",
                             code="invalid_value")
    return int(raw)


async def list_batches(request: Request) -> Response:
    _, service, principal = _service(request)
    q = request.query_params
    return _json(await service.store.listing(principal.tenant, after=q.get("after"), limit=_limit(q.get("limit"))))


async def retrieve_batch(request: Request) -> Response:
    _, service, principal = _service(request)
    return _json(await service.store.get(principal.tenant, request.path_params["batch_id"]))


async def cancel_batch(request: Request) -> Response:
    """Signals the workflow, which cancels the lines in flight and writes what finished; meanwhile
    the batch reads `cancelling`. Cancelling a cancelled or cancelling batch again is a no-op."""
    rt, service, principal = _service(request)
    store: BatchStore = service.store
    batch = await store.get(principal.tenant, request.path_params["batch_id"])
    if batch.status in ("cancelling", "cancelled"):
        return _json(batch)
    if batch.status not in ("validating", "in_progress"):
        raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.", code="batch_not_cancellable")
    try:
        await rt.temporal.get_workflow_handle(batch.id).signal(BATCH_CANCEL_SIGNAL)
    except Exception:
        raise ServiceUnavailable("The batch could not be cancelled; please retry.",
                                 code="orchestrator_unavailable") from None
    return _json(await store.move(principal.tenant, batch.id, "cancelling"))


ROUTES = [
    Route(BATCHES_ENDPOINT, create_batch, methods=["POST"]),
    Route(BATCHES_ENDPOINT, list_batches, methods=["GET"]),
    Route(BATCHES_ENDPOINT + "/{batch_id}", retrieve_batch, methods=["GET"]),
    Route(BATCHES_ENDPOINT + "/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]

_BATCH_ID = parameter("batch_id", "path", "The batch's id (`batch_...`).")
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", BATCHES_ENDPOINT): {
        "tags": ["batches"], "summary": "Create a batch from an uploaded `batch` file",
        "requestBody": {"required": True, "content": json_content("BatchCreate")},
        "responses": {"200": ok("The batch, validating.", json_content("Batch")),
                      **error_responses(400, 401, 403, 404, 503)},
    },
    ("GET", BATCHES_ENDPOINT): {
        "tags": ["batches"], "summary": "List the caller's batches, newest first",
        "parameters": [
            parameter("limit", "query", "Page size.", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT,
                                                       "default": 20}),
            parameter("after", "query", "A batch id: the page starts after it.", {"type": "string"})],
        "responses": {"200": ok("A page of batches.", json_content("BatchList")), **error_responses(400, 401, 403)},
    },
    ("GET", BATCHES_ENDPOINT + "/{batch_id}"): {
        "tags": ["batches"], "summary": "A batch: its status, request counts and files", "parameters": [_BATCH_ID],
        "responses": {"200": ok("The batch.", json_content("Batch")), **error_responses(401, 403, 404)},
    },
    ("POST", BATCHES_ENDPOINT + "/{batch_id}/cancel"): {
        "tags": ["batches"], "summary": "Cancel a batch: lines in flight are cancelled, finished ones kept",
        "parameters": [_BATCH_ID],
        "responses": {"200": ok("The batch, cancelling (or already cancelled).", json_content("Batch")),
                      **error_responses(401, 403, 404, 409, 503)},
    },
}
