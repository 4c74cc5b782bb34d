"""Admin API of model versions (operator keys only):

- `POST /admin/models/{alias}/rollouts`: start a RolloutWorkflow moving the alias to a new version
  (`to`: a model id already in the catalog, or `deploy`: a version to bring up first); 202.
- `POST /admin/models/{alias}/rollback`: the alias back on its previous version at once (one
  compare-and-set), and a running rollout of it told to stop; a canary is just ended.
- `GET /admin/models/{name}`: an alias's state (target, previous, canary, status, its rollout), or a
  model's catalog entry.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from gatekeeping.auth import Principal
from orchestration.model_registry import AliasConflict, CatalogConflict, CatalogView, ModelRegistry
from proxy.endpoints.admin import _admin, _body, _json
from proxy.runtime import Runtime
from schemas.errors import Conflict, Forbidden, InvalidRequest, NotFound
from schemas.rollout import (
    ROLLBACK_SIGNAL,
    ROLLOUT_WORKFLOW,
    AliasRecord,
    DeploySpec,
    FlipInput,
    RolloutInput,
    RolloutRequest,
    RolloutResult,
)


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")  # schemas.catalog.Name


def _name(request: Request) -> str:
    """The path's model name; one no catalog name can have is absent (404)."""
    name = request.path_params["model"]
    if not _NAME.match(name):
        raise NotFound(f"No model or alias '{name[:128]}'.", param="model", code="model_not_found")
    return str(name)


def rollout_workflow_id(alias: str) -> str:
    return f"rollout:{alias}"  # one rollout of an alias at a time


def _operator(request: Request) -> Principal:
    p = _admin(request)
    if not p.operator:
        raise Forbidden("Only an operator's admin key can move models.")
    return p


def _registry(rt: Runtime) -> ModelRegistry:
    if rt.registry is None:
        raise NotFound("This proxy has no live catalog.", code="not_found")
    return rt.registry


def alias_view(name: str, rec: AliasRecord, revision: int) -> dict[str, Any]:
    return {"id": name, "object": "model.alias", "revision": revision, **msgspec.to_builtins(rec)}


async def start_rollout(request: Request) -> Response:
    _operator(request)
    rt: Runtime = request.app.state.runtime
    alias = _name(request)
    body: RolloutRequest = await _body(request, RolloutRequest)
    if any(m.id == alias or alias in m.aliases for m in _file_models(rt)):
        raise InvalidRequest(f"'{alias}' is a model of the catalog file; roll out under an alias.", param="model")
    if body.to:
        entry = rt.catalog.get(body.to)
        if entry is None or entry.id != body.to:
            raise NotFound(f"No model '{body.to}' to roll out.", param="to", code="model_not_found")
        deploy = DeploySpec(kind="registered", entry=entry)
    elif body.deploy is not None:
        if body.deploy.entry is None:
            raise InvalidRequest("deploy.entry is required.", param="deploy.entry")
        deploy = body.deploy
    else:
        raise InvalidRequest("Name the new version: `to` (a model id) or `deploy`.", param="to")
    rollout_id = "rollout-" + uuid.uuid4().hex[:24]
    inp = RolloutInput(alias=alias, rollout_id=rollout_id, deploy=deploy, verify=body.verify,
                       canary_percent=body.canary_percent, canary_s=body.canary_s, monitor=body.monitor,
                       tenant=body.tenant, cpu_queue=rt.settings.workflow_queue)
    try:
        await rt.temporal.start_workflow(
            ROLLOUT_WORKFLOW, inp, id=rollout_workflow_id(alias), task_queue=rt.settings.workflow_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
    except WorkflowAlreadyStartedError:
        raise Conflict(f"A rollout of '{alias}' is running already.", code="rollout_running") from None
    assert deploy.entry is not None
    return _json({"id": rollout_id, "object": "model.rollout", "alias": alias, "candidate": deploy.entry.id,
                  "status": "running"}, 202)


def _file_models(rt: Runtime) -> list[Any]:
    return rt.catalog.base.models if isinstance(rt.catalog, CatalogView) else rt.catalog.models


async def rollback(request: Request) -> Response:
    _operator(request)
    rt: Runtime = request.app.state.runtime
    alias = _name(request)
    empty = request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
    body = RollbackRequest() if empty else await _body(request, RollbackRequest)
    reason = body.reason or "rolled back by hand"
    registry = _registry(rt)
    got = await registry.get_alias(alias)
    if got is None:
        raise NotFound(f"No alias '{alias}'.", param="model", code="model_not_found")
    rec, _ = got
    if rec.canary_target:
        change = FlipInput(alias=alias, to=rec.target, expect=rec.target, status="rolled_back", reason=reason)
    elif rec.previous:
        change = FlipInput(alias=alias, to=rec.previous, expect=rec.target, status="rolled_back", reason=reason)
    else:
        raise Conflict(f"'{alias}' has no earlier version to roll back to.", code="nothing_to_roll_back")
    try:
        new = await registry.flip(change)
    except (AliasConflict, CatalogConflict) as exc:
        raise Conflict(str(exc), code="alias_conflict") from None
    await _stop_rollout(rt, alias, reason)
    after = await registry.get_alias(alias)
    return _json(alias_view(alias, *(after or (new, 0))))


async def _stop_rollout(rt: Runtime, alias: str, reason: str) -> None:
    """A running rollout of the alias ends `rolled_back` (its own flip back finds the alias moved)."""
    handle = rt.temporal.get_workflow_handle(rollout_workflow_id(alias))
    try:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.signal(ROLLBACK_SIGNAL, reason)
    except RPCError:
        pass  # none ran, or it ended meanwhile


async def describe_model(request: Request) -> Response:
    _operator(request)
    rt: Runtime = request.app.state.runtime
    name = _name(request)
    got = await _registry(rt).get_alias(name)
    if got is not None:
        out = alias_view(name, *got)
        out["rollout"] = await _rollout_state(rt, name)
        return _json(out)
    entry = rt.catalog.get(name)
    if entry is None or entry.id != name:
        raise NotFound(f"No model or alias '{name}'.", param="model", code="model_not_found")
    return _json({"id": name, "object": "model", "entry": msgspec.to_builtins(entry)})


async def _rollout_state(rt: Runtime, alias: str) -> dict[str, Any] | None:
    handle = rt.temporal.get_workflow_handle(rollout_workflow_id(alias), result_type=RolloutResult)
    try:
        info = await handle.describe()
    except RPCError:
        return None
    state: dict[str, Any] = {"status": info.status.name.lower() if info.status else "unknown"}
    if info.status == WorkflowExecutionStatus.RUNNING:
        try:
            state["stage"] = await handle.query("stage")
        except RPCError:
            pass
    elif info.status == WorkflowExecutionStatus.COMPLETED:
        state["result"] = msgspec.to_builtins(await handle.result())
    return state


ROUTES = [
    Route("/admin/models/{model:path}/rollouts", start_rollout, methods=["POST"]),
    Route("/admin/models/{model:path}/rollback", rollback, methods=["POST"]),
    Route("/admin/models/{model:path}", describe_model, methods=["GET"]),
]
