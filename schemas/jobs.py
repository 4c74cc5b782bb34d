"""Inputs and outputs of workflows and activities (Path 1). Never tokens."""

from __future__ import annotations

from typing import Any, Union

import msgspec

from schemas.openai import ErrorBody, Usage

# The OpenAI endpoints a job can serve (InferenceInput.endpoint).
CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
TRANSCRIPTIONS_ENDPOINT = "/v1/audio/transcriptions"
TRANSLATIONS_ENDPOINT = "/v1/audio/translations"
SPEECH_ENDPOINT = "/v1/audio/speech"

# The workflow the proxy starts for every job (orchestration.workflows), and what it shares with it.
INFERENCE_WORKFLOW = "InferenceWorkflow"
NO_CAPACITY = "No worker picked up the request in time; please retry."
# The worker that took a dispatched run polls its adoption queue; longer than this, it is gone. Kept
# generous: a worker that is only busy (thousands of streams on one core) must not lose live runs
# to takeovers, which would cost more than they save (measured: 10 s cascaded at 1,000 streams).
ADOPT_SCHEDULE_TO_START_S = 30.0


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
    """What the inference activity needs; `body` is the engine-bound OpenAI request as a dict.

    A body over the claim-check threshold travels by reference: `body` is empty and `body_ref`
    names it in the object store. `options` are serving options the engine never sees (e.g. an
    embedding's `encoding_format`)."""

    job_id: str
    model: str
    endpoint: str
    body: dict[str, Any]
    created: int
    include_usage: bool = False
    body_ref: str = ""
    options: dict[str, Any] = {}
    tenant: str = ""  # for per-tenant metrics on the worker (tokens in and out)
    # A pipeline's stage: its name and place; a stage that is not `final` ends with StageDone, not
    # with the job's terminal event. `options["context_ref"]` names the previous stage's result.
    stage: str = ""
    stage_index: int = 0
    final: bool = True
    continuing: bool = False  # output may have been delivered already (a dispatched run taken over)
    withdraw: bool = False  # the dispatched run may still be alive somewhere: stop it first
    retention_s: int = 0  # the tenant's event retention (Nats-TTL) when set; 0: the stream's max age


class PipelineStep(msgspec.Struct, frozen=True):
    """A pipeline stage after the first (the first is WorkflowInput.inference itself)."""

    inference: InferenceInput
    task_queue: str
    timeouts: StageTimeouts
    retry: RetrySpec


class WorkflowInput(msgspec.Struct, frozen=True):
    inference: InferenceInput
    task_queue: str
    timeouts: StageTimeouts
    retry: RetrySpec
    webhook_url: str = ""
    webhook_queue: str = "cpu"
    admission: Union[dict[str, Any], None] = None  # the limiter's reservation, settled at the end
    prompt_estimate: int = 0
    priority: int = 0  # Temporal priority key (1 most urgent .. 5); 0: the server's default
    then: tuple[PipelineStep, ...] = ()  # a pipeline's later stages, run in order
    # The worker's own queue when the proxy dispatched the generation straight to a worker: the
    # workflow adopts that run there, and takes over on `task_queue` if it cannot.
    dispatched_to: str = ""


class Dispatch(msgspec.Struct, frozen=True):
    """The proxy's offer of a generation to the workers of a queue (core NATS request)."""

    inference: InferenceInput
    trace: dict[str, str] = {}  # the request's trace context (`traceparent`), for the run's span


class DispatchReply(msgspec.Struct, frozen=True):
    """A worker's answer: `queue` is its own adoption queue when it took the run, "" when full."""

    queue: str = ""


class AdoptInput(msgspec.Struct, frozen=True):
    job_id: str


class InferenceSummary(msgspec.Struct):
    """What the activity hands the workflow at the sync point."""

    finish_reason: Union[str, None]
    usage: Usage
    last_seq: int
    attempt: int
    result_ref: str = ""  # the result in the object store, for results that never enter history


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
    event_type: str  # one of schemas.events.JOB_ENDINGS
    created_at: int
    data: dict[str, Any]


class SettlementRequest(msgspec.Struct, frozen=True):
    """`actual_tokens` None: work out what the job used from its events (failed, cancelled)."""

    job_id: str
    admission: dict[str, Any]
    actual_tokens: Union[int, None]
    prompt_estimate: int = 0


class Settlement(msgspec.Struct, frozen=True):
    """A finished job's real token use, for the admitting limiter's reservation (opaque here)."""

    job_id: str
    admission: dict[str, Any]
    actual_tokens: Union[int, None]
