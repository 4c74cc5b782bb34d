"""POST /v1/responses: OpenAI's Responses API as a job. The engine gets a chat completions body
(adapters/responses.py), or the Responses body itself where the catalog says it serves
/v1/responses; `previous_response_id` rebuilds the conversation from stored responses; `background`
answers at once. Its other routes (retrieve, resume, cancel, delete, input items) are in
proxy/responses/api.py."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response as HTTPResponse

from adapters.registry import engine_capabilities
from adapters.responses import chat_body, passthrough_body
from gatekeeping.auth import Principal
from proxy.endpoints.endpoint import Endpoint
from proxy.endpoints.params import check_content_parts
from proxy.http.body import decode_json_object, peek_model, read_body
from proxy.http.operations import json_job_operation, ok, json_content
from proxy.http.sse import SSEResponse
from proxy.jobs.prepare import PreparedJob, check_access, check_max_tokens, convert_request, engine_entry, find_model, new_job
from proxy.jobs.run import JobRun
from proxy.jobs.store import release_admission, start_job
from proxy.responses.api import OPERATIONS, ROUTES
from proxy.responses.render import ResponseAssembler, ResponsesWriter
from proxy.responses.store import ResponseRecord, conversation_before, save_record, with_ids
from proxy.runtime import Runtime
from schemas import endpoints
from schemas.errors import InvalidRequest
from schemas.openai import ChatCompletionRequest
from schemas.responses import RESPONSES_ENDPOINT, InputItem, Response, ResponsesRequest, input_items

_encoder = msgspec.json.Encoder()
FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(ResponsesRequest))


def validate_response(raw: dict[str, Any]) -> ResponsesRequest:
    """The body as a request (a 400 naming the bad field), `input` always a list of items."""
    unknown = sorted(k for k in raw if k not in FIELDS)
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {', '.join(unknown)}.", param=unknown[0],
                             code="unknown_parameter")
    value = raw.get("input")
    if isinstance(value, (str, list)):
        raw = {**raw, "input": input_items(value)}
    req = convert_request(raw, ResponsesRequest)
    if not req.input:
        raise InvalidRequest("'input' must not be empty.", param="input", code="invalid_value")
    if req.background and not req.store:
        raise InvalidRequest("Background responses must be stored: 'store' cannot be false.", param="store",
                             code="invalid_value")
    if req.metadata is not None and (len(req.metadata) > 16 or any(
            len(k) > 64 or len(v) > 512 for k, v in req.metadata.items())):
        raise InvalidRequest("metadata takes at most 16 keys of 64 characters, values of 512.", param="metadata")
    return req


def prepare_response(rt: Runtime, principal: Principal, raw: dict[str, Any], idempotency_key: str | None,
                     metadata: dict[str, str] | None = None, webhook_url: str = "", *,
                     context: list[InputItem] | None = None) -> PreparedJob:
    """The job for a Responses request. `context`: the conversation before `input`, read by the
    caller from `previous_response_id` (only POST /v1/responses reads it; elsewhere it is a 400)."""
    req = validate_response(raw)
    if req.previous_response_id is not None and context is None:
        raise InvalidRequest("'previous_response_id' is served on POST /v1/responses only.",
                             param="previous_response_id", code="unsupported_parameter")
    model = find_model(rt, req.model, RESPONSES_ENDPOINT)
    check_max_tokens(req, model, ("max_output_tokens",))
    entry = engine_entry(rt, model)
    # Passed through only where the tenant's PII policy has nothing to mask: admission masks chat messages.
    passthrough = (entry.engine is not None and "responses" in engine_capabilities(entry.engine)
                   and principal.pii == "off")
    default = min(model.limits.default_max_tokens, model.limits.max_tokens)
    items = [*(context or []), *req.input]
    if passthrough:
        body = passthrough_body(req, model.id, items, default)
    else:
        body = chat_body(req, model.id, items, default)
        for name, value in model.default_params.items():
            body.setdefault(name, value)
        check_content_parts(convert_request(body, ChatCompletionRequest), entry)
    if isinstance(req.priority, (int, str)):
        body["priority"] = req.priority
    return new_job(principal, model, RESPONSES_ENDPOINT, req, raw, body, stream=req.stream,
                   idempotency_key=idempotency_key, metadata=metadata, webhook_url=webhook_url,
                   options={"responses_passthrough": True} if passthrough else {})


def shell(job: PreparedJob) -> Response:
    """The Response object's settings, as the request gave them."""
    req: ResponsesRequest = job.request
    out = Response(id=job.job_id, created_at=job.memo.created, model=job.model.id, instructions=req.instructions,
                   metadata=req.metadata or {}, tools=req.tools, tool_choice=req.tool_choice or "auto",
                   parallel_tool_calls=req.parallel_tool_calls is not False, temperature=req.temperature,
                   top_p=req.top_p, max_output_tokens=req.max_output_tokens,
                   previous_response_id=req.previous_response_id, store=req.store, background=req.background)
    return out if req.text is None else msgspec.structs.replace(out, text=req.text)


def record_of(job: PreparedJob, context: list[InputItem]) -> ResponseRecord:
    req: ResponsesRequest = job.request
    return ResponseRecord(tenant=job.memo.tenant, shell=shell(job), input=with_ids(job.job_id, list(req.input)),
                          context=context)


async def create_response(request: Request) -> HTTPResponse | SSEResponse:
    rt: Runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    check_access(rt, principal, RESPONSES_ENDPOINT, None)
    data = await read_body(request, rt.settings.max_body_bytes)
    check_access(rt, principal, RESPONSES_ENDPOINT, peek_model(data))
    raw = decode_json_object(data)
    previous = raw.get("previous_response_id")
    context = [] if previous is None else await conversation_before(rt, previous, principal.tenant)
    job = prepare_response(rt, principal, raw, request.headers.get("idempotency-key"), context=context)
    run = JobRun(rt, request, job)
    await run.admit()
    record = record_of(run.job, context)
    # The hook for response.* webhooks: the record (tenant, settings) is stored before the job starts.
    try:
        await save_record(rt, job.job_id, record)
    except BaseException:
        await release_admission(rt, run.job.inp)
        raise
    if record.shell.background and not job.stream:
        await start_job(rt, run.job.inp, run.job.model, run.job.memo)
        queued = msgspec.structs.replace(record.shell, status="queued")
        return HTTPResponse(_encoder.encode(queued), media_type="application/json",
                            headers={"x-job-id": job.job_id})
    writer = ResponsesWriter(job.job_id, job.model.id, job.memo.created, False)
    writer.shell = record.shell
    return await run.respond(writer, ResponseAssembler(writer), admitted=True)


STREAM_TEXT = ("a `text/event-stream` of typed events (`event:` = `type`): response.created, "
               "response.in_progress, response.output_item.added, response.content_part.added, "
               "response.output_text.delta ..., response.function_call_arguments.delta/.done, "
               "response.output_item.done, then response.completed | response.incomplete | response.failed "
               "(also for a cancelled response, `response.status` \"cancelled\"). Every event's "
               "`sequence_number` (0, 1, 2 ...) is its SSE `id:`; `GET /v1/responses/{id}?stream=true"
               "&starting_after=N` resumes after N.")

async def keep_record(rt: Runtime, job: PreparedJob) -> None:
    """The record of a response made through /v1/jobs or the WebSocket (no earlier conversation)."""
    await save_record(rt, job.job_id, record_of(job, []))


ENDPOINT = Endpoint(
    spec=endpoints.RESPONSES, handler=create_response, prepare=prepare_response, keep=keep_record,
    writer=ResponsesWriter,
    assembler=ResponseAssembler, routes=ROUTES, route_operations=OPERATIONS,
    operation=json_job_operation(
        "responses", "Create a response (a durable job; `background: true` answers at once)",
        "ResponsesRequest", ok("`stream: false`: the Response object. `stream: true`: " + STREAM_TEXT,
                               {**json_content("Response"),
                                "text/event-stream": {"schema": {"type": "string", "description": STREAM_TEXT}}},
                               {"x-job-id": {"description": "The response's id.", "schema": {"type": "string"}}})))
