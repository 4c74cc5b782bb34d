"""FineTuningWorkflow, the saga of one fine-tuning job:
validate (collect the data) -> train (a long activity; its heartbeat carries the last checkpoint)
-> verify (a candidate engine of its own runs the held-out cases) -> deploy (a child
RolloutWorkflow registers the tenant-only model and flips its alias) -> succeeded.

A failure at any stage, or a cancel, runs the compensations of the stages before it (stop the
candidate engine, remove the artifacts; the rollout child restores its alias itself) and ends the
job `failed` (the error names the stage) or `cancelled`. Deterministic: every effect is an activity.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, ChildWorkflowError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    import msgspec

    from orchestration.fine_tuning_activities import BAD_DATA, FineTuningActivities
    from orchestration.tenant_events import TenantEvents
    from orchestration.training.data import TEMPLATE_STOPS
    from schemas.catalog import EngineSpec
    from schemas.fine_tuning import (
        FINE_TUNING_WORKFLOW,
        Candidate,
        CandidateInput,
        FineTuningError,
        FineTuningInput,
        DatasetInput,
        JobRef,
        JobUpdate,
        TrainInput,
        TrainResult,
        VerifyInput,
    )
    from schemas.rollout import ROLLOUT_WORKFLOW, DeploySpec, MonitorSpec, RolloutInput, RolloutResult
    from schemas.tenant_webhooks import TenantEventInput

SHORT = timedelta(seconds=30)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.5), maximum_interval=timedelta(seconds=5),
                    maximum_attempts=5, non_retryable_error_types=[BAD_DATA])
TRAIN_HEARTBEAT = timedelta(seconds=15)  # a killed worker's training is retried elsewhere after this
NOTIFY_TYPES = {"succeeded": "fine_tuning.job.succeeded", "failed": "fine_tuning.job.failed",
                "cancelled": "fine_tuning.job.cancelled"}


class StageFailed(Exception):
    def __init__(self, stage: str, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.stage, self.code, self.param = stage, code, param


@workflow.defn(name=FINE_TUNING_WORKFLOW)
class FineTuningWorkflow:
    def __init__(self) -> None:
        self._seq = 0
        self._stage = "validate"
        self._candidate: Candidate | None = None
        self._trained = False

    @workflow.query(name="stage")
    def stage(self) -> str:
        return self._stage

    @workflow.run
    async def run(self, inp: FineTuningInput) -> str:
        try:
            await self._saga(inp)
        except asyncio.CancelledError:
            await self._end_cancelled(inp)
            raise
        except (ActivityError, ChildWorkflowError, StageFailed) as err:
            if _cancelled(err):
                await self._end_cancelled(inp)
                raise asyncio.CancelledError() from None
            failed = err if isinstance(err, StageFailed) else _stage_failed(self._stage, err)
            await self._compensate(inp)
            error = FineTuningError(code=failed.code, message=f"{failed.stage} stage failed: {failed}",
                                    param=failed.param)
            await self._update(inp, f"Fine-tuning job failed in the {failed.stage} stage: {failed}",
                               level="error", status="failed", error=error)
            await self._notify(inp, "failed")
            raise ApplicationError(error.message, type="FineTuningFailed", non_retryable=True) from None
        return "succeeded"

    async def _saga(self, inp: FineTuningInput) -> None:
        await self._update(inp, f"Created fine-tuning job {inp.job_id}; validating training file {inp.training_file}")
        dataset = await self._act(FineTuningActivities.collect, DatasetInput(
            job_id=inp.job_id, tenant=inp.tenant, model=inp.model, training_file=inp.training_file,
            validation_file=inp.validation_file), timeout=timedelta(minutes=5))
        await self._update(inp, f"Files validated: {dataset.examples} training examples, "
                           f"{dataset.held_out} held out for verification", status="queued",
                           data={"examples": dataset.examples, "held_out": dataset.held_out})
        self._stage, self._trained = "train", True
        await self._update(inp, "Fine-tuning job started", status="running")
        trained: TrainResult = await workflow.execute_activity_method(
            FineTuningActivities.train, TrainInput(job_id=inp.job_id, tenant=inp.tenant, model=inp.model,
                                                   train_ref=dataset.train_ref, plan=inp.plan),
            task_queue=inp.train_queue, start_to_close_timeout=timedelta(hours=12),
            schedule_to_start_timeout=timedelta(hours=1), heartbeat_timeout=TRAIN_HEARTBEAT,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5,
                                     non_retryable_error_types=[BAD_DATA, "TrainingDataGone"]))
        tokens = dataset.estimated_tokens * trained.epochs
        await self._update(inp, f"Training done: {trained.epochs} epochs"
                           + (f", resumed from epoch {trained.resumed_from}" if trained.resumed_from else ""),
                           type="metrics", trained_tokens=tokens,
                           data={"epochs": trained.epochs, "resumed_from_epoch": trained.resumed_from})
        self._stage = "verify"
        self._candidate = await self._act(FineTuningActivities.start_candidate,
                                          CandidateInput(job_id=inp.job_id, model_path=trained.model_path),
                                          timeout=timedelta(minutes=3), queue=inp.train_queue)
        report = await self._act(FineTuningActivities.verify, VerifyInput(
            job_id=inp.job_id, base_model=inp.model, candidate=self._candidate, cases_ref=dataset.cases_ref,
            spec=inp.verification), timeout=timedelta(minutes=10), queue=inp.train_queue)
        await self._stop_candidate(inp)
        await self._update(inp, f"Verification: {inp.verification.metric} pass rate "
                           f"{report.candidate_score:.2f} on {report.cases} held-out cases"
                           + (f" (base model: {report.base_score:.2f})" if report.base_score is not None else ""),
                           type="metrics", data=msgspec.to_builtins(report))
        if not report.passed:
            raise StageFailed("verify", "verification_failed", report.reason)
        self._stage = "deploy"
        result: RolloutResult = await workflow.execute_child_workflow(
            ROLLOUT_WORKFLOW, _rollout(inp, trained.model_path), id=f"{inp.job_id}-deploy",
            task_queue=inp.cpu_queue, result_type=RolloutResult)
        if result.status != "deployed":
            raise StageFailed("deploy", "deploy_failed", result.reason or result.status)
        self._stage = "succeeded"
        await self._update(inp, "The job has successfully completed", status="succeeded",
                           fine_tuned_model=inp.fine_tuned_model)
        await self._notify(inp, "succeeded")

    async def _end_cancelled(self, inp: FineTuningInput) -> None:
        await self._compensate(inp)
        await self._update(inp, "Fine-tuning job cancelled", status="cancelled")
        await self._notify(inp, "cancelled")

    async def _compensate(self, inp: FineTuningInput) -> None:
        """Undoes the stages done, newest first: the candidate engine, then the artifacts. (The
        rollout child restores its alias and stops its engine itself before it fails.)"""
        await self._stop_candidate(inp)
        if self._trained:
            await self._act(FineTuningActivities.remove_artifacts, JobRef(job_id=inp.job_id, tenant=inp.tenant),
                            queue=inp.train_queue, timeout=timedelta(minutes=2))
            await self._update(inp, "Compensation: candidate stopped, checkpoints and trained model removed",
                               level="warn")

    async def _stop_candidate(self, inp: FineTuningInput) -> None:
        if self._candidate is not None:
            await self._act(FineTuningActivities.stop_candidate, self._candidate, queue=inp.train_queue)
            self._candidate = None

    async def _update(self, inp: FineTuningInput, message: str, **fields: Any) -> None:
        self._seq += 1
        update = JobUpdate(job_id=inp.job_id, tenant=inp.tenant, seq=self._seq,
                           at=int(workflow.now().timestamp()), message=message, **fields)
        await workflow.execute_local_activity_method(FineTuningActivities.record, update,
                                                     start_to_close_timeout=SHORT, retry_policy=RETRY)

    async def _notify(self, inp: FineTuningInput, status: str) -> None:
        """The tenant's webhook endpoints subscribed to `fine_tuning.job.<status>` hear of the
        ending (signed, retried by their own workflows); a refusal does not change the job."""
        event = TenantEventInput(tenant=inp.tenant, type=NOTIFY_TYPES[status], data_id=inp.job_id,
                                 created_at=int(workflow.now().timestamp()))
        try:
            await self._act(TenantEvents.notify_tenant, event, queue=inp.cpu_queue)
        except ActivityError as err:
            workflow.logger.warning("fine-tuning job %s: webhooks not sent: %s", inp.job_id, err.cause)

    async def _act(self, method: Any, arg: Any, *, timeout: timedelta = SHORT, queue: str | None = None) -> Any:
        return await workflow.execute_activity_method(method, arg, task_queue=queue, start_to_close_timeout=timeout,
                                                      retry_policy=RETRY)


def _rollout(inp: FineTuningInput, model_path: str) -> RolloutInput:
    """The tuned model as the tenant's own catalog entry (the base's queue, limits and timeouts), its
    engine a llama-server started by the local-process deployer; the alias clients call is the
    job's `fine_tuned_model`."""
    version = f"{inp.fine_tuned_model}:v1"
    entry = msgspec.structs.replace(
        inp.base_entry, id=version, aliases=(), tenant=inp.tenant, owned_by=inp.tenant,
        created=int(workflow.now().timestamp()), default_params={"stop": list(TEMPLATE_STOPS)},
        engine=EngineSpec(kind="openai", url="http://127.0.0.1:9/v1", served_name=version,
                          capabilities=("chat", "completions")))
    return RolloutInput(alias=inp.fine_tuned_model, rollout_id=f"{inp.job_id}-deploy",
                        deploy=DeploySpec(kind="local_process", entry=entry, model_path=model_path),
                        monitor=MonitorSpec(duration_s=0.0), tenant=inp.tenant, cpu_queue=inp.cpu_queue)


def _cancelled(err: Exception) -> bool:
    cause = err.cause if isinstance(err, (ActivityError, ChildWorkflowError)) else None
    return isinstance(cause, CancelledError)


def _stage_failed(stage: str, err: ActivityError | ChildWorkflowError) -> StageFailed:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
        return StageFailed(stage, details.get("code") or f"{stage}_failed", cause.message, details.get("param"))
    return StageFailed(stage, f"{stage}_failed", str(cause or err))

