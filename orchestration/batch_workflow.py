"""The batch workflow (ADR-003: child workflows in bounded windows, continue-as-new before the history
grows): validating -> in_progress -> finalizing -> completed, or failed / cancelled / expired.

Each line is an ordinary InferenceWorkflow child whose id is `<batch_id>-<line index>`, so no line
runs twice, at Temporal's least urgent priority, so interactive jobs overtake it. The activities run
in the proxy replicas (task queue `switchyard-proxy`), where lines are prepared and admitted exactly
as the HTTP endpoints do it; this module knows them only by the stubs below. Deterministic: no I/O."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import CancelledError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    import msgspec

    from schemas.batches import (
        BATCH_CANCEL_SIGNAL,
        BATCH_CANCELLED,
        BATCH_EXPIRED,
        BATCH_PRIORITY,
        BATCH_WORKFLOW,
        PROXY_QUEUE,
        AdmitInput,
        AdmitResult,
        BatchInput,
        BatchProgress,
        FinalizeInput,
        LineJob,
        LineOutcome,
        MarkInput,
        Refused,
        RequestCounts,
        RestInput,
        ValidateInput,
        ValidateResult,
        WriteInput,
    )
    from orchestration.tenant_events import TenantEvents
    from schemas.jobs import INFERENCE_WORKFLOW, InferenceSummary
    from schemas.tenant_webhooks import TenantEventInput

# The proxy replicas come and go (a restart, a deploy): activities retry until one serves them.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10))
SHORT = timedelta(seconds=60)
LONG = timedelta(minutes=30)  # validation and the final join read and write whole files; they heartbeat
HEARTBEAT = timedelta(seconds=20)


class BatchActivities:
    """Stubs of the batch activities (Temporal's pattern for activities implemented elsewhere):
    proxy/batches/activities.py serves them under these names on PROXY_QUEUE."""

    @activity.defn(name="batch_validate")
    async def validate(self, inp: ValidateInput) -> ValidateResult:
        raise NotImplementedError

    @activity.defn(name="batch_admit")
    async def admit(self, inp: AdmitInput) -> AdmitResult:
        raise NotImplementedError

    @activity.defn(name="batch_write")
    async def write(self, inp: WriteInput) -> RequestCounts:
        raise NotImplementedError

    @activity.defn(name="batch_write_rest")
    async def write_rest(self, inp: RestInput) -> RequestCounts:
        raise NotImplementedError

    @activity.defn(name="batch_mark")
    async def mark(self, inp: MarkInput) -> None:
        raise NotImplementedError

    @activity.defn(name="batch_finalize")
    async def finalize(self, inp: FinalizeInput) -> None:
        raise NotImplementedError


@workflow.defn(name=BATCH_WORKFLOW)
class BatchWorkflow:
    def __init__(self) -> None:
        self._cancel = False
        self._expired = False
        self._in_flight: dict[int, dict[int, asyncio.Task[LineOutcome]]] = {}  # chunk -> line -> child
        self._admitting: set[int] = set()  # chunks whose lines are not all started yet
        self._writing = asyncio.Lock()  # one chunk's counts at a time: each write builds on the last
        self._queue = PROXY_QUEUE

    @workflow.signal(name=BATCH_CANCEL_SIGNAL)
    def cancel(self) -> None:
        self._cancel = True

    @workflow.run
    async def run(self, inp: BatchInput) -> str:
        self._queue = inp.proxy_queue
        p = inp.progress or await self._validate(inp)
        if p is None:
            await self._notify(inp, "batch.failed")
            return "failed"
        await self._run_chunks(inp, p)
        if p.stopping and p.next_chunk < p.chunks:
            code = BATCH_EXPIRED if p.stopping == "expired" else BATCH_CANCELLED
            p.counts = await self._act(BatchActivities.write_rest, RestInput(
                batch_id=inp.batch_id, tenant=inp.tenant, first=p.next_chunk, chunks=p.chunks, code=code,
                before=p.counts), LONG)
        status = p.stopping or "completed"
        await self._act(BatchActivities.finalize, FinalizeInput(
            batch_id=inp.batch_id, tenant=inp.tenant, chunks=p.chunks, status=status, counts=p.counts), LONG)
        await self._notify(inp, f"batch.{status}")
        return status

    # ---- the steps --------------------------------------------------------------------------------
    async def _validate(self, inp: BatchInput) -> BatchProgress | None:
        result = await self._act(BatchActivities.validate, ValidateInput(
            batch_id=inp.batch_id, tenant=inp.tenant, principal=inp.principal, endpoint=inp.endpoint,
            input_file_id=inp.input_file_id, window=inp.window), LONG)
        counts = RequestCounts(total=result.total, failed=result.invalid)
        if result.errors:
            await self._act(BatchActivities.mark, MarkInput(batch_id=inp.batch_id, tenant=inp.tenant,
                                                            status="failed", counts=counts, errors=result.errors),
                            SHORT)
            return None
        return BatchProgress(chunks=result.chunks, counts=counts)

    async def _run_chunks(self, inp: BatchInput, p: BatchProgress) -> None:
        """Chunk after chunk, the next one started once half a window is left in flight (so the
        engines never wait for a window's slowest line), at most two open. Continue-as-new after
        `lines_per_run` lines, between chunks with nothing in flight."""
        per_run = max(1, inp.lines_per_run // inp.window)
        started_here = 0
        running: list[asyncio.Task[None]] = []
        while p.next_chunk < p.chunks and not self._stop_reason(inp):
            if started_here >= per_run:
                await asyncio.gather(*running)
                if self._stop_reason(inp):
                    break
                workflow.continue_as_new(msgspec.structs.replace(
                    inp, progress=msgspec.structs.replace(p, runs=p.runs + 1)))
            running.append(asyncio.ensure_future(self._window(inp, p, p.next_chunk)))
            p.next_chunk += 1
            started_here += 1
            await workflow.wait_condition(lambda: self._stop_reason(inp) != "" or all(t.done() for t in running) or (
                sum(not t.done() for t in running) < 2 and not self._admitting
                and self._lines_in_flight() <= inp.window // 2))
        await asyncio.gather(*running)
        p.stopping = p.stopping or self._stop_reason(inp)

    async def _window(self, inp: BatchInput, p: BatchProgress, chunk: int) -> None:
        """Runs one prepared chunk's lines as children; a rate-limited line waits and is admitted
        again. Writes the chunk's output and error parts."""
        only: list[int] | None = None
        refused: list[Refused] = []
        children = self._in_flight[chunk] = {}
        self._admitting.add(chunk)
        while True:
            admitted = await self._act(BatchActivities.admit, AdmitInput(
                batch_id=inp.batch_id, principal=inp.principal, chunk=chunk, only=only), SHORT)
            refused.extend(admitted.refused)
            for job in admitted.admitted:
                children[job.index] = asyncio.ensure_future(self._line(inp, job))
            if not admitted.waiting or await self._stopped_within(inp, admitted.retry_after_s):
                break
            only = admitted.waiting
        self._admitting.discard(chunk)
        remaining = self._until_expiry(inp)
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            await workflow.wait_condition(lambda: all(t.done() for t in children.values()) or self._cancel,
                                          timeout=remaining)
        except asyncio.TimeoutError:
            self._expired = True
        stopping = self._stop_reason(inp)
        if stopping:
            for task in children.values():
                task.cancel()  # cancels the child workflow; _line reports it cancelled
        outcomes = list(await asyncio.gather(*children.values()))
        del self._in_flight[chunk]
        async with self._writing:
            p.counts = await self._act(BatchActivities.write, WriteInput(
                batch_id=inp.batch_id, tenant=inp.tenant, chunk=chunk, outcomes=outcomes, refused=refused,
                missing_code=BATCH_EXPIRED if stopping == "expired" else BATCH_CANCELLED, before=p.counts), SHORT)

    async def _line(self, inp: BatchInput, job: LineJob) -> LineOutcome:
        inference = job.inp.inference
        outcome = LineOutcome(index=job.index, custom_id=job.custom_id, job_id=inference.job_id,
                              endpoint=inference.endpoint, model=inference.model, created=inference.created,
                              state="succeeded")
        try:
            await workflow.execute_child_workflow(
                INFERENCE_WORKFLOW, job.inp, id=inference.job_id, task_queue=inp.cpu_queue,
                result_type=InferenceSummary, priority=Priority(priority_key=BATCH_PRIORITY),
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL)
        except ChildWorkflowError as err:
            outcome.state = "cancelled" if isinstance(err.cause, CancelledError) else "failed"
        except asyncio.CancelledError:
            outcome.state = "cancelled"
        return outcome

    async def _notify(self, inp: BatchInput, event_type: str) -> None:
        """batch.completed|failed|cancelled|expired for the tenant's webhook endpoints (each delivered
        by its own workflow, which this one does not wait for)."""
        await workflow.execute_activity_method(
            TenantEvents.notify_tenant, TenantEventInput(tenant=inp.tenant, type=event_type, data_id=inp.batch_id,
                                                         created_at=int(workflow.now().timestamp())),
            task_queue=inp.cpu_queue, start_to_close_timeout=SHORT, retry_policy=RETRY)

    # ---- helpers ----------------------------------------------------------------------------------
    def _stop_reason(self, inp: BatchInput) -> str:
        if self._cancel:
            return "cancelled"
        return "expired" if self._expired or self._until_expiry(inp) <= 0 else ""

    def _lines_in_flight(self) -> int:
        return sum(not t.done() for children in self._in_flight.values() for t in children.values())

    def _until_expiry(self, inp: BatchInput) -> float:
        return max(0.0, inp.expires_at - workflow.now().timestamp())

    async def _stopped_within(self, inp: BatchInput, seconds: float) -> bool:
        try:
            await workflow.wait_condition(lambda: self._cancel, timeout=min(max(seconds, 0.5),
                                                                           self._until_expiry(inp) + 0.001))
        except asyncio.TimeoutError:
            return self._until_expiry(inp) <= 0
        return True

    async def _act(self, method, arg, timeout: timedelta):
        return await workflow.execute_activity_method(
            method, arg, task_queue=self._queue, start_to_close_timeout=timeout,
            heartbeat_timeout=HEARTBEAT if timeout is LONG else None, retry_policy=RETRY)
