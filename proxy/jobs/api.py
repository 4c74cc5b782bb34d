"""The jobs API: create, status, events (resumable SSE), result, cancel, list."""

from __future__ import annotations

import fnmatch
from typing import Any, AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gatekeeping.auth import Principal
from proxy.http.body import read_json_body
from proxy.jobs.prepare import convert_request
from proxy.jobs.render import ChunkWriter, terminal_error
from schemas.errors import APIError, InvalidRequest, NotFound, ServiceUnavailable
from schemas.resources import JobCreate, JobList, Webhook
from proxy.jobs.store import (Job, JobView, ScanBudget, etag_of, list_jobs, load_job,
                        release_admission)
from proxy.jobs.relay import EventFeed, parse_event_id
from proxy.jobs.run import JobRun, json_response
from proxy.runtime import Runtime
from proxy.endpoints.registry import JOB_ENDPOINTS, creatable, endpoint_of
from gatekeeping.readlimits import read_limited, stream_limited
from proxy.jobs.results import result_events
from proxy.http.sse import CHUNK, KEEPALIVE, LIFECYCLE, Part, SSEResponse, frame_id, render, resume_seq
from orchestration.webhooks import WebhookTargetError, check_target, parse_secret
from orchestration.model_registry import CatalogView
from schemas.catalog import Catalog
from schemas.events import (JOB_CANCELLED, JOB_FAILED, JOB_RESTARTED, JOB_RUNNING, JOB_SUCCEEDED, Cancelled, Delta,
                            Failed, Finished, JobEvent, Restarted, Started)

_encoder = msgspec.json.Encoder()


async def _check_webhook(rt: Runtime, webhook: Webhook) -> None:
    try:
        parse_secret(webhook.secret)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid webhook secret: {exc}.", param="webhook.secret") from None
    if len(webhook.url) > 2048:
        raise InvalidRequest("The webhook url is too long.", param="webhook.url")
    try:
        await check_target(webhook.url, rt.settings.webhook_allow)
    except WebhookTargetError as exc:
        raise InvalidRequest(f"Webhook target refused: {exc}.", param="webhook.url",
                             code="webhook_target_refused") from None


def _job_json(view: JobView, status: int = 200, extra: dict[str, str] | None = None) -> Response:
    headers = {"etag": etag_of(view), "x-job-id": view.id, **(extra or {})}
    if not view.finished:
        headers["retry-after"] = "1"
    return Response(_encoder.encode(view), status_code=status, media_type="application/json", headers=headers)


async def create_job(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    raw = await read_json_body(request, rt.settings.max_body_bytes)
    spec = convert_request(raw, JobCreate)
    endpoint = creatable(spec.endpoint)
    prepare = endpoint.prepare
    assert prepare is not None
    if len(spec.metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in spec.metadata.items()):
        raise InvalidRequest("metadata takes at most 16 keys of 64 characters, values of 512.", param="metadata")
    if spec.webhook is not None:
        await _check_webhook(rt, spec.webhook)
    job = prepare(rt, request.state.principal, spec.body, request.headers.get("idempotency-key"),
                  spec.metadata, spec.webhook.url if spec.webhook else "")
    run = JobRun(rt, request, job)
    await run.admit(endpoint.keep)
    if spec.webhook is not None:
        try:
            await rt.webhook_secrets.put(job.job_id, spec.webhook.secret.encode())
        except Exception:
            await release_admission(rt, run.job.inp)
            raise ServiceUnavailable("The webhook secret could not be stored; please retry.",
                                     code="events_unavailable") from None
    return await run.start_in_background(prefer_applied=False)


def scope_clause(principal: Principal, catalog: Catalog | CatalogView) -> str | None:
    """The visibility clause keeping a listing to the key's endpoint and model globs (expanded over the
    job endpoints and the catalog): "" for a key that sees every job, None for one that sees none."""
    clause = ""
    for attribute, globs, values in (("SwitchyardEndpoint", principal.endpoints, JOB_ENDPOINTS),
                                     ("SwitchyardModel", principal.models, [m.id for m in catalog.models])):
        if "*" in globs:
            continue
        allowed = [v for v in values if any(fnmatch.fnmatchcase(v, g) for g in globs)]
        if not allowed:
            return None
        quoted = ", ".join(f"'{v}'" for v in allowed)  # endpoints and catalog ids hold no quotes
        clause += f" AND {attribute} IN ({quoted})"
    return clause


def _scope_of(job: Job) -> tuple[str, str]:
    return job.memo.endpoint, job.memo.model


async def _job(request: Request, job_id: str | None = None, param: str | None = None) -> Job:
    """The job, if it is the caller's tenant's and within its key's scopes; else 404, as if it did not exist."""
    rt: Runtime = request.app.state.runtime
    if job_id is None:
        job_id = request.state.job_id = request.path_params["job_id"]
    principal = request.state.principal
    not_found = NotFound(f"No job found with id '{job_id}'.", param=param, code="job_not_found")
    try:
        job = await load_job(rt, job_id, principal.tenant)
    except NotFound:
        raise not_found from None
    if not principal.sees_job(*_scope_of(job)):
        raise not_found
    return job


async def get_job(request: Request) -> Response:
    job = await _job(request)
    etag = etag_of(job.view)
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        headers = {"etag": etag}
        if not job.view.finished:
            headers["retry-after"] = "1"
        return Response(status_code=304, headers=headers)
    return _job_json(job.view)


async def cancel(request: Request) -> Response:
    from proxy.jobs.store import cancel_job

    job = await _job(request)
    if not job.view.finished:
        await cancel_job(request.app.state.runtime, job.view.id)
    return _job_json(job.view, extra={"cancel-requested": "false" if job.view.finished else "true"})


@read_limited
async def result(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    job = await _job(request)
    endpoint = endpoint_of(job.memo.endpoint)
    chunks = endpoint.chunk_writer(job.view.id, job.memo.model, job.memo.created, False)
    assembler = endpoint.assembler(chunks)
    # The result is there once its event is, a moment before the workflow itself closes.
    events = await result_events(rt, job.view.id, job.memo.endpoint)
    if not job.view.finished and not any(isinstance(e, Finished) for e in events):
        raise APIError(f"Job '{job.view.id}' has not finished (status: {job.view.status}).", status=409,
                       type="invalid_request_error", code="job_not_finished", headers={"retry-after": "1"})
    respond = endpoint.respond or json_response
    for event in events:
        completion = assembler.add(event)
        if completion is not None:
            return await respond(rt, completion, {"x-job-id": job.view.id})
    if job.view.error is not None:
        raise APIError(job.view.error.message, status=503 if job.view.error.code == "no_capacity" else 500,
                       type=job.view.error.type, code=job.view.error.code)
    raise APIError("The job was cancelled.", status=409, type="invalid_request_error", code="job_cancelled")


@read_limited
async def list_all(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("limit must be an integer.", param="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")
    principal = request.state.principal
    views: list[JobView] = []
    has_more = False
    budget = ScanBudget(rt.settings.reads.list_scan, rt.settings.reads.list_queries)  # for the whole call
    after = request.query_params.get("after")
    if after:
        await _job(request, after, param="after")
    scope = scope_clause(principal, rt.catalog)
    while scope is not None:  # pages of the tenant's jobs within the key's scopes
        ids, has_more = await list_jobs(rt, principal.tenant, limit, after, budget, scope)
        for i in ids:
            job = await load_job(rt, i, principal.tenant)
            if not principal.sees_job(*_scope_of(job)):
                continue
            if len(views) == limit:
                has_more = True
                break
            views.append(job.view)
        if len(views) == limit or not has_more or not ids:
            break
        after = ids[-1]
    body = JobList(data=views, has_more=has_more, first_id=views[0].id if views else None,
                   last_id=views[-1].id if views else None)
    return Response(_encoder.encode(body), media_type="application/json")


@stream_limited
async def events(request: Request) -> SSEResponse:
    rt: Runtime = request.app.state.runtime
    job = await _job(request)
    after_id = parse_event_id(request.headers.get("last-event-id") or request.query_params.get("after") or "0")
    feed = await EventFeed.open(rt.js, job.view.id, after_seq=resume_seq(after_id))
    chunks = endpoint_of(job.memo.endpoint).chunk_writer(job.view.id, job.memo.model, job.memo.created, True,
                                                         after_id)
    return SSEResponse(_job_stream(feed, chunks, rt.settings.keepalive_s, job.view),
                       {"x-job-id": job.view.id}, on_close=feed.close)


def lifecycle(event: Started | Restarted | Finished | Failed | Cancelled) -> tuple[str, dict[str, Any]]:
    """A lifecycle event's name and body, the same on the SSE stream and over the WebSocket."""
    if isinstance(event, Finished):
        return JOB_SUCCEEDED, {"status": "succeeded", "finish_reason": event.finish_reason, "usage": event.usage}
    if isinstance(event, Started):
        running = {"status": "running", "attempt": event.attempt, "resumed_from": frame_id(event.resumed_from)}
        if event.stage:
            running["stage"] = event.stage
        return JOB_RUNNING, running
    if isinstance(event, Restarted):
        return JOB_RESTARTED, {"status": "running", "attempt": event.attempt, "reason": event.reason}
    if isinstance(event, Cancelled):
        return JOB_CANCELLED, {"status": "cancelled", "reason": event.reason}
    return JOB_FAILED, {"status": "failed", "error": terminal_error(event).body()}


def job_parts(event: JobEvent, chunks: ChunkWriter) -> list[Part]:
    """The jobs stream: chunk events unnamed (as OpenAI's), lifecycle events named `job.*`."""
    if isinstance(event, Delta):
        return [(CHUNK, None, chunks.delta_chunk(event))]
    named = _named(*lifecycle(event))
    if isinstance(event, Finished):
        return chunks.finish_parts(event) + [named]
    return [named]


def _named(name: str, body: Any) -> Part:
    return LIFECYCLE, name.encode(), _encoder.encode(body)


async def _job_stream(feed: EventFeed, chunks: ChunkWriter, keepalive_s: float,
                      view: JobView) -> AsyncIterator[bytes]:
    while True:
        try:
            batch = await feed.next_batch(timeout=keepalive_s)
        except TimeoutError:
            if view.finished and view.error is not None and view.last_event_id <= frame_id(feed.last_seq):
                # Ended without a terminal event of its own (stopped before any worker took it).
                yield render(feed.last_seq + 1, [_named(JOB_FAILED, {"status": "failed", "error": view.error})])
                return
            yield KEEPALIVE
            continue
        out = b"".join(render(e.seq, job_parts(e, chunks), chunks.after_id) for e in batch)
        if out:
            yield out
        if feed.ended:
            return
