"""POST /v1/chat/completions: validate, start the job's workflow, relay its events."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from temporalio.api.enums.v1.workflow_pb2 import PENDING_ACTIVITY_STATE_STARTED
from temporalio.client import WorkflowExecutionStatus

from proxy.auth import Principal
from proxy.body import read_json_body
from proxy.chunks import ChunkWriter, CompletionAssembler, terminal_error
from proxy.errors import InvalidRequest, NotFound, ServiceUnavailable, envelope_bytes
from proxy.jobs import JobMemo, body_hash, new_job_id, start_job
from proxy.relay import EventFeed, first_batch
from proxy.runtime import Runtime
from proxy.jobs import accepted_response, prefers_async
from proxy.sse import DONE, KEEPALIVE, SSEResponse, frame
from schemas.catalog import ModelEntry
from schemas.events import Cancelled, Failed, JobEvent, Restarted, Started, is_terminal
from schemas.jobs import InferenceInput, WorkflowInput
from schemas.openai import ChatCompletionRequest, ErrorBody

CHAT = "/v1/chat/completions"
NO_CAPACITY = "No worker picked up the request in time; please retry."
_encoder = msgspec.json.Encoder()


def validate_chat(raw: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return msgspec.convert(raw, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(_describe(str(exc)), param=_param_of(str(exc)), code="invalid_value") from None


def _param_of(message: str) -> str | None:
    if " - at `$." in message:
        return message.rsplit(" - at `$.", 1)[1].rstrip("`")
    if "missing required field `" in message:
        return message.split("missing required field `", 1)[1].split("`", 1)[0]
    return None


def _describe(message: str) -> str:
    param = _param_of(message)
    head = message.split(" - at `", 1)[0]
    return f"Invalid value for '{param}': {head}" if param else head


def check_limits(req: ChatCompletionRequest, model: ModelEntry) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if isinstance(value, int) and value > model.limits.max_tokens:
            raise InvalidRequest(
                f"'{name}' is too large: {value}. This model supports at most {model.limits.max_tokens}.",
                param=name, code="invalid_value")


class PreparedChat(msgspec.Struct):
    request: ChatCompletionRequest
    model: ModelEntry
    inp: WorkflowInput
    memo: JobMemo

    @property
    def job_id(self) -> str:
        return self.inp.inference.job_id


def prepare_chat(rt: Runtime, principal: Principal, raw: dict[str, Any], idempotency_key: str | None,
                 metadata: dict[str, str] | None = None, webhook_url: str = "") -> PreparedChat:
    req = validate_chat(raw)
    model = rt.catalog.get(req.model)
    if model is None:
        raise NotFound(f"The model '{req.model}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    check_limits(req, model)
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
    job_id = new_job_id(principal.tenant, idempotency_key, uuid.uuid4().hex)
    created = int(time.time())
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    body = {k: v for k, v in raw.items() if k not in ("stream", "stream_options")}
    inp = WorkflowInput(
        inference=InferenceInput(job_id=job_id, model=model.id, endpoint=CHAT, body=body,
                                 created=created, include_usage=include_usage),
        task_queue=model.task_queue, timeouts=model.timeouts, retry=model.retry, webhook_url=webhook_url)
    memo = JobMemo(tenant=principal.tenant, endpoint=CHAT, model=model.id, created=created,
                   body_hash=body_hash(CHAT, raw), stream=req.stream, include_usage=include_usage,
                   metadata=metadata or {}, webhook_url=webhook_url)
    return PreparedChat(req, model, inp, memo)


async def chat_completions(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    raw = await read_json_body(request, rt.settings.max_body_bytes)
    chat = prepare_chat(rt, request.state.principal, raw, request.headers.get("idempotency-key"))
    request.state.model = chat.model.id
    request.state.job_id = chat.job_id
    if prefers_async(request):
        await start_job(rt, chat.inp, chat.model, chat.memo)
        return await accepted_response(rt, chat.job_id, chat.memo.tenant, prefer_applied=True)

    feed = await _open_and_start(rt, chat)
    job_id, model = chat.job_id, chat.model
    headers = {"x-job-id": job_id}
    chunks = ChunkWriter(job_id, model.id, chat.memo.created, chat.memo.include_usage)
    first = asyncio.ensure_future(_first_events(rt, feed, job_id, model))
    if chat.request.stream:
        # Hold the status line briefly so early failures get their real HTTP status; then commit
        # 200 and keep the client company with keep-alives while the job waits for capacity.
        done, _ = await asyncio.wait({first}, timeout=rt.settings.header_wait_s)
        if not done:
            return SSEResponse(_late_stream(rt, feed, first, chunks, rt.settings.keepalive_s),
                               headers, on_close=feed.close)
    try:
        batch = await first
    except asyncio.TimeoutError:
        await feed.close()
        await _terminate_quietly(rt, job_id, "no worker picked up the job in time")
        raise ServiceUnavailable(NO_CAPACITY, code="no_capacity", headers=headers) from None
    except BaseException:
        first.cancel()
        await feed.close()
        raise
    head = next(e for e in batch if not isinstance(e, Started))
    if isinstance(head, (Failed, Cancelled)):
        await feed.close()
        raise terminal_error(head, headers)
    if chat.request.stream:
        return SSEResponse(_stream(feed, batch, chunks, rt.settings.keepalive_s), headers,
                           on_close=feed.close)
    try:
        completion = await collect(feed, batch, CompletionAssembler(chunks))
    except Exception as exc:
        if hasattr(exc, "headers"):
            exc.headers.update(headers)
        raise
    finally:
        await feed.close()
    return Response(_encoder.encode(completion), media_type="application/json", headers=headers)


async def _open_and_start(rt: Runtime, chat: PreparedChat) -> EventFeed:
    opening = asyncio.ensure_future(EventFeed.open(rt.js, chat.job_id))
    try:
        await start_job(rt, chat.inp, chat.model, chat.memo)
    except BaseException:
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            await opening.result().close()
        raise
    try:
        return await opening
    except Exception:
        raise ServiceUnavailable("The event stream is unavailable; please retry.",
                                 code="events_unavailable") from None


async def _first_events(rt: Runtime, feed: EventFeed, job_id: str, model: ModelEntry) -> list[JobEvent]:
    """Waits for the job's first event. Past the queue deadline, keeps waiting only while a worker
    holds the job (a long prompt's prefill, a retry's backoff); a job nobody picked up times out."""
    t = model.timeouts
    try:
        return await first_batch(feed, t.schedule_to_start_s)
    except asyncio.TimeoutError:
        if not await _job_is_moving(rt, job_id):
            raise
    return await first_batch(feed, t.start_to_close_s * model.retry.maximum_attempts)


async def _job_is_moving(rt: Runtime, job_id: str) -> bool:
    try:
        desc = await rt.temporal.get_workflow_handle(job_id).describe()
    except Exception:
        return False
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return True  # it ended: its final event is on the way
    return any(pa.state == PENDING_ACTIVITY_STATE_STARTED or pa.attempt > 1
               for pa in desc.raw_description.pending_activities)


async def _terminate_quietly(rt: Runtime, job_id: str, reason: str) -> None:
    try:
        await rt.temporal.get_workflow_handle(job_id).terminate(reason=reason)
    except Exception:
        pass


async def _late_stream(rt: Runtime, feed: EventFeed, first: asyncio.Future, chunks: ChunkWriter,
                       keepalive_s: float) -> AsyncIterator[bytes]:
    try:
        while not first.done():
            yield KEEPALIVE
            await asyncio.wait({first}, timeout=keepalive_s)
        batch = first.result()
    except asyncio.TimeoutError:
        await _terminate_quietly(rt, chunks.job_id, "no worker picked up the job in time")
        yield frame(envelope_bytes(ErrorBody(message=NO_CAPACITY, type="server_error",
                                             code="no_capacity"))) + DONE
        return
    finally:
        if not first.done():
            first.cancel()
    async for out in _stream(feed, batch, chunks, keepalive_s):
        yield out


async def _stream(feed: EventFeed, batch: list[JobEvent], chunks: ChunkWriter,
                  keepalive_s: float) -> AsyncIterator[bytes]:
    while True:
        out = b"".join(chunks.frames(e) for e in batch)
        if out:
            yield out
        if any(is_terminal(e) or isinstance(e, Restarted) for e in batch):
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
        try:
            batch = await feed.next_batch(timeout=60.0)
        except TimeoutError:
            batch = []
