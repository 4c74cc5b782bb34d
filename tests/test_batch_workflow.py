"""The batch workflow's branches on a real Temporal dev server, with real InferenceWorkflow children
and every activity mocked under its real name: windows, continue-as-new, rate-limited lines waiting,
cancel, expiry and a failed validation. Each run's history replays against today's code."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer, Worker

from orchestration.batch_workflow import BatchWorkflow
from orchestration.converter import data_converter
from schemas.batches import (
    BATCH_CANCEL_SIGNAL,
    AdmitInput,
    AdmitResult,
    BatchError,
    BatchInput,
    FinalizeInput,
    LineJob,
    MarkInput,
    RequestCounts,
    RestInput,
    ValidateInput,
    ValidateResult,
    WriteInput,
)
from schemas.tenant_webhooks import TenantEventInput
from schemas.jobs import CHAT_ENDPOINT, InferenceInput, RetrySpec, StageTimeouts, WorkflowInput
from switchyard.processes import free_port, start_temporal
from tests.eventually import eventually_async
from tests.workflow_mocks import WORKFLOWS, MockActivities, Queues, summary, until_cancelled

TIMEOUTS = StageTimeouts(schedule_to_start_s=30, start_to_close_s=60, heartbeat_s=2)


@pytest.fixture(scope="module")
def temporal_address(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    server = start_temporal(port, None, tmp_path_factory.mktemp("temporal-batches"))
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
async def wf_client(temporal_address: str) -> Client:
    return await Client.connect(temporal_address, data_converter=data_converter)


class BatchMocks:
    """The proxy's batch activities: `lines` valid lines in chunks of `window`; `limited` line
    indices are rate-limited at their first admission."""

    def __init__(self, q: Queues, batch_id: str, lines: int, window: int, limited: frozenset[int] = frozenset(),
                 invalid: int = 0):
        self.q, self.batch_id, self.lines, self.window, self.limited = q, batch_id, lines, window, limited
        self.invalid = invalid
        self.admits: list[AdmitInput] = []
        self.writes: list[WriteInput] = []
        self.rests: list[RestInput] = []
        self.marks: list[MarkInput] = []
        self.finals: list[FinalizeInput] = []
        self.events: list[str] = []

    def _job(self, index: int) -> LineJob:
        inference = InferenceInput(job_id=f"{self.batch_id}-{index}", model="m", endpoint=CHAT_ENDPOINT,
                                   body={"messages": []}, created=1700000000)
        return LineJob(index=index, custom_id=f"c{index}", inp=WorkflowInput(
            inference=inference, task_queue=self.q.engine, timeouts=TIMEOUTS, retry=RetrySpec(), priority=5))

    @activity.defn(name="batch_validate")
    async def validate(self, inp: ValidateInput) -> ValidateResult:
        if not self.lines:
            return ValidateResult(total=self.invalid, invalid=self.invalid, chunks=0,
                                  errors=[BatchError(code="invalid_request", message="bad", line=1)])
        return ValidateResult(total=self.lines + self.invalid, invalid=self.invalid,
                              chunks=-(-self.lines // self.window))

    @activity.defn(name="batch_admit")
    async def admit(self, inp: AdmitInput) -> AdmitResult:
        self.admits.append(inp)
        indices = range(inp.chunk * self.window, min(self.lines, (inp.chunk + 1) * self.window))
        if inp.only is not None:
            return AdmitResult(admitted=[self._job(i) for i in inp.only])
        waiting = [i for i in indices if i in self.limited]
        return AdmitResult(admitted=[self._job(i) for i in indices if i not in self.limited], waiting=waiting,
                           retry_after_s=0.5)

    @activity.defn(name="batch_write")
    async def write(self, inp: WriteInput) -> RequestCounts:
        self.writes.append(inp)
        ok = sum(o.state == "succeeded" for o in inp.outcomes)
        size = min(self.lines, (inp.chunk + 1) * self.window) - inp.chunk * self.window
        b = inp.before
        return RequestCounts(total=b.total, completed=b.completed + ok, failed=b.failed + size - ok)

    @activity.defn(name="batch_write_rest")
    async def write_rest(self, inp: RestInput) -> RequestCounts:
        self.rests.append(inp)
        rest = self.lines - inp.first * self.window
        return RequestCounts(total=inp.before.total, completed=inp.before.completed, failed=inp.before.failed + rest)

    @activity.defn(name="batch_mark")
    async def mark(self, inp: MarkInput) -> None:
        self.marks.append(inp)

    @activity.defn(name="batch_finalize")
    async def finalize(self, inp: FinalizeInput) -> None:
        self.finals.append(inp)

    @activity.defn(name="notify_tenant")
    async def notify_tenant(self, inp: TenantEventInput) -> int:
        assert (inp.tenant, inp.data_id) == ("acme", self.batch_id)
        self.events.append(inp.type)
        return 1


@asynccontextmanager
async def running(client: Client, mocks: MockActivities, batch: BatchMocks) -> AsyncIterator[None]:
    q = batch.q
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(Worker(
            client, task_queue=q.workflows, workflows=[*WORKFLOWS, BatchWorkflow],
            activities=[mocks.publish_terminal, mocks.publish_settlement, mocks.deliver_webhook,
                        batch.notify_tenant]))
        await stack.enter_async_context(Worker(client, task_queue=q.engine, activities=[mocks.inference]))
        await stack.enter_async_context(Worker(
            client, task_queue=q.direct, activities=[batch.validate, batch.admit, batch.write, batch.write_rest,
                                                     batch.mark, batch.finalize]))
        yield


def batch_input(batch: BatchMocks, **changes) -> BatchInput:
    values = dict(batch_id=batch.batch_id, tenant="acme", principal={"tenant": "acme", "key_id": "k"},
                  endpoint=CHAT_ENDPOINT, input_file_id="file-x", expires_at=int(time.time()) + 3600,
                  window=batch.window, lines_per_run=1000, cpu_queue=batch.q.workflows, proxy_queue=batch.q.direct)
    return BatchInput(**{**values, **changes})  # type: ignore[arg-type]


async def start(client: Client, batch: BatchMocks, **changes) -> WorkflowHandle:
    return await client.start_workflow(BatchWorkflow.run, batch_input(batch, **changes), id=batch.batch_id,
                                       task_queue=batch.q.workflows)


async def run_count(client: Client, batch_id: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = '{batch_id}'")])


async def replays(handle: WorkflowHandle) -> None:
    history = await handle.fetch_history()
    await Replayer(workflows=[*WORKFLOWS, BatchWorkflow], data_converter=data_converter).replay_workflow(history)


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


async def test_windows_run_every_line_once_and_continue_as_new(wf_client: Client):
    mocks = MockActivities()
    batch = BatchMocks(Queues(), new_batch_id(), lines=10, window=3, invalid=2)
    async with running(wf_client, mocks, batch):
        handle = await start(wf_client, batch, lines_per_run=3)
        assert await handle.result() == "completed"
        await replays(handle)
    jobs = sorted(c.input.job_id for c in mocks.inferences)
    assert jobs == sorted(f"{batch.batch_id}-{i}" for i in range(10))  # each line once
    assert [w.chunk for w in batch.writes] == [0, 1, 2, 3]
    assert all(o.state == "succeeded" for w in batch.writes for o in w.outcomes)
    [final] = batch.finals
    assert final.status == "completed" and final.counts == RequestCounts(total=12, completed=10, failed=2)
    assert batch.rests == [] and batch.marks == []
    assert await run_count(wf_client, batch.batch_id) == 4  # a new run after every window of 3 lines
    assert batch.events == ["batch.completed"]


async def test_the_next_chunk_starts_while_a_slow_line_runs(wf_client: Client):
    """Half a window left in flight: the next chunk starts, the engines do not wait for a window's
    slowest line."""
    release = asyncio.Event()

    async def first_line_slow(inp: InferenceInput, attempt: int):
        if inp.job_id.endswith("-0"):
            await release.wait()
        return summary(attempt)

    mocks = MockActivities(inference=first_line_slow)
    batch = BatchMocks(Queues(), new_batch_id(), lines=8, window=4)
    async with running(wf_client, mocks, batch):
        handle = await start(wf_client, batch)
        await eventually_async(lambda: len(mocks.inferences) == 8, what="the second chunk running")
        release.set()
        assert await handle.result() == "completed"
        await replays(handle)
    assert sorted(w.chunk for w in batch.writes) == [0, 1]
    assert batch.finals[0].counts == RequestCounts(total=8, completed=8, failed=0)


async def test_a_rate_limited_line_waits_and_runs(wf_client: Client):
    mocks = MockActivities()
    batch = BatchMocks(Queues(), new_batch_id(), lines=4, window=4, limited=frozenset({1, 3}))
    async with running(wf_client, mocks, batch):
        handle = await start(wf_client, batch)
        assert await handle.result() == "completed"
    assert [a.only for a in batch.admits] == [None, [1, 3]]
    assert len(mocks.inferences) == 4
    [write] = batch.writes
    assert sorted(o.index for o in write.outcomes) == [0, 1, 2, 3]


async def test_cancel_cancels_the_lines_in_flight_and_writes_the_rest(wf_client: Client):
    mocks = MockActivities(inference=until_cancelled)
    batch = BatchMocks(Queues(), new_batch_id(), lines=9, window=3)
    async with running(wf_client, mocks, batch):
        handle = await start(wf_client, batch)
        await eventually_async(lambda: len(mocks.inferences) == 3, what="the first window running")
        await handle.signal(BATCH_CANCEL_SIGNAL)
        assert await handle.result() == "cancelled"
        await replays(handle)
    [write] = batch.writes
    assert {o.state for o in write.outcomes} == {"cancelled"} and len(write.outcomes) == 3
    assert sorted(mocks.cancelled) == ["inference"] * 3  # the engine calls saw the cancel
    [rest] = batch.rests
    assert (rest.first, rest.chunks, rest.code) == (1, 3, "batch_cancelled")
    [final] = batch.finals
    assert final.status == "cancelled" and final.counts == RequestCounts(total=9, completed=0, failed=9)
    assert batch.events == ["batch.cancelled"]


async def test_the_completion_window_expires_the_batch(wf_client: Client):
    mocks = MockActivities(inference=until_cancelled)
    batch = BatchMocks(Queues(), new_batch_id(), lines=4, window=2)
    async with running(wf_client, mocks, batch):
        handle = await start(wf_client, batch, expires_at=int(time.time()) + 3)
        assert await handle.result() == "expired"
    [write] = batch.writes
    assert write.missing_code == "batch_expired" and {o.state for o in write.outcomes} == {"cancelled"}
    [rest] = batch.rests
    assert (rest.first, rest.code) == (1, "batch_expired")
    assert batch.finals[0].status == "expired" and batch.events == ["batch.expired"]


async def test_nothing_valid_fails_the_batch(wf_client: Client):
    mocks = MockActivities()
    batch = BatchMocks(Queues(), new_batch_id(), lines=0, window=2, invalid=1)
    async with running(wf_client, mocks, batch):
        handle = await start(wf_client, batch)
        assert await handle.result() == "failed"
    [mark] = batch.marks
    assert mark.status == "failed" and mark.errors[0].code == "invalid_request"
    assert batch.finals == [] and mocks.inferences == [] and batch.events == ["batch.failed"]


async def test_the_cancel_signal_is_kept_across_continue_as_new(wf_client: Client):
    mocks = MockActivities()
    batch = BatchMocks(Queues(), new_batch_id(), lines=40, window=2)
    async with running(wf_client, mocks, batch):
        handle = await start(wf_client, batch, lines_per_run=2)
        await eventually_async(lambda: len(batch.writes) >= 3, what="a few runs")
        await handle.signal(BATCH_CANCEL_SIGNAL)
        assert await handle.result() == "cancelled"
    assert 3 <= len(batch.writes) < 20 and batch.finals[0].status == "cancelled"
    assert batch.rests and batch.rests[0].first == len(batch.writes)
