"""RolloutWorkflow: deploy a candidate -> verify it through the normal job path -> optional canary ->
flip the alias (one compare-and-set) -> monitor -> deployed, or rolled back on a breach or a signal.

Each stage's compensation runs when a later one fails: the alias goes back to what it served, the
candidate's engine stops and its catalog entry goes. Deterministic; every side effect is an activity.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from orchestration.rollout_activities import ALIAS_CONFLICT, DEPLOY_FAILED, RolloutActivities
    from schemas.catalog import ModelEntry
    from schemas.jobs import CHAT_ENDPOINT, INFERENCE_WORKFLOW, InferenceInput, RetrySpec, WorkflowInput
    from schemas.rollout import (
        ROLLBACK_SIGNAL,
        ROLLOUT_WORKFLOW,
        AliasQuery,
        DeployResult,
        FlipInput,
        MonitorInput,
        MonitorVerdict,
        RolloutInput,
        RolloutResult,
        UndeployInput,
        VerifyCasesInput,
        VerifyReport,
    )

SHORT = timedelta(seconds=30)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.2), maximum_interval=timedelta(seconds=2),
                    maximum_attempts=5, non_retryable_error_types=[ALIAS_CONFLICT, DEPLOY_FAILED])
DRAIN_S = 5.0  # after a rollback, the candidate's in-flight requests finish before it stops


class StageFailed(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage


@workflow.defn(name=ROLLOUT_WORKFLOW)
class RolloutWorkflow:
    def __init__(self) -> None:
        self._rollback: str | None = None
        self._stage = "deploy"
        self._score = -1.0  # the candidate's verification score (-1: not verified)

    @workflow.signal(name=ROLLBACK_SIGNAL)
    def rollback(self, reason: str) -> None:
        self._rollback = reason or "rolled back by hand"

    @workflow.query(name="stage")
    def stage(self) -> str:
        return self._stage

    @workflow.run
    async def run(self, inp: RolloutInput) -> RolloutResult:
        alias = await _act(RolloutActivities.read_alias, AliasQuery(inp.alias))
        current = alias.target if alias else ""
        try:
            deployed: DeployResult = await _act(RolloutActivities.deploy, inp, timeout=timedelta(minutes=5))
        except ActivityError as err:
            return RolloutResult("failed", inp.alias, previous=current, stage="deploy", reason=_why(err))
        candidate = deployed.entry.id
        if candidate == current:  # nothing to move, and nothing to take down: it serves
            return RolloutResult("failed", inp.alias, candidate, current, "deploy",
                                 f"{inp.alias!r} serves {candidate!r} already")
        try:
            score = await self._verify(inp, deployed.entry, current)
            if inp.canary_percent > 0 and current:
                self._stage = "canary"
                await self._flip(inp, candidate, current, "canary", canary_percent=inp.canary_percent)
                verdict = await self._watch(inp, candidate, inp.canary_s)
                if verdict is not None:
                    await self._flip(inp, current, current, "serving", reason=verdict.reason)
                    raise StageFailed("canary", verdict.reason)
            self._stage = "flip"
            await self._flip(inp, candidate, current, "monitoring")
            self._stage = "monitor"
            verdict = await self._watch(inp, candidate, inp.monitor.duration_s)
            if verdict is not None:
                if not current:  # a first version: the alias goes with it
                    raise StageFailed("monitor", f"{verdict.reason}; there is no earlier version")
                await self._flip(inp, current, candidate, "rolled_back", reason=verdict.reason)
                took = workflow.now().timestamp() - verdict.breach_at if verdict.breach_at else -1.0
                self._stage = "rolled_back"
                await workflow.sleep(DRAIN_S)
                await self._undeploy(inp, deployed)
                return RolloutResult("rolled_back", inp.alias, candidate, current, "monitor", verdict.reason,
                                     score, took)
            await self._flip(inp, candidate, candidate, "deployed")
            self._stage = "deployed"
            return RolloutResult("deployed", inp.alias, candidate, current, score=score)
        except StageFailed as failed:
            await self._compensate(inp, deployed, current)
            return RolloutResult("failed", inp.alias, candidate, current, failed.stage, str(failed), self._score)
        except (ActivityError, ChildWorkflowError) as err:
            stage = self._stage
            await self._compensate(inp, deployed, current)
            return RolloutResult("failed", inp.alias, candidate, current, stage, _why(err), self._score)
        except asyncio.CancelledError:  # cancelled (by hand, or with a parent saga): compensate, then end cancelled
            await self._compensate(inp, deployed, current)
            raise

    async def _compensate(self, inp: RolloutInput, deployed: DeployResult, current: str) -> None:
        """The alias back where it was (or gone, if this rollout created it), then the candidate down."""
        await self._restore(inp, deployed.entry.id, current)
        self._stage = "failed"
        await self._undeploy(inp, deployed)

    async def _verify(self, inp: RolloutInput, entry: ModelEntry, current: str) -> float:
        """The cases through the normal job path (child InferenceWorkflows), scored by an activity."""
        if not inp.verify.cases:
            return -1.0
        self._stage = "verify"
        report = await self._run_cases(inp, entry, 0)
        self._score = report.score
        if report.score < inp.verify.min_score:
            raise StageFailed("verify", f"score {report.passed}/{report.total} below {inp.verify.min_score:g}")
        if inp.verify.compare_current and current:
            baseline = await self._run_cases(inp, None, 1, current)
            if report.score < baseline.score:
                raise StageFailed("verify", f"score {report.score:.2f} below the current version's {baseline.score:.2f}")
        return report.score

    async def _run_cases(self, inp: RolloutInput, entry: ModelEntry | None, n: int, model_id: str = "") -> VerifyReport:
        target = entry.id if entry is not None else model_id
        queue = entry.task_queue if entry is not None else ""
        if entry is None:  # the current version: its queue and timeouts from the catalog, by the activity
            known = await _act(RolloutActivities.describe, AliasQuery(target))
            if known is None:
                return VerifyReport(target, 0.0, 0, len(inp.verify.cases))
            entry = known
            queue = known.task_queue
        ids = tuple(f"{inp.rollout_id}-v{n}-{i}" for i in range(len(inp.verify.cases)))
        created = int(workflow.now().timestamp())
        runs = [workflow.execute_child_workflow(
            INFERENCE_WORKFLOW,
            WorkflowInput(inference=InferenceInput(job_id=job_id, model=target, endpoint=CHAT_ENDPOINT,
                                                   body={"messages": case.messages, "max_tokens": case.max_tokens,
                                                         "temperature": 0}, created=created, tenant=inp.tenant),
                          task_queue=queue, timeouts=entry.timeouts,
                          retry=RetrySpec(maximum_attempts=entry.retry.maximum_attempts),
                          webhook_queue=inp.cpu_queue),
            id=job_id, task_queue=inp.cpu_queue) for job_id, case in zip(ids, inp.verify.cases)]
        await asyncio.gather(*runs, return_exceptions=True)  # a failed job is a failed case
        return await _act(RolloutActivities.score, VerifyCasesInput(inp.rollout_id, target, inp.verify, ids),
                          timeout=timedelta(minutes=2))

    async def _watch(self, inp: RolloutInput, model_id: str, duration_s: float) -> MonitorVerdict | None:
        """A breach's verdict, a manual rollback's, or None when `duration_s` passed healthy."""
        if self._rollback is not None:
            return MonitorVerdict(False, reason=self._rollback, breach_at=workflow.now().timestamp())
        handle = workflow.start_activity_method(
            RolloutActivities.monitor,
            MonitorInput(model_id, inp.monitor, duration_s, since=workflow.now().timestamp()),
            start_to_close_timeout=timedelta(seconds=duration_s + 60), heartbeat_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=3))
        await workflow.wait_condition(lambda: handle.done() or self._rollback is not None)
        if not handle.done():
            handle.cancel()
            await asyncio.gather(handle, return_exceptions=True)
            return MonitorVerdict(False, reason=self._rollback or "", breach_at=workflow.now().timestamp())
        verdict = handle.result()
        return None if verdict.healthy else verdict

    async def _flip(self, inp: RolloutInput, to: str, expect: str, status: Any, *, reason: str = "",
                    canary_percent: float = 0.0) -> None:
        await _act(RolloutActivities.flip, FlipInput(alias=inp.alias, to=to, expect=expect, rollout_id=inp.rollout_id,
                                                     status=status, canary_percent=canary_percent,
                                                     tenant=inp.tenant, reason=reason))

    async def _restore(self, inp: RolloutInput, candidate: str, current: str) -> None:
        """The alias back on `current` after a failure past the canary (a no-op when it never moved);
        an alias this rollout created is removed."""
        if self._stage not in ("canary", "flip", "monitor"):
            return
        if not current:
            try:
                await self._flip(inp, "", candidate, "rolled_back", reason="the rollout failed")
            except ActivityError:
                pass
            return
        for expect in (candidate, current):
            try:
                await self._flip(inp, current, expect, "rolled_back" if expect == candidate else "serving",
                                 reason="the rollout failed")
                return
            except ActivityError:
                continue

    async def _undeploy(self, inp: RolloutInput, deployed: DeployResult) -> None:
        try:
            await _act(RolloutActivities.undeploy, UndeployInput(inp.deploy, deployed.entry.id, deployed.registered))
        except ActivityError as err:
            workflow.logger.warning("rollout compensation left the candidate: %s", _why(err))


async def _act(method: Any, arg: Any, timeout: timedelta = SHORT) -> Any:
    return await workflow.execute_activity_method(method, arg, start_to_close_timeout=timeout, retry_policy=RETRY)


def _why(err: Exception) -> str:
    cause = err.cause if isinstance(err, (ActivityError, ChildWorkflowError)) else err
    return cause.message if isinstance(cause, ApplicationError) else str(cause or err)
