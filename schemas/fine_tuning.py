"""Fine-tuning jobs: OpenAI's wire shapes (/v1/fine_tuning/jobs) and the saga's inputs and outputs."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec
from msgspec import Meta
from typing_extensions import Annotated

from schemas.catalog import ModelEntry

FINE_TUNING_ENDPOINT = "/v1/fine_tuning/jobs"
FINE_TUNING_WORKFLOW = "FineTuningWorkflow"
FINETUNE_BUCKET = "sy_finetune"          # job records, by tenant
FINETUNE_STREAM = "SWITCHYARD_FINETUNE"  # job events
EVENT_SUBJECT_PREFIX = "fine_tuning.job"

Status = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")
Metric = Literal["exact", "contains", "json_valid"]
Stage = Literal["validate", "train", "verify", "deploy"]


def event_subject(job_id: str) -> str:
    return f"{EVENT_SUBJECT_PREFIX}.{job_id}"


class Hyperparameters(msgspec.Struct, kw_only=True):
    n_epochs: Union[int, Literal["auto"]] = "auto"
    batch_size: Union[int, Literal["auto"]] = "auto"
    learning_rate_multiplier: Union[float, Literal["auto"]] = "auto"


class FineTuningError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: Union[str, None] = None


class FineTuningJob(msgspec.Struct, kw_only=True):
    id: str  # "ftjob-" + hex
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    organization_id: str
    status: Status
    training_file: str
    hyperparameters: Hyperparameters
    seed: int
    result_files: list[str] = []
    validation_file: Union[str, None] = None
    fine_tuned_model: Union[str, None] = None
    finished_at: Union[int, None] = None
    trained_tokens: Union[int, None] = None
    error: Union[FineTuningError, None] = None
    estimated_finish: Union[int, None] = None
    metadata: Union[dict[str, str], None] = None
    suffix: Union[str, None] = None
    method: dict[str, Any] = {}


class FineTuningJobEvent(msgspec.Struct, kw_only=True):
    id: str  # "ftevent-" ...
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    type: Literal["message", "metrics"] = "message"
    data: Union[dict[str, Any], None] = None


class CheckpointMetrics(msgspec.Struct, kw_only=True, omit_defaults=True):
    step: Union[float, None] = None
    train_loss: Union[float, None] = None
    train_mean_token_accuracy: Union[float, None] = None
    valid_loss: Union[float, None] = None


class FineTuningJobCheckpoint(msgspec.Struct, kw_only=True):
    id: str  # "ftckpt-" ...
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class Page(msgspec.Struct, kw_only=True):
    """OpenAI's cursor page: `after` is the last id of the previous page."""

    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool
    first_id: Union[str, None] = None
    last_id: Union[str, None] = None


class VerificationSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a candidate is judged before it is served (a Switchyard extension of the create body):
    its pass rate over the held-out cases must reach `threshold` and, with `compare_to_base`, be no
    lower than the base model's on the same cases."""

    metric: Metric = "contains"
    threshold: Annotated[float, Meta(ge=0, le=1)] = 1.0
    compare_to_base: bool = True
    max_tokens: Annotated[int, Meta(ge=1, le=512)] = 48


MetadataMap = Annotated[dict[str, Annotated[str, Meta(max_length=512)]], Meta(max_length=16)]


class FineTuningJobCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: Annotated[str, Meta(min_length=1, max_length=128)]
    training_file: Annotated[str, Meta(min_length=1, max_length=128)]
    validation_file: Union[str, None] = None
    suffix: Union[Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")], None] = None
    hyperparameters: Union[Hyperparameters, None] = None
    method: Union[dict[str, Any], None] = None
    metadata: Union[MetadataMap, None] = None
    seed: Union[Annotated[int, Meta(ge=0, le=2**31 - 1)], None] = None
    integrations: Union[list[Any], None] = None
    verification: VerificationSpec = VerificationSpec()


class JobRecord(msgspec.Struct, kw_only=True):
    """What bucket `sy_finetune` keeps per job: the job as served, its owner, its checkpoints."""

    tenant: str
    job: FineTuningJob
    checkpoints: list[FineTuningJobCheckpoint] = []
    last_seq: int = 0  # the last JobUpdate applied: a retried one is not applied twice


# ---- the saga's inputs and outputs (Path 1: no training text, only references) ----

class TrainingPlan(msgspec.Struct, frozen=True, kw_only=True):
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    checkpoint_every: int  # epochs per run of the trainer: each run's output is a checkpoint


class FineTuningInput(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    tenant: str
    model: str  # the base catalog model
    base_entry: ModelEntry  # its entry: the tuned model's is a copy (queue, limits, timeouts)
    training_file: str
    validation_file: Union[str, None]
    fine_tuned_model: str
    plan: TrainingPlan
    verification: VerificationSpec
    created_at: int
    train_queue: str = "train"
    cpu_queue: str = "cpu"


class JobUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """One step of the job's record, written by the workflow (through an activity): the new status
    and fields, and the event to publish (sequence `seq` of this job: a replayed publish is a no-op)."""

    job_id: str
    tenant: str
    seq: int  # 0: not a step of the workflow (an activity's event); `event_key` names it then
    at: int
    message: str
    event_key: str = ""
    level: Literal["info", "warn", "error"] = "info"
    type: Literal["message", "metrics"] = "message"
    data: Union[dict[str, Any], None] = None
    status: Union[Status, None] = None
    fine_tuned_model: Union[str, None] = None
    trained_tokens: Union[int, None] = None
    error: Union[FineTuningError, None] = None
    checkpoint: Union[FineTuningJobCheckpoint, None] = None


class DatasetInput(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    tenant: str
    model: str
    training_file: str
    validation_file: Union[str, None]


class Dataset(msgspec.Struct, frozen=True, kw_only=True):
    """The validated data, by reference: the trainer's text and the held-out cases (JSON) in the
    object store."""

    train_ref: str
    cases_ref: str
    examples: int
    held_out: int
    estimated_tokens: int


class JobRef(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    tenant: str


class TrainInput(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    tenant: str
    model: str
    train_ref: str
    plan: TrainingPlan


class TrainProgress(msgspec.Struct, kw_only=True):
    """The train activity's heartbeat details: where a retried attempt resumes."""

    epochs_done: int = 0
    checkpoint: str = ""  # path of the last complete checkpoint (the model after `epochs_done`)
    loss: Union[float, None] = None
    resumed_from: int = 0


class TrainResult(msgspec.Struct, frozen=True, kw_only=True):
    model_path: str
    epochs: int
    resumed_from: int  # epochs already done when the last attempt started (0: a fresh start)


class CandidateInput(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    model_path: str


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    url: str  # OpenAI base URL, ".../v1"
    pid: int
    served_name: str
    model_path: str


class VerifyInput(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    base_model: str
    candidate: Candidate
    cases_ref: str
    spec: VerificationSpec


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    passed: bool
    cases: int
    candidate_score: float
    base_score: Union[float, None]
    reason: str = ""


class DeployInput(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    tenant: str
    base_model: str
    fine_tuned_model: str
    model_path: str


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    url: str = ""
    pid: int = 0
