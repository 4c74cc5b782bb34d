"""The rollout saga's activities (CPU queue): deploy / undeploy a candidate, score its verification
jobs, flip the alias by compare-and-set, and watch a version's error rate and latency."""

from __future__ import annotations

import asyncio
import json
from typing import Union

import msgspec
from nats.js import JetStreamContext
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestration.activities import heartbeats
from orchestration.deployers import Deployer, DeployError
from orchestration.model_registry import AliasConflict, CatalogConflict, ModelRegistry
from orchestration.streams import read_events
from orchestration.version_stats import watch_version
from schemas.catalog import ModelEntry
from schemas.events import Delta, Finished
from schemas.rollout import (
    AliasQuery,
    AliasRecord,
    DeployResult,
    FlipInput,
    MonitorInput,
    MonitorVerdict,
    RolloutInput,
    UndeployInput,
    VerifyCasesInput,
    VerifyReport,
    VerifySpec,
)

ALIAS_CONFLICT = "AliasConflict"
DEPLOY_FAILED = "DeployFailed"


class RolloutActivities:
    def __init__(self, js: JetStreamContext, registry: ModelRegistry, deployers: dict[str, Deployer]):
        self._js = js
        self._registry = registry
        self._deployers = deployers

    @activity.defn(name="rollout_read_alias")
    async def read_alias(self, query: AliasQuery) -> Union[AliasRecord, None]:
        got = await self._registry.get_alias(query.alias)
        return got[0] if got else None

    @activity.defn(name="rollout_describe")
    async def describe(self, query: AliasQuery) -> Union[ModelEntry, None]:
        """A model's entry, from the catalog file or the bucket."""
        return self._registry.file_entry(query.alias) or await self._registry.get_model(query.alias)

    @activity.defn(name="rollout_deploy")
    async def deploy(self, inp: RolloutInput) -> DeployResult:
        spec = inp.deploy
        try:
            entry = await self._deployers[spec.kind].deploy(spec)
        except DeployError as exc:
            raise ApplicationError(str(exc), type=DEPLOY_FAILED, non_retryable=not exc.retryable) from None
        if spec.kind == "registered":
            if await self._registry.get_model(entry.id) is None and self._registry.file_entry(entry.id) is None:
                raise ApplicationError(f"no model {entry.id!r} to roll out", type=DEPLOY_FAILED, non_retryable=True)
            return DeployResult(entry=entry, registered=False)
        if inp.tenant and not entry.tenant:
            entry = msgspec.structs.replace(entry, tenant=inp.tenant)
        try:
            added = await self._registry.put_model(entry)
        except CatalogConflict as exc:
            await self._deployers[spec.kind].undeploy(spec, entry.id)
            raise ApplicationError(str(exc), type=DEPLOY_FAILED, non_retryable=True) from None
        return DeployResult(entry=entry, registered=added or activity.info().attempt > 1)

    @activity.defn(name="rollout_undeploy")
    async def undeploy(self, inp: UndeployInput) -> None:
        if inp.registered:
            try:
                await self._registry.remove_model(inp.model_id)
            except CatalogConflict as exc:  # an alias serves it again: leave it up
                raise ApplicationError(str(exc), type=ALIAS_CONFLICT, non_retryable=True) from None
        try:
            await self._deployers[inp.deploy.kind].undeploy(inp.deploy, inp.model_id)
        except DeployError as exc:
            raise ApplicationError(str(exc), type=DEPLOY_FAILED, non_retryable=not exc.retryable) from None

    @activity.defn(name="rollout_flip")
    async def flip(self, change: FlipInput) -> AliasRecord:
        try:
            return await self._registry.flip(change)
        except (AliasConflict, CatalogConflict) as exc:
            raise ApplicationError(str(exc), type=ALIAS_CONFLICT, non_retryable=True) from None

    @activity.defn(name="rollout_score")
    async def score(self, inp: VerifyCasesInput) -> VerifyReport:
        """Each verification job's text from its event stream, judged by the spec's metric."""
        passed = 0
        for case, job_id in zip(inp.spec.cases, inp.job_ids):
            events = await read_events(self._js, job_id)
            if not any(isinstance(e, Finished) for e in events):
                continue  # the job failed: the case did not pass
            text = "".join(e.content for e in events if isinstance(e, Delta))
            passed += case_passes(inp.spec, case.expect, text)
        total = len(inp.spec.cases)
        return VerifyReport(model_id=inp.model_id, score=passed / total if total else 1.0, passed=passed, total=total)

    @activity.defn(name="rollout_monitor")
    async def monitor(self, inp: MonitorInput) -> MonitorVerdict:
        beat = asyncio.ensure_future(heartbeats(activity.info().heartbeat_timeout))
        try:
            return await watch_version(self._js, inp.model_id, inp.spec, inp.duration_s, inp.since)
        finally:
            beat.cancel()


def case_passes(spec: VerifySpec, expect: str, text: str) -> bool:
    if spec.metric == "exact":
        return text.strip() == expect.strip()
    if spec.metric == "contains":
        return expect.lower() in text.lower()
    try:
        json.loads(text)
        return True
    except ValueError:
        return False
