"""The routes of a response after its creation: retrieve (and resume its stream after any sequence
number, on any replica), cancel, delete, and list its input items. Another tenant's id, a deleted
one and one stored with `store: false` are all the same 404."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from gatekeeping.readlimits import read_limited, stream_limited
from proxy.http.operations import error_responses, json_content, ok, parameter
from proxy.http.sse import KEEPALIVE, SSEResponse
from proxy.jobs.relay import EventFeed
from proxy.jobs.store import Job, cancel_job
from proxy.responses.render import ResponseBuilder, ResponsesWriter, sse_frames
from proxy.responses.store import built, job_events, load_response_job, mark_deleted, shell_of
from proxy.runtime import Runtime
from schemas.errors import InvalidRequest
from schemas.responses import DeletedResponse, InputItemList, Response

_encoder = msgspec.json.Encoder()
CANCEL_WAIT_S = 5.0  # for the job's own cancelled event, so the answer says "cancelled"


def _json(value: Any) -> HTTPResponse:
    return HTTPResponse(_encoder.encode(value), media_type="application/json")


def current(job: Job, builder: ResponseBuilder) -> Response:
    """The Response now: its final form once its job ended, else queued or in progress."""
    if builder.final is not None:
        return builder.final
    view = job.view
    if view.finished and view.error is not None:  # ended with no terminal event (nobody took it)
        builder.fail(view.error)
        assert builder.final is not None
        return builder.final
    return builder.response("queued" if view.status == "queued" else "in_progress")


async def _load(request: Request) -> tuple[Runtime, Job, Response]:
    rt: Runtime = request.app.state.runtime
    response_id = request.state.job_id = request.path_params["response_id"]
    job, record = await load_response_job(rt, response_id, request.state.principal.tenant)
    return rt, job, shell_of(job, record)


async def retrieve(request: Request) -> HTTPResponse | SSEResponse:
    if request.query_params.get("stream", "").lower() == "true":
        return await _resume(request)
    return await _retrieve(request)


@read_limited
async def _retrieve(request: Request) -> HTTPResponse:
    rt, job, shell = await _load(request)
    return _json(current(job, built(shell, await job_events(rt, job.view.id))))


def _starting_after(request: Request) -> int:
    raw = request.query_params.get("starting_after") or request.headers.get("last-event-id")
    if raw is None:
        return -1
    try:
        value = int(raw)
    except ValueError:
        value = -2
    if not -1 <= value < 2 ** 53:
        raise InvalidRequest("'starting_after' must be a sequence number (an integer >= 0).",
                             param="starting_after", code="invalid_value")
    return value


@stream_limited
async def _resume(request: Request) -> SSEResponse:
    """The response's events after `starting_after` (or `Last-Event-ID`), then live until it ends:
    the job's events are replayed from the first, so the numbers are the ones first sent."""
    after = _starting_after(request)
    rt, job, shell = await _load(request)
    feed = await EventFeed.open(rt.js, job.view.id)
    writer = ResponsesWriter(job.view.id, job.memo.model, job.memo.created, False, after)
    writer.shell = shell
    return SSEResponse(_follow(feed, writer, rt.settings.keepalive_s, job), {"x-job-id": job.view.id},
                       on_close=feed.close)


async def _follow(feed: EventFeed, writer: ResponsesWriter, keepalive_s: float, job: Job) -> AsyncIterator[bytes]:
    while True:
        try:
            batch = await feed.next_batch(timeout=keepalive_s)
        except TimeoutError:
            if job.view.finished and job.view.error is not None and writer.builder.final is None:
                yield sse_frames(writer.builder.fail(job.view.error), writer.after_id)
                return
            yield KEEPALIVE
            continue
        out = b"".join(writer.frames(e) for e in batch)
        if out:
            yield out
        if feed.ended:
            return


async def cancel(request: Request) -> HTTPResponse:
    """Cancels the response's job (idempotent) and answers with the Response: `cancelled` once its
    job has ended so; a response that had already ended answers as it ended."""
    rt, job, shell = await _load(request)
    if not job.view.finished:
        await cancel_job(rt, job.view.id)
        await _wait_ended(rt, job.view.id, CANCEL_WAIT_S)
    return _json(current(job, built(shell, await job_events(rt, job.view.id))))


async def _wait_ended(rt: Runtime, job_id: str, seconds: float) -> None:
    feed = await EventFeed.open(rt.js, job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while not feed.ended and deadline > loop.time():
            await feed.next_batch(timeout=deadline - loop.time())
    except TimeoutError:
        pass
    finally:
        await feed.close()


async def delete(request: Request) -> HTTPResponse:
    rt, job, _ = await _load(request)
    await mark_deleted(rt, job.view.id)
    return _json(DeletedResponse(id=job.view.id))


@read_limited
async def list_input_items(request: Request) -> HTTPResponse:
    rt: Runtime = request.app.state.runtime
    response_id = request.state.job_id = request.path_params["response_id"]
    _, record = await load_response_job(rt, response_id, request.state.principal.tenant)
    items = list(record.input) if record is not None else []
    q = request.query_params
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit", code="invalid_value")
    if order == "desc":
        items.reverse()
    after = q.get("after")
    if after:
        ids = [getattr(i, "id", None) for i in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}'.", param="after", code="invalid_value")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return _json(InputItemList(data=page, first_id=page[0].id if page else None,
                               last_id=page[-1].id if page else None, has_more=len(items) > limit))


ROUTES = (
    Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
)

_ID = parameter("response_id", "path", "The response's id (`resp_...`).")
_ERRORS = error_responses(400, 401, 404, 429, 503)
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/responses/{response_id}"): {
        "tags": ["responses"], "summary": "A response: its status and output; with `stream=true`, its events",
        "parameters": [_ID,
                       parameter("stream", "query", "`true`: the response's events as server-sent events, "
                                 "replayed from the start (or after `starting_after`) and followed live.",
                                 {"type": "boolean"}),
                       parameter("starting_after", "query", "With `stream=true`: the sequence number after "
                                 "which events are sent (as `Last-Event-ID`).", {"type": "integer", "minimum": 0})],
        "responses": {"200": ok("The Response, or its event stream.", {
            **json_content("Response"), "text/event-stream": {"schema": {"type": "string"}}}), **_ERRORS}},
    ("DELETE", "/v1/responses/{response_id}"): {
        "tags": ["responses"], "summary": "Delete a response (404 from then on)", "parameters": [_ID],
        "responses": {"200": ok("Deleted.", json_content({"type": "object"})), **_ERRORS}},
    ("POST", "/v1/responses/{response_id}/cancel"): {
        "tags": ["responses"], "summary": "Cancel a response (idempotent)", "parameters": [_ID],
        "responses": {"200": ok("The Response.", json_content("Response")), **_ERRORS}},
    ("GET", "/v1/responses/{response_id}/input_items"): {
        "tags": ["responses"], "summary": "The response's input items", "parameters": [
            _ID, parameter("after", "query", "An item id: the page starts after it."),
            parameter("limit", "query", "Page size.", {"type": "integer", "minimum": 1, "maximum": 100}),
            parameter("order", "query", "`desc` (default) or `asc`.", {"type": "string", "enum": ["asc", "desc"]})],
        "responses": {"200": ok("A page of input items.", json_content({"type": "object"})), **_ERRORS}},
}
