"""A finished line's job as a line of the output or error file: its result assembled from its events
as GET /v1/jobs/{id}/result does (a stored result read from the object store), or its error."""

from __future__ import annotations

from typing import Any

import msgspec

from orchestration.objectstore import ObjectNotFound
from orchestration.streams import last_event
from proxy.batches import lines as L
from proxy.endpoints.registry import endpoint_of
from proxy.jobs.results import result_events
from proxy.runtime import Runtime
from schemas.batches import LineOutcome, OutputLine
from schemas.errors import APIError
from schemas.events import Failed, Finished
from schemas.openai import ErrorBody

_json = msgspec.json.Decoder()


async def outcome_line(rt: Runtime, batch_id: str, o: LineOutcome) -> tuple[OutputLine, bool]:
    """(the line, whether it belongs in the output file)."""
    if o.state == "cancelled":
        return L.not_run(batch_id, o.index, o.custom_id, "batch_cancelled", L.CANCELLED_MESSAGE), False
    if o.state == "failed":
        return await _failure(rt, batch_id, o), False
    try:
        body = await _result(rt, o)
    except (APIError, ObjectNotFound, msgspec.DecodeError):
        body = None
    if body is None:
        return L.not_run(batch_id, o.index, o.custom_id, "result_missing",
                         "The request finished but its result could not be read."), False
    return L.answered(batch_id, o.index, o.custom_id, 200, o.job_id, body), True


async def _result(rt: Runtime, o: LineOutcome) -> Any:
    endpoint = endpoint_of(o.endpoint)
    assembler = endpoint.assembler(endpoint.chunk_writer(o.job_id, o.model, o.created, False))
    for event in await result_events(rt, o.job_id, o.endpoint):
        completion = assembler.add(event)
        if isinstance(completion, Finished):  # the result is an object in the store
            assert rt.objects is not None
            return _json.decode(await rt.objects.get(completion.result_ref))
        if completion is not None:
            return msgspec.to_builtins(completion)
    return None


async def _failure(rt: Runtime, batch_id: str, o: LineOutcome) -> OutputLine:
    """The job's own error, with the HTTP status its endpoint would have answered."""
    event = await last_event(rt.js, o.job_id)
    if isinstance(event, Failed):
        return L.refused(batch_id, o.index, o.custom_id, event.status, o.job_id, event.error)
    return L.refused(batch_id, o.index, o.custom_id, 500, o.job_id,
                     ErrorBody(message="The request failed.", type="server_error", code="internal_error"))
