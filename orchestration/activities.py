"""Activities: the inference call on the model's GPU queue, and ending a failed job's stream."""

from __future__ import annotations

import asyncio
from typing import Mapping

from nats.js import JetStreamContext
from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.base import EngineError, InferenceAdapter
from orchestration.publisher import EventPublisher
from orchestration.streams import last_event
from schemas.events import Delta, Failed
from schemas.jobs import FailureNotice, InferenceInput, InferenceSummary
from schemas.openai import Usage

ENGINE_ERROR = "EngineError"
STREAM_INTERRUPTED = "StreamInterrupted"


def engine_failure(exc: EngineError) -> ApplicationError:
    detail = {"status": exc.status, "type": exc.type, "code": exc.code, "param": exc.param}
    return ApplicationError(exc.message, detail, type=ENGINE_ERROR, non_retryable=not exc.retryable)


class InferenceActivities:
    def __init__(self, js: JetStreamContext, adapters: Mapping[str, InferenceAdapter],
                 coalesce_s: float = 0.005, heartbeat_every_s: float = 2.0):
        self._js = js
        self._adapters = adapters
        self._coalesce_s = coalesce_s
        self._heartbeat_every_s = heartbeat_every_s

    @activity.defn(name="inference")
    async def inference(self, inp: InferenceInput) -> InferenceSummary:
        info = activity.info()
        adapter = self._adapters.get(inp.model)
        if adapter is None:
            raise ApplicationError(f"this worker serves no model {inp.model!r}", type="NoAdapter")
        first_seq = 0
        if info.attempt > 1:
            previous = await last_event(self._js, inp.job_id)
            first_seq = previous.seq if previous else 0
            if isinstance(previous, Delta) or first_seq > 0:
                # Output already reached the client; restarting would duplicate text.
                raise ApplicationError("the engine stream broke after output was delivered",
                                       {"status": 502, "type": "server_error",
                                        "code": "stream_interrupted", "param": None},
                                       type=STREAM_INTERRUPTED, non_retryable=True)
        progress = {"seq": first_seq}
        publisher = EventPublisher(self._js, inp.job_id, info.attempt, first_seq, self._coalesce_s,
                                   on_flush=lambda seq: progress.__setitem__("seq", seq))
        heartbeat = asyncio.ensure_future(self._heartbeat(progress))
        usage = Usage()
        finish_reason: str | None = None
        model = inp.model
        try:
            async for piece in adapter.stream_chat(inp.body):
                if piece.content or piece.reasoning or (piece.role and not piece.tool_calls):
                    await publisher.add_text(piece.content, piece.reasoning, piece.role)
                if piece.tool_calls:
                    await publisher.add_tool_calls(piece.tool_calls)
                if piece.finish_reason:
                    finish_reason = piece.finish_reason
                if piece.usage is not None:
                    usage = piece.usage
        except EngineError as exc:
            await publisher.close()
            if publisher.deltas_published and exc.retryable:
                raise ApplicationError(exc.message, {"status": 502, "type": "server_error",
                                                     "code": "stream_interrupted", "param": None},
                                       type=STREAM_INTERRUPTED, non_retryable=True) from None
            raise engine_failure(exc) from None
        finally:
            heartbeat.cancel()
        last_seq = await publisher.finish({"finish_reason": finish_reason, "usage": usage,
                                           "model": model, "created": inp.created})
        return InferenceSummary(finish_reason=finish_reason, usage=usage, last_seq=last_seq,
                                attempt=info.attempt)

    async def _heartbeat(self, progress: dict[str, int]) -> None:
        while True:
            activity.heartbeat(progress["seq"])
            await asyncio.sleep(self._heartbeat_every_s)

    @activity.defn(name="publish_failure")
    async def publish_failure(self, notice: FailureNotice) -> int:
        previous = await last_event(self._js, notice.job_id)
        first_seq = previous.seq if previous else 0
        if isinstance(previous, Failed):
            return first_seq
        publisher = EventPublisher(self._js, notice.job_id, 0, first_seq)
        return await publisher.fail(notice.status, notice.error)

