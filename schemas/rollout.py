"""The catalog's moving parts held in NATS KV (aliases, dynamic models) and the rollout saga's
inputs and outputs (verify -> canary -> flip -> monitor -> rollback)."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec
from msgspec import Meta
from typing_extensions import Annotated

from schemas.catalog import ModelEntry, Name

ROLLOUT_WORKFLOW = "RolloutWorkflow"
ROLLBACK_SIGNAL = "rollback"
Percent = Annotated[float, Meta(ge=0, le=100)]
AliasStatus = Literal["serving", "canary", "monitoring", "deployed", "rolled_back"]


class AliasRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """`alias.<name>` in the catalog bucket: the version an alias serves. Changed only by a
    compare-and-set on the key's last revision."""

    target: str
    previous: str = ""            # what it served before the last flip: the rollback target
    canary_target: str = ""       # served to `canary_percent` of requests, the rest get `target`
    canary_percent: float = 0.0
    tenant: str = ""              # an owning tenant: the alias is invisible to the others
    status: AliasStatus = "serving"
    rollout_id: str = ""          # the rollout workflow that last moved it
    updated_at: float = 0.0
    reason: str = ""              # why it last moved (a breach, a manual rollback)


class VerifyCase(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    messages: list[dict[str, Any]]
    expect: str = ""              # exact / contains: the text; json_valid: unused
    max_tokens: Annotated[int, Meta(ge=1)] = 64


class VerifySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cases: tuple[VerifyCase, ...] = ()
    metric: Literal["exact", "contains", "json_valid"] = "contains"
    min_score: Annotated[float, Meta(ge=0, le=1)] = 1.0     # share of cases that must pass
    compare_current: bool = False  # also run the cases on the current version: the candidate must not score less


class MonitorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    duration_s: Annotated[float, Meta(ge=0)] = 60.0     # how long the new version is watched after the flip
    window_s: Annotated[float, Meta(gt=0)] = 10.0       # the rolling window the SLOs are judged over
    max_error_rate: Annotated[float, Meta(ge=0, le=1)] = 0.2
    max_p95_ms: Annotated[float, Meta(ge=0)] = 0.0      # 0: latency is not judged
    min_requests: Annotated[int, Meta(ge=1)] = 5        # fewer outcomes in the window: no verdict yet
    poll_s: Annotated[float, Meta(gt=0)] = 0.5


class DeploySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the candidate comes up. `entry` is its catalog entry (for local_process its engine URL
    is replaced by the started server's; for triton/vllm_lora its served_name is the model/adapter)."""

    kind: Literal["registered", "entry", "local_process", "triton", "vllm_lora"]
    entry: Union[ModelEntry, None] = None
    model_path: str = ""          # local_process: the GGUF; vllm_lora: the adapter's path on the vLLM host
    engine_args: tuple[str, ...] = ()
    engine_url: str = ""          # triton: the server (http://host:port); vllm_lora: vLLM's base URL (…/v1)


class RolloutRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of POST /admin/models/{alias}/rollouts (and the CLI's): `to` an existing model id,
    or `deploy` a new version."""

    to: str = ""
    deploy: Union[DeploySpec, None] = None
    verify: VerifySpec = VerifySpec()
    canary_percent: Percent = 0.0
    canary_s: Annotated[float, Meta(ge=0)] = 0.0
    monitor: MonitorSpec = MonitorSpec()
    tenant: str = ""              # the alias and candidate belong to this tenant only


class RolloutInput(msgspec.Struct, frozen=True):
    alias: Name
    rollout_id: str
    deploy: DeploySpec
    verify: VerifySpec = VerifySpec()
    canary_percent: float = 0.0
    canary_s: float = 0.0
    monitor: MonitorSpec = MonitorSpec()
    tenant: str = ""
    cpu_queue: str = "cpu"


class RolloutResult(msgspec.Struct, frozen=True):
    status: Literal["deployed", "rolled_back", "failed"]
    alias: str
    candidate: str = ""
    previous: str = ""
    stage: str = ""               # the stage that failed or breached
    reason: str = ""
    score: float = -1.0
    breach_to_rollback_s: float = -1.0


class DeployResult(msgspec.Struct, frozen=True):
    entry: ModelEntry
    registered: bool              # this rollout added the entry (so its compensation removes it)


class UndeployInput(msgspec.Struct, frozen=True):
    deploy: DeploySpec
    model_id: str
    registered: bool


class FlipInput(msgspec.Struct, frozen=True):
    """Set the alias to `to` if it still serves `expect` ("" = the alias may not exist yet)."""

    alias: str
    to: str
    expect: str
    rollout_id: str = ""
    status: AliasStatus = "monitoring"
    canary_percent: float = 0.0   # >0: only a canary of `to`, the target stays
    tenant: str = ""
    reason: str = ""


class AliasQuery(msgspec.Struct, frozen=True):
    alias: str


class VerifyCasesInput(msgspec.Struct, frozen=True):
    rollout_id: str
    model_id: str
    spec: VerifySpec
    job_ids: tuple[str, ...]


class VerifyReport(msgspec.Struct, frozen=True):
    model_id: str
    score: float
    passed: int
    total: int


class MonitorInput(msgspec.Struct, frozen=True):
    model_id: str
    spec: MonitorSpec
    duration_s: float
    since: float = 0.0            # unix seconds: outcomes before it are not counted


class MonitorVerdict(msgspec.Struct, frozen=True):
    healthy: bool
    requests: int = 0
    errors: int = 0
    p95_ms: float = 0.0
    reason: str = ""
    breach_at: float = 0.0        # unix seconds of the verdict


class VersionOutcome(msgspec.Struct, frozen=True, array_like=True):
    """One inference attempt's outcome, published by the worker on `sy.modelstats.<model>`."""

    ts: float
    ok: bool
    latency_ms: float
