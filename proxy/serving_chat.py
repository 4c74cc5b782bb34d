"""POST /v1/chat/completions: validate, start the job's workflow, relay its events."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any, AsyncIterator

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from temporalio.api.enums.v1.workflow_pb2 import PENDING_ACTIVITY_STATE_STARTED
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy

from orchestration.workflows import INFERENCE_WORKFLOW
from proxy.body import read_json_body
from proxy.errors import APIError, InvalidRequest, NotFound, ServiceUnavailable, envelope_bytes
from proxy.relay import EventFeed, first_batch
from proxy.runtime import Runtime
from proxy.sse import DONE, KEEPALIVE, SSEResponse, frame
from schemas.catalog import ModelEntry
from schemas.events import Cancelled, Delta, Failed, Finished, JobEvent, Restarted, Started, is_terminal
from schemas.jobs import InferenceInput, WorkflowInput
from schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ErrorBody,
    ResponseMessage,
)

log = structlog.get_logger("switchyard.proxy")
_encoder = msgspec.json.Encoder()


def validate_chat(raw: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return msgspec.convert(raw, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(_describe(str(exc)), param=_param_of(str(exc)),
                             code="invalid_value") from None


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


async def chat_completions(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    raw = await read_json_body(request, rt.settings.max_body_bytes)
    req = validate_chat(raw)
    model = rt.catalog.get(req.model)
    if model is None:
        raise NotFound(f"The model '{req.model}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    check_limits(req, model)
    request.state.model = model.id

    job_id = f"chatcmpl-{uuid.uuid4().hex}"
    request.state.job_id = job_id
    created = int(time.time())
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    body = {k: v for k, v in raw.items() if k not in ("stream", "stream_options")}
    inp = WorkflowInput(
        inference=InferenceInput(job_id=job_id, model=model.id, endpoint="/v1/chat/completions",
                                 body=body, created=created, include_usage=include_usage),
        task_queue=model.task_queue, timeouts=model.timeouts, retry=model.retry)

    feed = await _open_and_start(rt, inp, model)
    headers = {"x-job-id": job_id}
    chunks = ChunkWriter(job_id, model.id, created, include_usage)
    first = asyncio.ensure_future(_first_events(rt, feed, job_id, model))
    if req.stream:
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

    if req.stream:
        return SSEResponse(_stream(feed, batch, chunks, rt.settings.keepalive_s), headers,
                           on_close=feed.close)
    try:
        return await _collect(feed, batch, chunks, headers)
    finally:
        await feed.close()


NO_CAPACITY = "No worker picked up the request in time; please retry."


async def _open_and_start(rt: Runtime, inp: WorkflowInput, model: ModelEntry) -> EventFeed:
    opening = asyncio.ensure_future(EventFeed.open(rt.js, inp.inference.job_id))
    try:
        await _start(rt, inp, model)
    except BaseException:
        opening.cancel()
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            await opening.result().close()
        raise
    try:
        return await opening
    except Exception as exc:
        log.error("event_feed_failed", error_type=type(exc).__name__)
        raise ServiceUnavailable("The event stream is unavailable; please retry.",
                                 code="events_unavailable") from None


async def _late_stream(rt: Runtime, feed: EventFeed, first: asyncio.Future, chunks: "ChunkWriter",
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


async def _start(rt: Runtime, inp: WorkflowInput, model: ModelEntry) -> None:
    t = model.timeouts
    run_timeout = t.schedule_to_start_s + (t.start_to_close_s + 60) * model.retry.maximum_attempts
    try:
        await rt.temporal.start_workflow(
            INFERENCE_WORKFLOW, inp, id=inp.inference.job_id, task_queue=model.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            execution_timeout=timedelta(seconds=run_timeout))
    except Exception as exc:
        log.error("workflow_start_failed", error_type=type(exc).__name__)
        raise ServiceUnavailable("The job could not be started; please retry.",
                                 code="orchestrator_unavailable") from None


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


def terminal_error(event: Failed | Cancelled, headers: dict[str, str]) -> APIError:
    if isinstance(event, Cancelled):
        return APIError("The job was cancelled.", status=409, type="invalid_request_error",
                        code="job_cancelled", headers=headers)
    return APIError(event.error.message, status=event.status, type=event.error.type,
                    param=event.error.param, code=event.error.code, headers=headers)


class ChunkWriter:
    """Turns job events into OpenAI chat.completion.chunk SSE frames."""

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool):
        self.job_id = job_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self._role_sent = False

    def _chunk(self, choices: list[ChunkChoice], **extra: Any) -> bytes:
        return _encoder.encode(ChatCompletionChunk(id=self.job_id, created=self.created,
                                                   model=self.model, choices=choices, **extra))

    def frames(self, event: JobEvent) -> bytes:
        if isinstance(event, Delta):
            delta = ChunkDelta()
            if not self._role_sent:
                delta.role = "assistant"
                self._role_sent = True
            if event.content or not (event.tool_calls or event.reasoning):
                delta.content = event.content
            if event.reasoning:
                delta.reasoning_content = event.reasoning
            if event.tool_calls:
                delta.tool_calls = event.tool_calls
            return frame(self._chunk([ChunkChoice(index=0, delta=delta)]), event.seq)
        if isinstance(event, Finished):
            out = frame(self._chunk([ChunkChoice(index=0, delta=ChunkDelta(),
                                                 finish_reason=event.finish_reason or "stop")]), event.seq)
            if self.include_usage:
                out += frame(self._chunk([], usage=event.usage), event.seq)
            return out + DONE
        if isinstance(event, Started):
            return b""
        if isinstance(event, Restarted):
            # OpenAI's chunk format cannot take back text: end this stream; the job goes on and
            # /v1/jobs/{id}/events shows the restart.
            return frame(envelope_bytes(ErrorBody(
                message=f"The generation restarted ({event.reason}); follow /v1/jobs/{self.job_id}/events.",
                type="server_error", code="stream_restarted")), event.seq) + DONE
        if isinstance(event, Cancelled):
            return frame(envelope_bytes(ErrorBody(message="The job was cancelled.", type="invalid_request_error",
                                                  code="job_cancelled")), event.seq) + DONE
        assert isinstance(event, Failed)
        return frame(envelope_bytes(event.error), event.seq) + DONE


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


async def _collect(feed: EventFeed, batch: list[JobEvent], chunks: ChunkWriter,
                   headers: dict[str, str]) -> Response:
    text: list[str] = []
    reasoning: list[str] = []
    tools = ToolCallMerger()
    while True:
        for event in batch:
            if isinstance(event, Delta):
                text.append(event.content)
                reasoning.append(event.reasoning)
                if event.tool_calls:
                    tools.add(event.tool_calls)
            elif isinstance(event, Finished):
                message = ResponseMessage(role="assistant", content="".join(text) if text or not tools.calls else None)
                if any(reasoning):
                    message.reasoning_content = "".join(reasoning)
                if tools.calls:
                    message.tool_calls = tools.result()
                body = ChatCompletion(id=chunks.job_id, created=chunks.created, model=chunks.model,
                                      choices=[Choice(index=0, message=message,
                                                      finish_reason=event.finish_reason or "stop")],
                                      usage=event.usage)
                return Response(_encoder.encode(body), media_type="application/json", headers=headers)
            elif isinstance(event, Restarted):
                text.clear()
                reasoning.clear()
                tools = ToolCallMerger()
            elif isinstance(event, (Failed, Cancelled)):
                raise terminal_error(event, headers)
        try:
            batch = await feed.next_batch(timeout=60.0)
        except TimeoutError:
            batch = []


class ToolCallMerger:
    """Merges streamed tool-call deltas (by index) into complete tool calls."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for d in deltas:
            index = int(d.get("index", 0))
            call = self.calls.setdefault(index, {"id": "", "type": "function",
                                                 "function": {"name": "", "arguments": ""}})
            if d.get("id"):
                call["id"] = d["id"]
            if d.get("type"):
                call["type"] = d["type"]
            fn = d.get("function") or {}
            if fn.get("name"):
                call["function"]["name"] += fn["name"]
            if fn.get("arguments"):
                call["function"]["arguments"] += fn["arguments"]

    def result(self) -> list[dict[str, Any]]:
        return [self.calls[i] for i in sorted(self.calls)]
