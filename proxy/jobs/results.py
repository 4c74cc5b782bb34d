"""Results that are objects in the claim-check store (embeddings, transcripts, audio), sent back
from the store with the content type their key's suffix names; and the bounded read of a job's
events that `/result` assembles."""

from __future__ import annotations

from starlette.responses import Response, StreamingResponse

from orchestration.objectstore import ObjectNotFound
from orchestration.streams import TooManyEvents, last_event, read_events
from schemas.endpoints import spec_of
from schemas.errors import APIError
from proxy.runtime import Runtime
from schemas.audio import SPEECH_MEDIA_TYPES, TRANSCRIPT_MEDIA_TYPES
from schemas.events import Finished, JobEvent, is_terminal


async def stored_result(rt: Runtime, finished: Finished, headers: dict[str, str]) -> Response:
    """The response body the activity stored, streamed from the object store."""
    assert rt.objects is not None
    try:
        size = await rt.objects.size(finished.result_ref)
    except (ObjectNotFound, ValueError):
        raise APIError("The job's result has expired or is missing.", status=410,
                       type="invalid_request_error", code="result_gone", headers=headers) from None
    return StreamingResponse(rt.objects.stream(finished.result_ref), media_type=media_type(finished.result_ref),
                             headers={**headers, "content-length": str(size)})


def media_type(ref: str) -> str:
    """What a stored result is, from its key's suffix (objectstore.result_key)."""
    suffix = ref.rsplit(".", 1)[-1]
    if suffix == "json":
        return "application/json"
    if suffix in ("txt", "srt", "vtt"):
        return TRANSCRIPT_MEDIA_TYPES["text"]
    return SPEECH_MEDIA_TYPES.get(suffix, "application/octet-stream")


async def result_events(rt: Runtime, job_id: str, endpoint: str) -> list[JobEvent]:
    """The job's events for `/result`, at most `SWITCHYARD_RESULT_MAX_EVENTS` of them and
    `SWITCHYARD_RESULT_MAX_BYTES` in all; a larger job is read from its event stream instead (413).
    A stored result needs only the job's terminal event (a speech job's audio deltas are not read)."""
    if spec_of(endpoint).stored_result:
        last = await last_event(rt.js, job_id)
        if last is not None and is_terminal(last):
            return [last]
    bounds = rt.settings.reads
    try:
        return await read_events(rt.js, job_id, max_events=bounds.result_events, max_bytes=bounds.result_bytes)
    except TooManyEvents:
        raise APIError(f"The result of job '{job_id}' is too large to assemble (over {bounds.result_events} "
                       f"events or {bounds.result_bytes} bytes); read it from /v1/jobs/{job_id}/events, "
                       "which streams it and can resume.", status=413, type="invalid_request_error",
                       code="result_too_large") from None
