"""Events of a job on its JetStream subject (Path 2). A tagged union, one JSON object per message.

Every event carries `seq` (1, 2, 3 ... per job, across attempts) and the `attempt` that
published it. The message id for JetStream de-duplication is `job:attempt:seq`.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from schemas.openai import ErrorBody, Usage


# The job's lifecycle, as named on /v1/jobs/{id}/events, over /v1/ws and in webhooks.
JOB_RUNNING = "job.running"
JOB_RESTARTED = "job.restarted"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
LIFECYCLE_EVENTS = (JOB_RUNNING, JOB_RESTARTED, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED)
JOB_ENDINGS = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED)


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    seq: int
    attempt: int


class Started(Event, tag="started", omit_defaults=True):
    """An attempt began (`job.running`). Not shown on the OpenAI endpoints' own streams."""

    resumed_from: int = 0  # the last sequence delivered before this attempt; 0 for a fresh start
    stage: str = ""  # a pipeline's stage that began


class Restarted(Event, tag="restarted"):
    """The engine cannot continue delivered text: what follows starts over (`job.restarted`)."""

    reason: str


class Delta(Event, tag="delta", omit_defaults=True):
    """Coalesced output of one choice: text appended, or tool-call deltas passed through intact.
    `tokens` is how many engine chunks (about one token each) it merges."""

    tokens: int = 0
    total: int = 0  # tokens delivered by the job so far, this one included
    content: str = ""
    reasoning: str = ""
    tool_calls: Union[list[dict[str, Any]], None] = None
    role: Union[str, None] = None
    audio: bytes = b""  # speech: the next bytes of the audio file (base64 in the JSON message)


class Finished(Event, tag="finished", omit_defaults=True):
    finish_reason: Union[str, None]
    usage: Usage
    model: str
    created: int
    result_ref: str = ""  # where the result is, for jobs whose result is an object (embeddings)


class Failed(Event, tag="failed"):
    """Terminal error. `status` is the HTTP status the proxy answers with if nothing was sent yet."""

    status: int
    error: ErrorBody


class Cancelled(Event, tag="cancelled"):
    reason: str = "cancelled by the client"


JobEvent = Union[Started, Restarted, Delta, Finished, Failed, Cancelled]
TERMINAL = (Finished, Failed, Cancelled)


def is_terminal(event: Event) -> bool:
    return isinstance(event, TERMINAL)

event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(JobEvent)


def msg_id(job_id: str, attempt: int, seq: int) -> str:
    return f"{job_id}:{attempt}:{seq}"


def terminal_msg_id(job_id: str) -> str:
    """One id for every terminal event of a job: JetStream keeps only the first one published."""
    return f"{job_id}:terminal"
