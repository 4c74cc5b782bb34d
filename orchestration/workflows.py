"""The inference workflow. Deterministic: no I/O, no clock, no randomness; the sandbox stays on."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ParentClosePolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    import msgspec

    from orchestration.activities import InferenceActivities
    from orchestration.delivery import WebhookActivities
    from orchestration.dispatch import DirectRuns
    from schemas.events import JOB_CANCELLED, JOB_FAILED, JOB_SUCCEEDED
    from schemas.jobs import (
        ADOPT_SCHEDULE_TO_START_S,
        INFERENCE_WORKFLOW,
        NO_CAPACITY,
        AdoptInput,
        InferenceInput,
        InferenceSummary,
        RetrySpec,
        StageTimeouts,
        SettlementRequest,
        TerminalNotice,
        WebhookDelivery,
        WorkflowInput,
    )
    from orchestration.tenant_events import TenantEvents
    from schemas.openai import ErrorBody
    from schemas.responses import RESPONSES_ENDPOINT, WEBHOOK_EVENTS, ended_status
    from schemas.tenant_webhooks import TenantEventInput

NON_RETRYABLE = ["NoAdapter", "JobCancelled", "JobEnded"]
LOCAL_TIMEOUT = timedelta(seconds=30)
LOCAL_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=5))


@workflow.defn(name=INFERENCE_WORKFLOW)
class InferenceWorkflow:
    @workflow.run
    async def run(self, inp: WorkflowInput) -> InferenceSummary:
        job_id = inp.inference.job_id
        try:
            if inp.then:
                workflow.upsert_memo({"stage": inp.inference.stage})
            summary = await _first_stage(inp)
            for step in inp.then:  # a pipeline: each stage reads the one before from the object store
                inference = step.inference
                inference = msgspec.structs.replace(
                    inference, options={**inference.options, "context_ref": summary.result_ref})
                workflow.upsert_memo({"stage": inference.stage})
                summary = await _inference(inference, step.task_queue, step.timeouts, step.retry)
        except asyncio.CancelledError:
            await self._cancelled(inp)
            raise
        except ActivityError as err:
            if cancelled_by_client(err):  # the cancel reached the activity, or ended it while queued
                await self._cancelled(inp)
                raise asyncio.CancelledError() from None
            notice = failure_notice(job_id, err)
            await workflow.execute_local_activity_method(InferenceActivities.publish_terminal, notice,
                                                         start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=LOCAL_RETRY)
            assert notice.error is not None
            await self._settle(inp, None)
            await self._notify(inp, JOB_FAILED, {"status": "failed", "error": notice.error})
            await _tenant_event(inp, "failed")
            raise ApplicationError(notice.error.message, notice.status, notice.error.code,
                                   type="JobFailed", non_retryable=True) from None
        await self._settle(inp, summary.usage.total_tokens)
        await self._notify(inp, JOB_SUCCEEDED, {"status": "succeeded", "usage": summary.usage,
                                                "finish_reason": summary.finish_reason})
        await _tenant_event(inp, "succeeded", summary.finish_reason)
        return summary

    async def _cancelled(self, inp: WorkflowInput) -> None:
        # Local activities run on this worker and take none of the engine's slots.
        await workflow.execute_local_activity_method(
            InferenceActivities.publish_terminal, TerminalNotice(job_id=inp.inference.job_id, kind="cancelled"),
            start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=LOCAL_RETRY)
        await self._settle(inp, None)
        await self._notify(inp, JOB_CANCELLED, {"status": "cancelled"})
        await _tenant_event(inp, "cancelled")

    async def _settle(self, inp: WorkflowInput, actual: int | None) -> None:
        if inp.admission is None:
            return
        request = SettlementRequest(job_id=inp.inference.job_id, admission=inp.admission,
                                    actual_tokens=actual, prompt_estimate=inp.prompt_estimate)
        await workflow.execute_local_activity_method(InferenceActivities.publish_settlement, request,
                                                     start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=LOCAL_RETRY)

    async def _notify(self, inp: WorkflowInput, event_type: str, data: dict) -> None:
        if not inp.webhook_url:
            return
        job_id = inp.inference.job_id
        delivery = WebhookDelivery(job_id=job_id, url=inp.webhook_url, event_type=event_type,
                                   created_at=int(workflow.now().timestamp()),
                                   data={"id": job_id, "object": "job", "model": inp.inference.model,
                                         "result_url": f"/v1/jobs/{job_id}/result", **data})
        await workflow.start_child_workflow(
            WEBHOOK_WORKFLOW, delivery, id=f"{job_id}-webhook", task_queue=inp.webhook_queue,
            parent_close_policy=ParentClosePolicy.ABANDON)


async def _tenant_event(inp: WorkflowInput, outcome: str, finish_reason: str | None = None) -> None:
    """A response's end, for the tenant's webhook endpoints (OpenAI's `response.*` events)."""
    inference = inp.inference
    if inference.endpoint != RESPONSES_ENDPOINT:
        return
    event = TenantEventInput(tenant=inference.tenant, type=WEBHOOK_EVENTS[ended_status(outcome, finish_reason)],
                             data_id=inference.job_id, created_at=int(workflow.now().timestamp()))
    try:
        await workflow.execute_activity_method(
            TenantEvents.notify_tenant, event, task_queue=inp.webhook_queue,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=5))
    except ActivityError:
        workflow.logger.warning("the tenant's webhook endpoints could not be notified")


async def _first_stage(inp: WorkflowInput) -> InferenceSummary:
    """A dispatched run is adopted on the worker that runs it; when that worker is gone or the run
    failed in a way worth retrying, the model's queue takes over from the output delivered."""
    inference = inp.inference
    if inp.dispatched_to:
        t = inp.timeouts
        try:
            return await workflow.execute_activity_method(
                DirectRuns.adopt, AdoptInput(job_id=inference.job_id), task_queue=inp.dispatched_to,
                schedule_to_start_timeout=timedelta(seconds=ADOPT_SCHEDULE_TO_START_S),
                start_to_close_timeout=timedelta(seconds=t.start_to_close_s),
                heartbeat_timeout=timedelta(seconds=t.heartbeat_s),
                retry_policy=RetryPolicy(maximum_attempts=1))
        except ActivityError as err:
            if cancelled_by_client(err) or _final(err):
                raise
            # Only a lost adoption can leave the run alive (its worker slow, not dead); a run that
            # failed, or was gone when the adoption came, is over.
            lost = isinstance(err.cause, TimeoutError)
        inference = msgspec.structs.replace(inference, continuing=True, withdraw=lost)
        # The dispatched run was the first attempt of the catalog's `maximum_attempts`.
        left = max(1, inp.retry.maximum_attempts - 1) if inp.retry.maximum_attempts else 0
        return await _inference(inference, inp.task_queue, inp.timeouts,
                                msgspec.structs.replace(inp.retry, maximum_attempts=left))
    return await _inference(inference, inp.task_queue, inp.timeouts, inp.retry)


def _final(err: ActivityError) -> bool:
    cause = err.cause
    return isinstance(cause, ApplicationError) and (cause.non_retryable or cause.type in NON_RETRYABLE)


def cancelled_by_client(err: ActivityError) -> bool:
    cause = err.cause
    return isinstance(cause, CancelledError) or (isinstance(cause, ApplicationError)
                                                   and cause.type == "JobCancelled")


async def _inference(inference: InferenceInput, task_queue: str, t: StageTimeouts,
                     r: RetrySpec) -> InferenceSummary:
    return await workflow.execute_activity_method(
        InferenceActivities.inference,
        inference,
        task_queue=task_queue,
        schedule_to_start_timeout=timedelta(seconds=t.schedule_to_start_s),
        start_to_close_timeout=timedelta(seconds=t.start_to_close_s),
        heartbeat_timeout=timedelta(seconds=t.heartbeat_s),
        retry_policy=RetryPolicy(
            initial_interval=timedelta(seconds=r.initial_interval_s),
            backoff_coefficient=r.backoff,
            maximum_interval=timedelta(seconds=r.maximum_interval_s),
            maximum_attempts=r.maximum_attempts,
            non_retryable_error_types=NON_RETRYABLE,
        ),
    )


def failure_notice(job_id: str, err: ActivityError) -> TerminalNotice:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        d = cause.details[0]
        return TerminalNotice(job_id=job_id, kind="failed", status=int(d.get("status") or 500),
                              error=ErrorBody(message=cause.message, type=d.get("type") or "server_error",
                                              param=d.get("param"), code=d.get("code")))
    if isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START:
        return TerminalNotice(job_id=job_id, kind="failed", status=503,
                              error=ErrorBody(message=NO_CAPACITY, type="server_error", code="no_capacity"))
    if isinstance(cause, TimeoutError):
        return TerminalNotice(job_id=job_id, kind="failed", status=503,
                              error=ErrorBody(message="the engine did not answer in time",
                                              type="server_error", code="engine_timeout"))
    message = cause.message if isinstance(cause, ApplicationError) else "inference failed"
    return TerminalNotice(job_id=job_id, kind="failed", status=500,
                          error=ErrorBody(message=message, type="server_error", code="internal_error"))


WEBHOOK_WORKFLOW = "WebhookWorkflow"


@workflow.defn(name=WEBHOOK_WORKFLOW)
class WebhookWorkflow:
    """Delivers one webhook for hours if need be; the job's own workflow does not wait for it."""

    @workflow.run
    async def run(self, delivery: WebhookDelivery) -> int:
        return await workflow.execute_activity_method(
            WebhookActivities.deliver_webhook, delivery,
            start_to_close_timeout=timedelta(seconds=20),
            schedule_to_close_timeout=timedelta(hours=24),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                                     maximum_interval=timedelta(hours=1), maximum_attempts=0,
                                     non_retryable_error_types=["WebhookGone", "WebhookTargetRefused",
                                                                "WebhookSecretMissing"]))
