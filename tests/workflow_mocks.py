"""Activities registered under the real activity names, for running the workflows on a real Temporal
server without NATS, engines or webhook receivers: each records what it received and does what the
test told it to. Also: recording a run's history to tests/histories, decrypted."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer, Worker

from orchestration.codec import ENCODING
from orchestration.converter import data_converter
from orchestration.workflows import InferenceWorkflow, WebhookWorkflow
from schemas.jobs import (
    AdoptInput,
    InferenceInput,
    InferenceSummary,
    SettlementRequest,
    TerminalNotice,
    WebhookDelivery,
)
from schemas.openai import Usage

HISTORIES = Path(__file__).parent / "histories"
RECORD = "SWITCHYARD_RECORD_HISTORY"  # set it to rewrite the pinned histories from the runs
WORKFLOWS = [InferenceWorkflow, WebhookWorkflow]


@dataclass(frozen=True)
class Call:
    """One attempt of an activity, as its mock saw it."""

    input: Any
    attempt: int
    task_queue: str
    max_attempts: int | None  # from the attempt's retry policy


def summary(attempt: int = 1, total_tokens: int = 5, result_ref: str = "") -> InferenceSummary:
    return InferenceSummary(finish_reason="stop", last_seq=3, attempt=attempt, result_ref=result_ref,
                            usage=Usage(prompt_tokens=2, completion_tokens=total_tokens - 2,
                                        total_tokens=total_tokens))


async def _succeed(inp: Any, attempt: int) -> Any:
    return summary(attempt)


async def _delivered(d: WebhookDelivery, attempt: int) -> int:
    return 200


async def until_cancelled(inp: Any, attempt: int) -> InferenceSummary:
    """An engine call that never ends by itself; heartbeats so that a cancel reaches it."""
    while True:
        activity.heartbeat()
        await asyncio.sleep(0.1)


async def silent(inp: Any, attempt: int) -> InferenceSummary:
    """A worker that died holding the activity: no heartbeats, no answer."""
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


class MockActivities:
    def __init__(self, inference: Callable[[InferenceInput, int], Awaitable[InferenceSummary]] = _succeed,
                 adopt: Callable[[AdoptInput, int], Awaitable[InferenceSummary]] = _succeed,
                 deliver: Callable[[WebhookDelivery, int], Awaitable[int]] = _delivered):
        self._inference, self._adopt, self._deliver = inference, adopt, deliver
        self.inferences: list[Call] = []
        self.adoptions: list[Call] = []
        self.deliveries: list[Call] = []
        self.terminals: list[TerminalNotice] = []
        self.settlements: list[SettlementRequest] = []
        self.cancelled: list[str] = []  # activity types whose run saw the cancellation
        self.inference_started = asyncio.Event()

    @staticmethod
    def _call(inp: Any) -> Call:
        info = activity.info()
        return Call(inp, info.attempt, info.task_queue,
                    info.retry_policy.maximum_attempts if info.retry_policy else None)

    async def _watched(self, kind: str, run: Awaitable[Any]) -> Any:
        try:
            return await run
        except asyncio.CancelledError:
            self.cancelled.append(kind)
            raise

    @activity.defn(name="inference")
    async def inference(self, inp: InferenceInput) -> InferenceSummary:
        call = self._call(inp)
        self.inferences.append(call)
        self.inference_started.set()
        return await self._watched("inference", self._inference(inp, call.attempt))

    @activity.defn(name="adopt")
    async def adopt(self, inp: AdoptInput) -> InferenceSummary:
        call = self._call(inp)
        self.adoptions.append(call)
        return await self._watched("adopt", self._adopt(inp, call.attempt))

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, d: WebhookDelivery) -> int:
        call = self._call(d)
        self.deliveries.append(call)
        return await self._deliver(d, call.attempt)

    @activity.defn(name="publish_terminal")
    async def publish_terminal(self, notice: TerminalNotice) -> int:
        self.terminals.append(notice)
        return 9

    @activity.defn(name="publish_settlement")
    async def publish_settlement(self, req: SettlementRequest) -> None:
        self.settlements.append(req)


@dataclass(frozen=True)
class Queues:
    """Fresh task queues per test: workflows (and their local activities and webhooks), the model's
    engine queue, and a worker's adoption queue for dispatched runs."""

    workflows: str = field(default_factory=lambda: f"wf-{uuid.uuid4().hex[:8]}")
    engine: str = field(default_factory=lambda: f"gpu-{uuid.uuid4().hex[:8]}")
    direct: str = field(default_factory=lambda: f"direct-{uuid.uuid4().hex[:8]}")


@asynccontextmanager
async def workers_for(client: Client, mocks: MockActivities) -> AsyncIterator[Queues]:
    """The real workflows on the project's data converter (the client's), the mocks as activities,
    laid out over queues as orchestration/worker.py lays them out."""
    q = Queues()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(Worker(
            client, task_queue=q.workflows, workflows=WORKFLOWS,
            activities=[mocks.publish_terminal, mocks.publish_settlement, mocks.deliver_webhook]))
        await stack.enter_async_context(Worker(client, task_queue=q.engine, activities=[mocks.inference]))
        await stack.enter_async_context(Worker(client, task_queue=q.direct, activities=[mocks.adopt]))
        yield q


async def pin(handle: WorkflowHandle[Any, Any], name: str) -> WorkflowHistory:
    """Replays the run's history against the current workflows, and with SWITCHYARD_RECORD_HISTORY
    set writes it, decrypted, to tests/histories/<name>.json for test_pinned_histories_replay."""
    history = await handle.fetch_history()
    await Replayer(workflows=WORKFLOWS, data_converter=data_converter).replay_workflow(history)
    if os.environ.get(RECORD):
        for event in history.events:
            await _decrypt(event)
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())
    return history


async def _decrypt(msg: Message) -> None:
    """Decrypts every payload within `msg` in place: a pinned history must replay under any key."""
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].type != fd.TYPE_MESSAGE:
                continue
            items = list(value.values())
        else:
            items = list(value) if fd.is_repeated else [value]
        for item in items:
            if not isinstance(item, Payload):
                await _decrypt(item)
            elif item.metadata.get("encoding") == ENCODING:
                assert data_converter.payload_codec is not None
                [plain] = await data_converter.payload_codec.decode([item])
                item.CopyFrom(plain)
