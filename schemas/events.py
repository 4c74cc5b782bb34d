"""Events of a job on its JetStream subject (Path 2). A tagged union, one JSON object per message.

Every event carries `seq` (1, 2, 3 ... per job, across attempts) and the `attempt` that
published it. The message id for JetStream de-duplication is `job:attempt:seq`.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from schemas.openai import ErrorBody, Usage


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    seq: int
    attempt: int


class Delta(Event, tag="delta", omit_defaults=True):
    """Coalesced output of one choice: text appended, or tool-call deltas passed through intact."""

    content: str = ""
    reasoning: str = ""
    tool_calls: Union[list[dict[str, Any]], None] = None
    role: Union[str, None] = None


class Finished(Event, tag="finished"):
    finish_reason: Union[str, None]
    usage: Usage
    model: str
    created: int


class Failed(Event, tag="failed"):
    """Terminal error. `status` is the HTTP status the proxy answers with if nothing was sent yet."""

    status: int
    error: ErrorBody


JobEvent = Union[Delta, Finished, Failed]

event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(JobEvent)


def subject_for(prefix: str, job_id: str) -> str:
    return f"{prefix}.{job_id}"


def msg_id(job_id: str, attempt: int, seq: int) -> str:
    return f"{job_id}:{attempt}:{seq}"
