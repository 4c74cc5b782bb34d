"""What every job-backed OpenAI endpoint shares: validating into a msgspec struct, picking the
model (404, or 400 when its engine cannot do the endpoint), building the job, and serving it:
`Prefer: respond-async`, the first-event wait, the header wait with keep-alives, in-band errors,
`x-job-id`, and the non-streaming assembly."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from temporalio.api.enums.v1.workflow_pb2 import PENDING_ACTIVITY_STATE_STARTED
from temporalio.client import WorkflowExecutionStatus

from adapters.registry import engine_capabilities
from gatekeeping.auth import Principal
from proxy.http.body import decode_json_object, peek_model, read_body
from proxy.jobs.render import ChunkWriter, CompletionAssembler, terminal_error
from schemas.errors import InvalidRequest, NotFound, ServiceUnavailable
from proxy.http.errors import envelope_bytes
from proxy.jobs.store import JobMemo, accepted_response, cancel_job, goes_direct, body_hash, new_job_id, prefers_async, start_job
from proxy.jobs.relay import EventFeed, first_batch
from proxy.jobs.admit import admit_job
from schemas.errors import Forbidden
from proxy.endpoints.params import engine_body
from proxy.runtime import Runtime
from proxy.http.sse import CHUNK, DONE_DATA, END, KEEPALIVE, SSEResponse, render
from schemas.catalog import ModelEntry
from schemas.events import Cancelled, Failed, JobEvent, Restarted, Started, is_terminal
from schemas.jobs import (
    CHAT_ENDPOINT,
    COMPLETIONS_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    SPEECH_ENDPOINT,
    TRANSCRIPTIONS_ENDPOINT,
    TRANSLATIONS_ENDPOINT,
    InferenceInput,
    WorkflowInput,
)
from orchestration.workflows import ADOPT_SCHEDULE_TO_START_S, NO_CAPACITY
from schemas.openai import ErrorBody

QUEUE_GRACE_S = 5.0  # past the queue deadline, for the job's own no_capacity ending to arrive
# What an endpoint needs of the model's engine (adapters.base capability names).
CAPABILITY = {CHAT_ENDPOINT: "chat", COMPLETIONS_ENDPOINT: "completions", EMBEDDINGS_ENDPOINT: "embeddings",
              TRANSCRIPTIONS_ENDPOINT: "asr", TRANSLATIONS_ENDPOINT: "asr", SPEECH_ENDPOINT: "tts"}
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def convert_request(raw: dict[str, Any], kind: type[T]) -> T:
    """The body as `kind`, or a 400 whose `param` names the bad field."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(_describe(str(exc)), param=_param_of(str(exc)), code="invalid_value") from None


def _param_of(message: str) -> str | None:
    at = message.rsplit(" - at `$.", 1)[1].rstrip("`") if " - at `$." in message else None
    if "missing required field `" in message:  # msgspec names the missing field and its parent
        field = message.split("missing required field `", 1)[1].split("`", 1)[0]
        return f"{at}.{field}" if at else field
    return at


def _describe(message: str) -> str:
    param = _param_of(message)
    head = message.split(" - at `", 1)[0]
    return f"Invalid value for '{param}': {head}" if param else head


def check_max_tokens(req: Any, model: ModelEntry, names: tuple[str, ...] = ("max_tokens",)) -> None:
    for name in names:
        value = getattr(req, name)
        if isinstance(value, int) and value > model.limits.max_tokens:
            raise InvalidRequest(
                f"'{name}' is too large: {value}. This model supports at most {model.limits.max_tokens}.",
                param=name, code="invalid_value")


def find_model(rt: Runtime, name: str, endpoint: str) -> ModelEntry:
    """The catalog entry, 404 if absent; 400 `unsupported_capability` (param `model`) when its engine
    cannot serve `endpoint`: decided from the catalog before any workflow starts."""
    model = rt.catalog.get(name)
    if model is None:
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    need = CAPABILITY[endpoint]
    entry = rt.catalog.get(model.pipeline[0].model) if model.pipeline else model  # a pipeline takes what its first stage takes
    if entry is None or entry.engine is None or need not in engine_capabilities(entry.engine):
        raise InvalidRequest(f"The model '{name}' does not support {endpoint} ({need}).",
                             param="model", code="unsupported_capability")
    return model


def engine_entry(rt: Runtime, model: ModelEntry) -> ModelEntry:
    """The entry whose engine takes the request: the model's own, or its pipeline's first stage's."""
    return (rt.catalog.get(model.pipeline[0].model) or model) if model.pipeline else model


def check_access(rt: Runtime, principal: Principal, endpoint: str, name: str | None) -> None:
    """The refusals that need no more of the body than its `model`: the key's endpoint and model
    scopes (403/404, as admission answers them) and the model's existence and capability."""
    if not principal.allows_endpoint(endpoint):
        raise Forbidden(f"This API key may not call {endpoint}.")
    if name is None:
        return
    model = find_model(rt, name, endpoint)
    if not principal.allows_model(model.id):
        raise NotFound(f"The model '{model.id}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")


class PreparedJob(msgspec.Struct):
    request: Any  # the validated request struct
    model: ModelEntry
    inp: WorkflowInput
    memo: JobMemo

    @property
    def job_id(self) -> str:
        return self.inp.inference.job_id

    @property
    def stream(self) -> bool:
        return self.memo.stream


def new_job(principal: Principal, model: ModelEntry, endpoint: str, request: Any, raw: dict[str, Any],
            body: dict[str, Any], *, prefix: str, stream: bool = False, include_usage: bool = False,
            idempotency_key: str | None = None, metadata: dict[str, str] | None = None,
            webhook_url: str = "", options: dict[str, Any] | None = None) -> PreparedJob:
    """The job's id, workflow input and memo. `raw` is the client's body (for idempotency), `body`
    what the engine gets."""
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
    job_id = new_job_id(principal.tenant, idempotency_key, uuid.uuid4().hex, prefix)
    created = int(time.time())
    inp = WorkflowInput(
        inference=InferenceInput(job_id=job_id, model=model.id, endpoint=endpoint, body=body,
                                 created=created, include_usage=include_usage, options=options or {},
                                 tenant=principal.tenant, retention_s=principal.retention_s),
        task_queue=model.task_queue, timeouts=model.timeouts, retry=model.retry, webhook_url=webhook_url)
    memo = JobMemo(tenant=principal.tenant, endpoint=endpoint, model=model.id, created=created,
                   body_hash=body_hash(endpoint, raw), stream=stream, include_usage=include_usage,
                   metadata=metadata or {}, webhook_url=webhook_url)
    return PreparedJob(request, model, inp, memo)


def new_streamed_job(principal: Principal, model: ModelEntry, endpoint: str, request: Any, raw: dict[str, Any],
                     *, prefix: str, defaults: dict[str, Any] | None = None, **job: Any) -> PreparedJob:
    """A job whose request may stream: `stream` and `stream_options` are the proxy's business (the
    adapter always streams from the engine); `defaults` fill the engine body's missing fields."""
    include_usage = bool(request.stream and request.stream_options and request.stream_options.include_usage)
    body = engine_body(raw, endpoint, model)
    for name, value in (defaults or {}).items():
        if body.get(name) is None:
            body[name] = value
    return new_job(principal, model, endpoint, request, raw, body, prefix=prefix, stream=request.stream,
                   include_usage=include_usage, **job)


Prepare = Callable[..., PreparedJob]
Respond = Callable[[Runtime, Any, dict[str, str]], Awaitable[Response]]


async def json_response(rt: Runtime, result: Any, headers: dict[str, str]) -> Response:
    return Response(_encoder.encode(result), media_type="application/json", headers=headers)


async def serve_endpoint(request: Request, endpoint: str, prepare: Prepare, writer: type[ChunkWriter],
                         assembler: type[CompletionAssembler], respond: Respond = json_response) -> Response:
    """An OpenAI endpoint: read the body, prepare the job, serve it. What can be refused from the
    key and the body's `model` alone is refused before the body is decoded."""
    rt: Runtime = request.app.state.runtime
    principal = request.state.principal
    check_access(rt, principal, endpoint, None)
    data = await read_body(request, rt.settings.max_body_bytes)
    check_access(rt, principal, endpoint, peek_model(data))
    raw = decode_json_object(data)
    job = prepare(rt, principal, raw, request.headers.get("idempotency-key"))
    chunks = writer(job.job_id, job.model.id, job.memo.created, job.memo.include_usage)
    return await serve_job(request, rt, job, chunks, assembler(chunks), respond)


async def serve_job(request: Request, rt: Runtime, job: PreparedJob, chunks: ChunkWriter,
                    assembler: CompletionAssembler, respond: Respond = json_response,
                    admitted: bool = False) -> Response:
    """Starts the job (admitting it, unless `admitted` already) and answers: 202 for `Prefer:
    respond-async`, an SSE stream, or the assembled result passed to `respond`."""
    request.state.model = job.model.id
    request.state.job_id = job.job_id
    if not admitted:
        job = await admit_job(request, rt, request.state.principal, job)
    if prefers_async(request):
        await start_job(rt, job.inp, job.model, job.memo, direct=goes_direct(request.headers, job.memo.endpoint))
        return await accepted_response(rt, job.job_id, job.memo.tenant, prefer_applied=True)

    feed = await open_and_start(rt, job, goes_direct(request.headers, job.memo.endpoint))
    chunks.created = job.memo.created  # an idempotent repeat's: the existing job's
    job_id, model = job.job_id, job.model
    headers = {"x-job-id": job_id}
    first = asyncio.ensure_future(first_events(rt, feed, job_id, model))
    if job.stream:
        # Hold the status line briefly so early failures get their real HTTP status; then commit
        # 200 and keep the client company with keep-alives while the job waits for capacity.
        done, _ = await asyncio.wait({first}, timeout=rt.settings.header_wait_s)
        if not done:
            return SSEResponse(late_stream(rt, feed, first, chunks, rt.settings.keepalive_s),
                               headers, on_close=feed.close)
    batch = await opening_batch(rt, feed, first, job_id, headers)
    if job.stream:
        return SSEResponse(stream_events(feed, batch, chunks, rt.settings.keepalive_s), headers,
                           on_close=feed.close)
    try:
        result = await collect(feed, batch, assembler)
        return await respond(rt, result, headers)
    except Exception as exc:
        if hasattr(exc, "headers"):
            exc.headers.update(headers)
        raise
    finally:
        await feed.close()


async def opening_batch(rt: Runtime, feed: EventFeed, first: asyncio.Future, job_id: str,
                        headers: dict[str, str]) -> list[JobEvent]:
    """The job's first events (`first`: first_events running); a 503 when no worker took the job,
    the job's own error when it failed before producing anything. The feed is closed on error."""
    try:
        batch = await first
    except asyncio.TimeoutError:
        await feed.close()
        await give_up(rt, job_id)
        raise ServiceUnavailable(NO_CAPACITY, code="no_capacity", headers={**headers, "retry-after": "1"}) from None
    except BaseException:
        first.cancel()
        await feed.close()
        raise
    head = next(e for e in batch if not isinstance(e, Started))
    if isinstance(head, (Failed, Cancelled)):
        await feed.close()
        raise terminal_error(head, headers)
    return batch


async def open_and_start(rt: Runtime, job: PreparedJob, direct: bool = False) -> EventFeed:
    opening = asyncio.ensure_future(EventFeed.open(rt.js, job.job_id, model=job.model.id, fresh=True))
    try:
        started = await start_job(rt, job.inp, job.model, job.memo, direct=direct)
    except BaseException:
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            await opening.result().close()
        raise
    try:
        feed = await opening
    except Exception:
        raise ServiceUnavailable("The event stream is unavailable; please retry.",
                                 code="events_unavailable") from None
    try:
        if not started:  # an idempotent repeat: the job's events so far are stored
            await feed.backfill()
        return feed
    except Exception:
        await feed.close()
        raise ServiceUnavailable("The event stream is unavailable; please retry.",
                                 code="events_unavailable") from None


async def first_events(rt: Runtime, feed: EventFeed, job_id: str, model: ModelEntry) -> list[JobEvent]:
    """Waits for the job's first event. A job nobody picks up ends itself at its queue deadline
    (`no_capacity`); past that deadline this keeps waiting only while a worker holds the job (a long
    prompt's prefill, a retry's backoff)."""
    t = model.timeouts
    try:
        return await first_batch(feed, t.schedule_to_start_s + ADOPT_SCHEDULE_TO_START_S + QUEUE_GRACE_S)
    except asyncio.TimeoutError:
        if not await job_is_moving(rt, job_id):
            raise
    return await first_batch(feed, t.start_to_close_s * model.retry.maximum_attempts)


async def job_is_moving(rt: Runtime, job_id: str) -> bool:
    try:
        desc = await rt.temporal.get_workflow_handle(job_id).describe()
    except Exception:
        return False
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return True  # it ended: its final event is on the way
    return any(pa.state == PENDING_ACTIVITY_STATE_STARTED or pa.attempt > 1
               for pa in desc.raw_description.pending_activities)


async def give_up(rt: Runtime, job_id: str) -> None:
    """Cancels a job that did not end itself in time: its workflow still settles and notifies."""
    try:
        await cancel_job(rt, job_id)
    except Exception:
        pass


async def late_stream(rt: Runtime, feed: EventFeed, first: asyncio.Future, chunks: ChunkWriter,
                      keepalive_s: float) -> AsyncIterator[bytes]:
    try:
        while not first.done():
            yield KEEPALIVE
            await asyncio.wait({first}, timeout=keepalive_s)
        batch = first.result()
    except asyncio.TimeoutError:
        await give_up(rt, chunks.job_id)
        error = envelope_bytes(ErrorBody(message=NO_CAPACITY, type="server_error", code="no_capacity"))
        yield render(feed.last_seq + 1, [(CHUNK, None, error), (END, None, DONE_DATA)])
        return
    finally:
        if not first.done():
            first.cancel()
    async for out in stream_events(feed, batch, chunks, keepalive_s):
        yield out


async def stream_events(feed: EventFeed, batch: list[JobEvent], chunks: ChunkWriter,
                        keepalive_s: float) -> AsyncIterator[bytes]:
    while True:
        out = b"".join(chunks.frames(e) for e in batch)
        if out:
            yield out
        if feed.ended or any(isinstance(e, Restarted) for e in batch):
            return
        try:
            batch = await feed.next_batch(timeout=keepalive_s)
        except TimeoutError:
            batch = []
            yield KEEPALIVE


async def collect(feed: EventFeed, batch: list[JobEvent], assembler: CompletionAssembler):
    while True:
        for event in batch:
            completion = assembler.add(event)
            if completion is not None:
                return completion
        if feed.ended:
            raise ServiceUnavailable("The job ended without a result; please retry.", code="job_incomplete")
        try:
            batch = await feed.next_batch(timeout=60.0)
        except TimeoutError:
            batch = []
