"""The Batch API's wire types (/v1/batches) in OpenAI's shapes, the lines of its files, and the
inputs and outputs of the batch workflow and its activities."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from schemas.jobs import WorkflowInput

BATCHES_ENDPOINT = "/v1/batches"
BATCH_WORKFLOW = "BatchWorkflow"
BATCH_CANCEL_SIGNAL = "cancel"
# The proxy replicas' own task queue: the batch activities prepare lines exactly as the HTTP
# endpoints do, so they run where the endpoint registry is (proxy/batches/activities.py).
PROXY_QUEUE = "switchyard-proxy"
BATCH_PRIORITY = 5  # Temporal's least urgent priority key: interactive jobs overtake batch lines
COMPLETION_WINDOWS = {"24h": 24 * 3600}
BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                      "cancelling", "cancelled"]
TERMINAL = ("failed", "completed", "expired", "cancelled")
# The error codes of lines that did not run to an answer.
BATCH_EXPIRED, BATCH_CANCELLED = "batch_expired", "batch_cancelled"


class RequestCounts(msgspec.Struct, kw_only=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: Union[str, None] = None
    line: Union[int, None] = None


class BatchErrors(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[BatchError] = []


class Batch(msgspec.Struct, kw_only=True):
    id: str  # "batch_" + 32 hex digits
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: Union[BatchErrors, None] = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus = "validating"
    output_file_id: Union[str, None] = None
    error_file_id: Union[str, None] = None
    created_at: int
    in_progress_at: Union[int, None] = None
    expires_at: Union[int, None] = None
    finalizing_at: Union[int, None] = None
    completed_at: Union[int, None] = None
    failed_at: Union[int, None] = None
    expired_at: Union[int, None] = None
    cancelling_at: Union[int, None] = None
    cancelled_at: Union[int, None] = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    metadata: Union[dict[str, str], None] = None


class BatchList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: Union[str, None]
    last_id: Union[str, None]
    has_more: bool


class BatchCreate(msgspec.Struct, kw_only=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Union[dict[str, str], None] = None
    output_expires_after: Union[dict[str, Any], None] = None


class BatchRecord(msgspec.Struct, kw_only=True):
    """What the status bucket keeps per batch: the object and its owner."""

    batch: Batch
    tenant: str


# ---- the files' lines --------------------------------------------------------------------------------
class InputLine(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]


class LineResponse(msgspec.Struct, kw_only=True):
    status_code: int
    request_id: str
    body: Any


class LineError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class OutputLine(msgspec.Struct, kw_only=True):
    """A line of the output file (`response`) or of the error file (`error`, or a `response` with an
    error status)."""

    id: str  # "batch_req_..."
    custom_id: Union[str, None]
    response: Union[LineResponse, None] = None
    error: Union[LineError, None] = None


# ---- workflow and activities ---------------------------------------------------------------------
class BatchProgress(msgspec.Struct, kw_only=True):
    """What a run hands the next one at continue-as-new."""

    chunks: int = 0  # prepared chunks (windows) written at validation
    next_chunk: int = 0
    counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    runs: int = 1
    stopping: str = ""  # "" | "cancelled" | "expired": why no more windows start


class BatchInput(msgspec.Struct, kw_only=True):
    batch_id: str
    tenant: str
    principal: dict[str, Any]  # the creator's gatekeeping.auth.Principal: its scopes and limits apply
    endpoint: str
    input_file_id: str
    expires_at: int
    window: int = 32  # lines in flight at once (one prepared chunk)
    lines_per_run: int = 1024  # continue-as-new after about this many lines
    cpu_queue: str = "cpu"  # where the lines' InferenceWorkflows run
    proxy_queue: str = PROXY_QUEUE  # where the batch activities run
    progress: Union[BatchProgress, None] = None


class ValidateInput(msgspec.Struct, kw_only=True):
    batch_id: str
    tenant: str
    principal: dict[str, Any]
    endpoint: str
    input_file_id: str
    window: int


class ValidateResult(msgspec.Struct, kw_only=True):
    total: int
    invalid: int  # lines written to the error part at once
    chunks: int
    errors: list[BatchError] = []  # why the batch failed (nothing valid to run), else empty


class AdmitInput(msgspec.Struct, kw_only=True):
    batch_id: str
    principal: dict[str, Any]
    chunk: int
    only: Union[list[int], None] = None  # line indices still waiting (rate-limited); None: all


class LineJob(msgspec.Struct, kw_only=True):
    index: int
    custom_id: str
    inp: WorkflowInput


class Refused(msgspec.Struct, kw_only=True):
    index: int
    status: int
    code: str
    message: str
    type: str = "invalid_request_error"


class AdmitResult(msgspec.Struct, kw_only=True):
    admitted: list[LineJob] = []
    refused: list[Refused] = []  # quota refusals, models gone since validation: error lines
    waiting: list[int] = []  # rate-limited: admitted again after `retry_after_s`
    retry_after_s: float = 1.0


class LineOutcome(msgspec.Struct, kw_only=True):
    index: int
    custom_id: str
    job_id: str
    endpoint: str
    model: str
    created: int
    state: str  # "succeeded" | "failed" | "cancelled"


class WriteInput(msgspec.Struct, kw_only=True):
    batch_id: str
    tenant: str
    chunk: int
    outcomes: list[LineOutcome] = []
    refused: list[Refused] = []
    missing_code: str = BATCH_CANCELLED  # for the chunk's lines with no outcome (cancel, expiry)
    before: RequestCounts = msgspec.field(default_factory=RequestCounts)


class RestInput(msgspec.Struct, kw_only=True):
    """The lines of chunks `first`.. that never ran, as error lines `code`."""

    batch_id: str
    tenant: str
    first: int
    chunks: int
    code: str
    before: RequestCounts = msgspec.field(default_factory=RequestCounts)


class MarkInput(msgspec.Struct, kw_only=True):
    batch_id: str
    tenant: str
    status: BatchStatus
    counts: Union[RequestCounts, None] = None
    errors: list[BatchError] = []


class FinalizeInput(msgspec.Struct, kw_only=True):
    batch_id: str
    tenant: str
    chunks: int
    status: str  # completed | cancelled | expired
    counts: RequestCounts
