"""Results that are objects in the claim-check store (embeddings, transcripts, audio), sent back
from the store with the content type their key's suffix names."""

from __future__ import annotations

from starlette.responses import Response, StreamingResponse

from orchestration.objectstore import ObjectNotFound
from proxy.errors import APIError
from proxy.runtime import Runtime
from schemas.audio import SPEECH_MEDIA_TYPES, TRANSCRIPT_MEDIA_TYPES
from schemas.events import Finished


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
