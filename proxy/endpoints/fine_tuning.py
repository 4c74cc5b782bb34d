"""OpenAI's fine-tuning API: POST/GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id},
POST .../{id}/cancel, GET .../{id}/events, GET .../{id}/checkpoints.

A job is a FineTuningWorkflow (orchestration/fine_tuning_workflow.py); its record and events live
in NATS (orchestration/fine_tuning_store.py), so reading a job never waits on Temporal. A job is its
tenant's alone: another tenant's id is a 404, as an unknown one.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.service import RPCError

from gatekeeping.admission import require_scopes
from gatekeeping.auth import Principal
from orchestration.fine_tuning_store import FineTuningStore
from orchestration.training.config import TrainingConfig
from proxy.http.body import read_json_body
from proxy.jobs.prepare import convert_request
from proxy.http.operations import error_responses, json_content, ok, parameter, schema_ref
from proxy.runtime import Runtime
from schemas.errors import InvalidRequest, NotFound, ServiceUnavailable
from schemas.fine_tuning import (
    FINE_TUNING_ENDPOINT,
    FINE_TUNING_WORKFLOW,
    TERMINAL,
    FineTuningInput,
    FineTuningJob,
    FineTuningJobCreate,
    Hyperparameters,
    JobRecord,
    Page,
    TrainingPlan,
)

DEFAULT_EPOCHS = 3
BASE_LEARNING_RATE = 1e-4
MAX_EPOCHS = 50
MAX_LIST = 100
CANCEL_WAIT_S = 20.0
_encoder = msgspec.json.Encoder()


@functools.cache
def _training() -> TrainingConfig:
    return TrainingConfig.from_env()


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


async def _context(request: Request) -> tuple[Runtime, FineTuningStore, Principal]:
    principal: Principal = request.state.principal
    require_scopes(principal, FINE_TUNING_ENDPOINT)
    rt: Runtime = request.app.state.runtime
    state = request.app.state
    if getattr(state, "fine_tuning_store", None) is None:
        lock = getattr(state, "fine_tuning_lock", None) or asyncio.Lock()
        state.fine_tuning_lock = lock
        async with lock:
            if getattr(state, "fine_tuning_store", None) is None:
                try:
                    state.fine_tuning_store = await FineTuningStore.open(rt.js, rt.settings.nats_replicas)
                except Exception:
                    raise ServiceUnavailable("The fine-tuning store is not available; please retry.",
                                             code="events_unavailable") from None
    return rt, state.fine_tuning_store, principal


def _plan(h: Hyperparameters, seed: int) -> tuple[Hyperparameters, TrainingPlan]:
    epochs = DEFAULT_EPOCHS if h.n_epochs == "auto" else h.n_epochs
    batch = 1 if h.batch_size == "auto" else h.batch_size
    multiplier = 1.0 if h.learning_rate_multiplier == "auto" else h.learning_rate_multiplier
    if not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise InvalidRequest(f"n_epochs must be from 1 to {MAX_EPOCHS}.", param="hyperparameters.n_epochs")
    if not isinstance(batch, int) or not 1 <= batch <= 256:
        raise InvalidRequest("batch_size must be from 1 to 256.", param="hyperparameters.batch_size")
    if not 0 < float(multiplier) <= 10:
        raise InvalidRequest("learning_rate_multiplier must be over 0 and at most 10.",
                             param="hyperparameters.learning_rate_multiplier")
    resolved = Hyperparameters(n_epochs=epochs, batch_size=batch, learning_rate_multiplier=float(multiplier))
    checkpoint_every = _training().checkpoint_every
    return resolved, TrainingPlan(n_epochs=epochs, batch_size=batch, learning_rate=BASE_LEARNING_RATE * float(multiplier),
                                  seed=seed, checkpoint_every=checkpoint_every)


def _hyperparameters(spec: FineTuningJobCreate) -> Hyperparameters:
    method = spec.method
    if method is None:
        return spec.hyperparameters or Hyperparameters()
    if method.get("type") != "supervised":
        raise InvalidRequest("Only the 'supervised' fine-tuning method is available.", param="method.type")
    raw = (method.get("supervised") or {}).get("hyperparameters") or {}
    try:
        return msgspec.convert(raw, Hyperparameters)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid hyperparameters: {exc}", param="method.supervised.hyperparameters") from None


async def create_job(request: Request) -> Response:
    rt, store, principal = await _context(request)
    raw = await read_json_body(request, 1024 * 1024)
    spec = convert_request(raw, FineTuningJobCreate)
    require_scopes(principal, FINE_TUNING_ENDPOINT, spec.model)
    entry = rt.catalog.get(spec.model)
    if entry is None or getattr(entry, "tenant", "") not in ("", principal.tenant):
        raise NotFound(f"The model '{spec.model}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    if entry.id not in _training().bases:
        raise InvalidRequest(f"The model '{spec.model}' cannot be fine-tuned here.", param="model",
                             code="model_not_available")
    files = rt.files
    if files is None:
        raise ServiceUnavailable("The file store is not available.", code="file_store_unavailable")
    for param, file_id in (("training_file", spec.training_file), ("validation_file", spec.validation_file)):
        if file_id is not None:
            try:
                await files.get(principal.tenant, file_id)
            except NotFound:
                raise InvalidRequest(f"File '{file_id}' does not exist.", param=param, code="invalid_file") from None
    seed = spec.seed if spec.seed is not None else secrets.randbelow(2**31)
    hyper, plan = _plan(_hyperparameters(spec), seed)
    token = secrets.token_hex(12)
    job_id = f"ftjob-{token}"
    fine_tuned_model = f"ft:{entry.id}:{principal.tenant}:{spec.suffix or ''}:{token[:8]}"
    now = int(time.time())
    job = FineTuningJob(id=job_id, created_at=now, model=entry.id, organization_id=principal.tenant,
                        status="validating_files", training_file=spec.training_file,
                        validation_file=spec.validation_file, hyperparameters=hyper, seed=seed,
                        metadata=spec.metadata, suffix=spec.suffix,
                        method={"type": "supervised", "supervised": {"hyperparameters": hyper}})
    await store.create(JobRecord(tenant=principal.tenant, job=job))
    inp = FineTuningInput(job_id=job_id, tenant=principal.tenant, model=entry.id, base_entry=entry,
                          training_file=spec.training_file, validation_file=spec.validation_file,
                          fine_tuned_model=fine_tuned_model, plan=plan, verification=spec.verification,
                          created_at=now, cpu_queue=rt.settings.workflow_queue)
    try:
        await rt.temporal.start_workflow(FINE_TUNING_WORKFLOW, inp, id=job_id, task_queue=rt.settings.workflow_queue)
    except RPCError:
        await store.kv.delete(store.key(principal.tenant, job_id))
        raise ServiceUnavailable("The fine-tuning job could not be started; please retry.",
                                 code="workflow_unavailable") from None
    return _json(job)


async def _record(request: Request) -> tuple[Runtime, FineTuningStore, JobRecord]:
    rt, store, principal = await _context(request)
    job_id = request.path_params["job_id"]
    record = await store.get(principal.tenant, job_id) if job_id.startswith("ftjob-") else None
    if record is None or record.tenant != principal.tenant:
        raise NotFound(f"No fine-tuning job found with id '{job_id}'.", param="fine_tuning_job_id",
                       code="fine_tuning_job_not_found")
    return rt, store, record


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST}.", param="limit")
    return int(raw)


def _page(items: list[Any], request: Request) -> Page:
    """Items in their listing order, after the one whose id is `after`, at most `limit`."""
    limit = _limit(request)
    after = request.query_params.get("after")
    if after:
        ids = [item.id for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return Page(data=page, has_more=len(items) > limit, first_id=page[0].id if page else None,
                last_id=page[-1].id if page else None)


async def list_jobs(request: Request) -> Response:
    _, store, principal = await _context(request)
    records = await store.list(principal.tenant)
    metadata = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    jobs = [r.job for r in records if all((r.job.metadata or {}).get(k) == v for k, v in metadata.items())]
    return _json(_page(jobs, request))


async def get_job(request: Request) -> Response:
    _, _, record = await _record(request)
    return _json(record.job)


async def cancel_job(request: Request) -> Response:
    rt, store, record = await _record(request)
    job = record.job
    if job.status in ("succeeded", "failed"):
        raise InvalidRequest(f"The job is {job.status}; only a job still in progress can be cancelled.",
                             param="fine_tuning_job_id", code="invalid_job_status")
    if job.status == "cancelled":
        return _json(job)
    try:
        await rt.temporal.get_workflow_handle(job.id).cancel()
    except RPCError:
        raise ServiceUnavailable("The cancel could not be sent; please retry.", code="workflow_unavailable") from None
    return _json((await _until_ended(store, record)).job)


async def _until_ended(store: FineTuningStore, record: JobRecord) -> JobRecord:
    """The record once the saga's compensations have run and it ended (or as it is after a wait)."""
    watcher = await store.kv.watch(store.key(record.tenant, record.job.id))
    try:
        async with asyncio.timeout(CANCEL_WAIT_S):
            async for entry in watcher:
                if entry is not None and entry.value:
                    record = msgspec.json.decode(entry.value, type=JobRecord)
                    if record.job.status in TERMINAL:
                        break
    except TimeoutError:
        pass
    finally:
        await watcher.stop()
    return record


async def list_events(request: Request) -> Response:
    _, store, record = await _record(request)
    events = list(reversed(await store.events(record.job.id)))  # newest first, as OpenAI lists them
    return _json(_page(events, request))


async def list_checkpoints(request: Request) -> Response:
    _, _, record = await _record(request)
    return _json(_page(list(reversed(record.checkpoints)), request))


ROUTES = [
    Route(FINE_TUNING_ENDPOINT, create_job, methods=["POST"]),
    Route(FINE_TUNING_ENDPOINT, list_jobs, methods=["GET"]),
    Route(FINE_TUNING_ENDPOINT + "/{job_id}", get_job, methods=["GET"]),
    Route(FINE_TUNING_ENDPOINT + "/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route(FINE_TUNING_ENDPOINT + "/{job_id}/events", list_events, methods=["GET"]),
    Route(FINE_TUNING_ENDPOINT + "/{job_id}/checkpoints", list_checkpoints, methods=["GET"]),
]


def _page_of(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["object", "data", "has_more"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": schema_ref(item)},
        "has_more": {"type": "boolean"}, "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]}}}


_JOB_ID = parameter("job_id", "path", "The fine-tuning job's id (`ftjob-...`).")
_PAGE = [parameter("after", "query", "An id: the page starts after it."),
         parameter("limit", "query", "Page size.", {"type": "integer", "minimum": 1, "maximum": MAX_LIST,
                                                    "default": 20})]
_TAG = ["fine-tuning"]
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", FINE_TUNING_ENDPOINT): {
        "tags": _TAG, "summary": "Create a fine-tuning job (validate → train → verify → hot swap)",
        "requestBody": {"required": True, "content": json_content("FineTuningJobCreate")},
        "responses": {"200": ok("The job, `validating_files`.", json_content("FineTuningJob")),
                      **error_responses(400, 401, 403, 404, 503)}},
    ("GET", FINE_TUNING_ENDPOINT): {
        "tags": _TAG, "summary": "List the caller's fine-tuning jobs, newest first", "parameters": _PAGE,
        "responses": {"200": ok("A page of jobs.", {"application/json": {"schema": _page_of("FineTuningJob")}}),
                      **error_responses(400, 401, 403, 503)}},
    ("GET", FINE_TUNING_ENDPOINT + "/{job_id}"): {
        "tags": _TAG, "summary": "A fine-tuning job", "parameters": [_JOB_ID],
        "responses": {"200": ok("The job.", json_content("FineTuningJob")), **error_responses(401, 403, 404, 503)}},
    ("POST", FINE_TUNING_ENDPOINT + "/{job_id}/cancel"): {
        "tags": _TAG, "summary": "Cancel a fine-tuning job (its compensations run)", "parameters": [_JOB_ID],
        "responses": {"200": ok("The job, `cancelled`.", json_content("FineTuningJob")),
                      **error_responses(400, 401, 403, 404, 503)}},
    ("GET", FINE_TUNING_ENDPOINT + "/{job_id}/events"): {
        "tags": _TAG, "summary": "A fine-tuning job's events, newest first", "parameters": [_JOB_ID, *_PAGE],
        "responses": {"200": ok("A page of events.", {"application/json": {"schema": _page_of("FineTuningJobEvent")}}),
                      **error_responses(400, 401, 403, 404, 503)}},
    ("GET", FINE_TUNING_ENDPOINT + "/{job_id}/checkpoints"): {
        "tags": _TAG, "summary": "A fine-tuning job's checkpoints, newest first", "parameters": [_JOB_ID, *_PAGE],
        "responses": {"200": ok("A page of checkpoints.",
                                {"application/json": {"schema": _page_of("FineTuningJobCheckpoint")}}),
                      **error_responses(400, 401, 403, 404, 503)}},
}
