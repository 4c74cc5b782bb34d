"""Inputs and outputs of workflows and activities (Path 1). Never tokens."""

from __future__ import annotations

from typing import Any, Union

import msgspec

from schemas.openai import ErrorBody, Usage


class RetrySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    initial_interval_s: float = 0.2
    backoff: float = 2.0
    maximum_interval_s: float = 5.0
    maximum_attempts: int = 3


class StageTimeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    schedule_to_start_s: float = 60.0
    start_to_close_s: float = 600.0
    heartbeat_s: float = 10.0


class InferenceInput(msgspec.Struct, frozen=True):
    """What the inference activity needs; `body` is the engine-bound OpenAI request as a dict."""

    job_id: str
    model: str
    endpoint: str
    body: dict[str, Any]
    created: int
    include_usage: bool = False


class WorkflowInput(msgspec.Struct, frozen=True):
    inference: InferenceInput
    task_queue: str
    timeouts: StageTimeouts
    retry: RetrySpec
    webhook_url: str = ""
    webhook_queue: str = "cpu"


class InferenceSummary(msgspec.Struct):
    """What the activity hands the workflow at the sync point."""

    finish_reason: Union[str, None]
    usage: Usage
    last_seq: int
    attempt: int


class TerminalNotice(msgspec.Struct, frozen=True):
    """Input of the activity that ends a failed or cancelled job's event stream."""

    job_id: str
    kind: str  # "failed" | "cancelled"
    status: int = 500
    error: Union[ErrorBody, None] = None


class JobOutcome(msgspec.Struct):
    status: str  # "succeeded" | "failed"
    summary: Union[InferenceSummary, None] = None
    error: Union[ErrorBody, None] = None


class WebhookDelivery(msgspec.Struct, frozen=True):
    """One webhook message: the job's end, signed and retried by the delivery activity."""

    job_id: str
    url: str
    event_type: str  # job.succeeded | job.failed | job.cancelled
    created_at: int
    data: dict[str, Any]
