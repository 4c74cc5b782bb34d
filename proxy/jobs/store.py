"""Jobs: starting a job's workflow (with idempotency keys) and reading its state back.

Temporal is the system of record (status, attempts, times); JetStream holds the events (tokens,
usage, errors). Both answer with no worker running.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import structlog
from temporalio.api.enums.v1.workflow_pb2 import PENDING_ACTIVITY_STATE_STARTED
from temporalio.client import WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.common import (
    Priority,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nats.errors import Error as NatsError, NoRespondersError

from orchestration.cancels import cancel_subject
from orchestration.offers import dispatch_subject, withdraw_subject
from orchestration.telemetry import trace_headers
from orchestration.objectstore import request_key
from orchestration.streams import last_event
from schemas.errors import APIError, NotFound, ServiceUnavailable
from proxy.runtime import Runtime
from proxy.http.sse import frame_id
from schemas.catalog import ModelEntry
from schemas.events import Cancelled, Delta, Failed, Finished
from schemas.endpoints import spec_of
from schemas.jobs import INFERENCE_WORKFLOW, Dispatch, DispatchReply, WorkflowInput
from schemas.resources import JobView
from schemas.openai import ErrorBody

TENANT = SearchAttributeKey.for_keyword("SwitchyardTenant")
ENDPOINT = SearchAttributeKey.for_keyword("SwitchyardEndpoint")  # so a key's listing filters on its scopes
MODEL = SearchAttributeKey.for_keyword("SwitchyardModel")
SEARCH_ATTRIBUTES = {"SwitchyardTenant": "Keyword", "SwitchyardEndpoint": "Keyword", "SwitchyardModel": "Keyword"}
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
log = structlog.get_logger("switchyard.proxy")
_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(DispatchReply)
DISPATCH_WAIT_S = 1.0


class IdempotencyConflict(APIError):
    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


def new_job_id(tenant: str, idempotency_key: str | None, fresh: str, prefix: str = "chatcmpl-") -> str:
    """`prefix` carries its separator (schemas.endpoints.EndpointSpec.id_prefix)."""
    if not idempotency_key:
        return f"{prefix}{fresh}"
    digest = hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()[:32]
    return f"{prefix}{digest}"


def body_hash(endpoint: str, raw: dict[str, Any]) -> str:
    return hashlib.sha256(endpoint.encode() + b"\x00" + _encoder.encode(raw)).hexdigest()


class JobMemo(msgspec.Struct, omit_defaults=True):
    tenant: str
    endpoint: str
    model: str
    created: int
    body_hash: str
    stream: bool = False
    include_usage: bool = False
    metadata: dict[str, str] = {}
    webhook_url: str = ""
    pii: dict[str, int] = {}  # PII found and masked, by kind
    stages: list[str] = []  # a pipeline's stages, in order
    stage: str = ""  # the pipeline stage running now (upserted by the workflow)


async def start_job(rt: Runtime, inp: WorkflowInput, model: ModelEntry, memo: JobMemo,
                    direct: bool = False) -> bool:
    """Starts the job; False when an idempotent repeat of an existing job (same tenant, same body),
    and then `memo.created` is set to the existing job's, so a repeat answers with the same object.

    `direct`: offer the generation to a worker first (orchestration.dispatch), so the engine call
    starts while the workflow is being started. The workflow has no execution timeout: every stage
    is bounded by its own timeouts, and a job always runs its ending (terminal event, settlement,
    webhook)."""
    job_id = inp.inference.job_id
    try:
        inp = await claim_check(rt, inp)
    except BaseException:
        await release_admission(rt, inp)
        raise
    if direct and not inp.then and not inp.inference.body_ref:
        inp = await offer_run(rt, inp)
    try:
        return await _start_workflow(rt, inp, model, memo)
    except BaseException:
        if inp.dispatched_to:
            await rt.nc.publish(withdraw_subject(job_id), b"")
        raise


def goes_direct(headers, endpoint: str) -> bool:
    """Whether a new job's generation is offered to a worker before its workflow starts. Not with an
    Idempotency-Key: the workflow start is what tells a repeat, and it must come first."""
    return headers.get("idempotency-key") is None and spec_of(endpoint).work in ("chat", "completion", "responses")


async def offer_run(rt: Runtime, inp: WorkflowInput) -> WorkflowInput:
    """Offers the generation to the workers of the model's queue; the input names the adopting
    worker's queue when one took it, and is unchanged when none could (the job then waits in
    Temporal's queue: backpressure by pull)."""
    job_id = inp.inference.job_id
    try:
        reply = await rt.nc.request(dispatch_subject(inp.task_queue), _encoder.encode(Dispatch(inp.inference, trace_headers())),
                                    timeout=DISPATCH_WAIT_S)
        queue = _reply_decoder.decode(reply.data).queue
    except NoRespondersError:
        return inp
    except (TimeoutError, msgspec.DecodeError, NatsError):
        await rt.nc.publish(withdraw_subject(job_id), b"")  # a worker may have taken it late
        return inp
    return msgspec.structs.replace(inp, dispatched_to=queue) if queue else inp


async def _start_workflow(rt: Runtime, inp: WorkflowInput, model: ModelEntry, memo: JobMemo) -> bool:
    job_id = inp.inference.job_id
    try:
        await rt.temporal.start_workflow(
            INFERENCE_WORKFLOW, inp, id=job_id, task_queue=rt.settings.workflow_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes([SearchAttributePair(TENANT, memo.tenant),
                                                     SearchAttributePair(ENDPOINT, memo.endpoint),
                                                     SearchAttributePair(MODEL, memo.model)]),
            memo=msgspec.to_builtins(memo),
            priority=Priority(priority_key=inp.priority) if inp.priority else Priority.default)
        return True
    except WorkflowAlreadyStartedError:
        await release_admission(rt, inp)  # a repeat runs nothing: its reservation goes back
        existing = await _memo_of(rt, job_id)
        if existing is None or existing.tenant != memo.tenant or existing.body_hash != memo.body_hash:
            raise IdempotencyConflict("This Idempotency-Key was already used with a different request.",
                                      param="Idempotency-Key") from None
        memo.created = existing.created
        return False
    except Exception as exc:
        await release_admission(rt, inp)
        log.error("workflow_start_failed", error_type=type(exc).__name__)
        raise ServiceUnavailable("The job could not be started; please retry.",
                                 code="orchestrator_unavailable") from None


async def release_admission(rt: Runtime, inp: WorkflowInput) -> None:
    """Gives an admitted job's reservation back when it will not run."""
    if inp.admission is not None and rt.limiter is not None:
        from gatekeeping.buckets import Admission

        await rt.limiter.settle(msgspec.convert(inp.admission, Admission), 0)


async def claim_check(rt: Runtime, inp: WorkflowInput) -> WorkflowInput:
    """A request body over the claim-check threshold goes to the object store; the workflow input
    carries its reference (Temporal refuses payloads over 2 MB and keeps every one in history)."""
    inference = inp.inference
    if inference.body_ref or not inference.body:
        return inp
    data = _encoder.encode(inference.body)
    if len(data) <= rt.claim_check_bytes:
        return inp
    try:
        key = request_key(inference.job_id, hashlib.sha256(data).hexdigest()[:16])
        assert rt.objects is not None, "the runtime opens its object store at start"
        ref = await rt.objects.put(key, data)
    except Exception as exc:
        log.error("object_store_put_failed", error_type=type(exc).__name__)
        raise ServiceUnavailable("The object store is unavailable; please retry.",
                                 code="object_store_unavailable") from None
    return msgspec.structs.replace(inp, inference=msgspec.structs.replace(inference, body={}, body_ref=ref))


async def _memo_of(rt: Runtime, job_id: str) -> JobMemo | None:
    try:
        desc = await rt.temporal.get_workflow_handle(job_id).describe()
        return msgspec.convert(await desc.memo(), JobMemo)
    except Exception:
        return None


class Job(msgspec.Struct):
    view: JobView
    memo: JobMemo


async def load_job(rt: Runtime, job_id: str, tenant: str) -> Job:
    """The job as its tenant sees it; any other tenant (or no such job) gets the same 404."""
    desc = await _describe_owned(rt, job_id, tenant,
                                 NotFound(f"No job found with id '{job_id}'.", code="job_not_found"))
    memo = msgspec.convert(await desc.memo(), JobMemo)
    return Job(await _view(rt, job_id, desc, memo), memo)


async def _describe_owned(rt: Runtime, job_id: str, tenant: str,
                          not_found: NotFound) -> WorkflowExecutionDescription:
    """The job's workflow description; `not_found` for a bad id, no such job, or another tenant's."""
    if not _JOB_ID.match(job_id):
        raise not_found
    try:
        desc = await rt.temporal.get_workflow_handle(job_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise not_found from None
        raise ServiceUnavailable("Job state is unavailable; please retry.", code="orchestrator_unavailable") from None
    if desc.typed_search_attributes.get(TENANT) != tenant:
        raise not_found
    return desc


async def _view(rt: Runtime, job_id: str, desc: WorkflowExecutionDescription, memo: JobMemo) -> JobView:
    event = await last_event(rt.js, job_id)
    pending = list(desc.raw_description.pending_activities)
    started = any(pa.state == PENDING_ACTIVITY_STATE_STARTED for pa in pending)
    attempts = max([pa.attempt for pa in pending] + [event.attempt if event else 0])
    s = desc.status
    view = JobView(id=job_id, endpoint=memo.endpoint, model=memo.model, status="queued", stage="queued",
                   created_at=memo.created, attempts=attempts, metadata=memo.metadata, pii=memo.pii,
                   stages=memo.stages,
                   last_event_id=frame_id(event.seq) if event else 0,
                   result_url=f"/v1/jobs/{job_id}/result", events_url=f"/v1/jobs/{job_id}/events")
    if event is not None:
        view.started_at = int(desc.start_time.timestamp())
    if isinstance(event, Delta):
        view.tokens = event.total
    # Once its Finished event is stored the job has succeeded (its result is served from then on);
    # the workflow closes a few ms later.
    closing = s == WorkflowExecutionStatus.RUNNING and isinstance(event, Finished)
    if s == WorkflowExecutionStatus.RUNNING and not closing:
        if started or (event is not None and attempts > 0):
            view.status, view.stage = "running", memo.stage or "inference"
        return view
    view.stage = "done"
    view.finished_at = (int(desc.close_time.timestamp()) if desc.close_time
                        else int(time.time()) if closing else None)
    if s == WorkflowExecutionStatus.COMPLETED or closing:
        view.status = "succeeded"
        if isinstance(event, Finished):
            view.usage, view.finish_reason, view.tokens = event.usage, event.finish_reason, event.usage.completion_tokens
    elif s == WorkflowExecutionStatus.CANCELED or isinstance(event, Cancelled):
        view.status = "cancelled"
    else:
        view.status = "failed"
        if isinstance(event, Failed):
            view.error = event.error
        elif s == WorkflowExecutionStatus.TERMINATED:
            view.error = ErrorBody(message="The job was stopped: no worker picked it up in time.",
                                   type="server_error", code="no_capacity")
        else:
            view.error = ErrorBody(message="The job did not finish in time.", type="server_error",
                                   code="job_timeout")
    return view


async def cancel_job(rt: Runtime, job_id: str) -> None:
    await rt.nc.publish(cancel_subject(job_id), b"")
    try:
        await rt.temporal.get_workflow_handle(job_id).cancel()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


class ScanBudget:
    """What one listing may read of Temporal's visibility store: `entries` workflow entries, over at
    most `queries` queries (a window's count and its list are one each)."""

    def __init__(self, entries: int, queries: int):
        self.entries, self.queries = entries, queries


MIN_SPAN = timedelta(milliseconds=1)


async def list_jobs(rt: Runtime, tenant: str, limit: int, after: str | None,
                    budget: ScanBudget | None = None, scope: str = "") -> tuple[list[str], bool]:
    """The tenant's jobs, newest first, and whether more may follow. Temporal's visibility store cannot
    sort by start time, so this walks back in time windows (1 h, then 4x wider each step), sorting each
    window's jobs itself. A window is counted first and narrowed while it holds more jobs than the
    budget has left; when the budget is spent the page ends early with `has_more`. `scope`: a visibility
    clause ANDed in (serving_jobs.scope_clause: the key's endpoints and models)."""
    if budget is None:
        budget = ScanBudget(rt.settings.reads.list_scan, rt.settings.reads.list_queries)
    if not re.match(r"^[A-Za-z0-9._-]+$", tenant):
        return [], False
    upper = datetime.now(timezone.utc) + timedelta(seconds=5)
    if after:
        desc = await _describe_owned(rt, after, tenant, NotFound(
            f"No job found with id '{after}'.", param="after", code="job_not_found"))
        upper = desc.start_time
    oldest = upper - timedelta(days=31)
    span = timedelta(hours=1)
    found: list[tuple[datetime, str]] = []
    while len(found) <= limit and upper > oldest:
        if budget.queries < 2:
            return [job_id for _, job_id in found[:limit]], True
        lower = max(oldest, upper - span)
        query = (f"SwitchyardTenant = '{tenant}' AND WorkflowType = '{INFERENCE_WORKFLOW}' "
                 f"AND StartTime < '{upper.isoformat()}' AND StartTime >= '{lower.isoformat()}'{scope}")
        budget.queries -= 1
        count = (await rt.temporal.count_workflows(query)).count
        if count > budget.entries:
            if span <= MIN_SPAN:  # more jobs started within a millisecond than one call may read
                return [job_id for _, job_id in found[:limit]], True
            span = max(MIN_SPAN, min(span / 4, span * (budget.entries / (2 * count))))
            continue
        if count:
            budget.queries -= 1
            window = [(wf.start_time, wf.id) async for wf in rt.temporal.list_workflows(
                query, limit=max(1, budget.entries), page_size=min(1000, max(1, budget.entries)))
                if wf.workflow_type == INFERENCE_WORKFLOW]
            budget.entries -= len(window)
            found += sorted(window, reverse=True)
        upper, span = lower, span * 4
    return [job_id for _, job_id in found[:limit]], len(found) > limit


def etag_of(view: JobView) -> str:
    return '"' + hashlib.sha256(_encoder.encode(view)).hexdigest()[:20] + '"'


def prefers_async(request) -> bool:
    """RFC 7240 `Prefer: respond-async`."""
    prefer = request.headers.get("prefer", "")
    return any(p.strip().split("=")[0].lower() == "respond-async" for p in prefer.split(","))


async def accepted_response(rt: Runtime, job_id: str, tenant: str, prefer_applied: bool = False):
    from starlette.responses import Response

    job = await load_job(rt, job_id, tenant)
    headers = {"location": f"/v1/jobs/{job_id}", "x-job-id": job_id, "retry-after": "1",
               "etag": etag_of(job.view)}
    if prefer_applied:
        headers["preference-applied"] = "respond-async"
    return Response(_encoder.encode(job.view), status_code=202, media_type="application/json",
                    headers=headers)
