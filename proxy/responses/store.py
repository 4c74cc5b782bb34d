"""What of a response outlives its request, in the object store beside the job's other objects
(`<id>/response.json`, kept as long as the job's events): its settings, its input items, and the
conversation before them (rebuilt from `previous_response_id` when it was created). A deleted
response leaves a mark (`<id>/deleted.json`) and answers 404 from then on.

The response's status and output are its job's: Temporal and the job's events (proxy/jobs/store.py)."""

from __future__ import annotations

from typing import Any

import msgspec

from orchestration.objectstore import ObjectNotFound, check_key
from orchestration.streams import client_of, read_stored
from proxy.jobs.store import Job, load_job
from proxy.responses.render import ResponseBuilder
from proxy.runtime import Runtime
from schemas.errors import InvalidRequest, NotFound, ServiceUnavailable
from schemas.events import JobEvent
from schemas.responses import (
    RESPONSES_ENDPOINT,
    FunctionCall,
    FunctionCallOutput,
    InputItem,
    InputText,
    Message,
    OutputFunctionCall,
    OutputMessage,
    OutputText,
    Response,
)


class ResponseRecord(msgspec.Struct):
    tenant: str
    shell: Response  # the settings; status and output are the job's
    input: list[InputItem]  # this request's items, with ids
    context: list[InputItem] = []  # the conversation before them


_decoder = msgspec.json.Decoder(ResponseRecord)
_encoder = msgspec.json.Encoder()


def record_key(response_id: str) -> str:
    return check_key(f"{response_id}/response.json")


def deleted_key(response_id: str) -> str:
    return check_key(f"{response_id}/deleted.json")


def not_found(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"No response found with id '{response_id}'.", param=param, code="response_not_found")


def with_ids(response_id: str, items: list[InputItem]) -> list[InputItem]:
    """The request's items as input_items lists them: each with an id, message text as parts."""
    base = response_id.removeprefix("resp_")
    out: list[InputItem] = []
    for i, item in enumerate(items):
        if isinstance(item, Message):
            content = item.content
            if isinstance(content, str):
                content = [OutputText(text=content) if item.role == "assistant" else InputText(text=content)]
            item = msgspec.structs.replace(item, content=content, id=item.id or f"msg_{base}_in{i}",
                                           status=item.status or "completed")
        elif isinstance(item, FunctionCall):
            item = msgspec.structs.replace(item, id=item.id or f"fc_{base}_in{i}", status=item.status or "completed")
        elif isinstance(item, FunctionCallOutput):
            item = msgspec.structs.replace(item, id=item.id or f"fco_{base}_in{i}",
                                           status=item.status or "completed")
        out.append(item)
    return out


def output_as_input(response: Response) -> list[InputItem]:
    items: list[InputItem] = []
    for out in response.output:
        if isinstance(out, OutputMessage):
            items.append(Message(role="assistant", content=list(out.content), id=out.id, status=out.status))
        elif isinstance(out, OutputFunctionCall):
            items.append(FunctionCall(call_id=out.call_id, name=out.name, arguments=out.arguments, id=out.id,
                                      status=out.status))
    return items


async def save_record(rt: Runtime, response_id: str, record: ResponseRecord) -> None:
    try:
        await _objects(rt).put(record_key(response_id), _encoder.encode(record))
    except Exception:
        raise ServiceUnavailable("The response could not be stored; please retry.",
                                 code="object_store_unavailable") from None


async def mark_deleted(rt: Runtime, response_id: str) -> None:
    objects = _objects(rt)
    await objects.put(deleted_key(response_id), b"{}")
    await objects.delete(record_key(response_id))


async def load_record(rt: Runtime, response_id: str, param: str | None = None) -> ResponseRecord | None:
    """The record; None for a response created without one (through /v1/jobs); 404 once deleted
    or when it was created with `store: false`."""
    objects = _objects(rt)
    try:
        await objects.get(deleted_key(response_id))
        raise not_found(response_id, param)
    except ObjectNotFound:
        pass
    try:
        record = _decoder.decode(await objects.get(record_key(response_id)))
    except ObjectNotFound:
        return None
    if not record.shell.store:
        raise not_found(response_id, param)
    return record


async def load_response_job(rt: Runtime, response_id: str, tenant: str,
                            param: str | None = None) -> tuple[Job, ResponseRecord | None]:
    """The response's job and record, as its tenant sees them; 404 for any other tenant, for a job
    of another endpoint, and for a deleted or unstored response."""
    try:
        job = await load_job(rt, response_id, tenant)
    except NotFound:
        raise not_found(response_id, param) from None
    if job.memo.endpoint != RESPONSES_ENDPOINT:
        raise not_found(response_id, param)
    return job, await load_record(rt, response_id, param)


def shell_of(job: Job, record: ResponseRecord | None) -> Response:
    if record is not None:
        return record.shell
    return Response(id=job.view.id, created_at=job.memo.created, model=job.memo.model,
                    metadata=job.memo.metadata)


async def job_events(rt: Runtime, response_id: str) -> list[JobEvent]:
    return await read_stored(client_of(rt.js), response_id)


def built(shell: Response, events: list[JobEvent]) -> ResponseBuilder:
    builder = ResponseBuilder(shell)
    for event in events:
        builder.events(event)
    return builder


async def conversation_before(rt: Runtime, previous_id: Any, tenant: str) -> list[InputItem]:
    """The conversation a response continues: the previous response's own context, its input and
    its output. 404 (param previous_response_id) when it is not the tenant's or is gone; 400 while
    it has not finished."""
    param = "previous_response_id"
    if not isinstance(previous_id, str):
        raise InvalidRequest("'previous_response_id' must be a string.", param=param, code="invalid_value")
    job, record = await load_response_job(rt, previous_id, tenant, param)
    if record is None:
        raise not_found(previous_id, param)
    builder = built(record.shell, await job_events(rt, previous_id))
    final = builder.final
    if final is None:
        raise InvalidRequest(f"The previous response '{previous_id}' has not finished yet.", param=param,
                             code="previous_response_not_finished")
    return [*record.context, *record.input, *output_as_input(final)]


def _objects(rt: Runtime):
    assert rt.objects is not None, "the runtime opens its object store at start"
    return rt.objects
