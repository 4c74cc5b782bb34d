"""The OpenAPI 3.1 document served at /openapi.json, built from the app's routes and our msgspec
structs (`msgspec.json.schema_components`), so a field added to a struct shows up here.

Every route the app serves gets an operation: the ones described in `_operations()`, and any other
(a route added without a description here) a minimal one marked `x-switchyard-undocumented`, which
tests/test_openapi.py refuses. Server-sent event responses are `text/event-stream` strings; the JSON
carried by each event's `data:` line is named by the `x-sse-data` extension (OpenAPI 3.1 has no
schema for event streams).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

import msgspec
from starlette.routing import Route, WebSocketRoute

from proxy.jobs.store import JobView
from schemas.audio import SpeechRequest, TranscriptionJSON, VerboseTranscription
from schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorEnvelope,
    Model,
    ModelList,
    TextCompletion,
)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{name}"
UNDOCUMENTED = "x-switchyard-undocumented"


# Shapes that have no struct of their own in the serving code (they are built as dicts there).
class JobList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[JobView]
    has_more: bool
    first_id: Union[str, None]
    last_id: Union[str, None]


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]
    failed: list[str]


class AdminList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


def _structs() -> list[type]:
    from proxy.jobs.api import JobCreate

    found: list[type] = [ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, CompletionRequest,
                         TextCompletion, EmbeddingRequest, EmbeddingList, ErrorEnvelope, Model, ModelList,
                         JobCreate, JobView, JobList, Health, Readiness, AdminList, SpeechRequest,
                         TranscriptionJSON, VerboseTranscription]
    try:
        from proxy.endpoints.admin import KeyCreate, TenantCreate, TenantUpdate
        from schemas.tenancy import KeyRecord, Tenant

        found += [TenantCreate, TenantUpdate, KeyCreate, Tenant, KeyRecord]
    except ImportError:  # the admin API is optional
        pass
    return found


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any] | str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(schema) if isinstance(schema, str) else schema}}


def _sse(data: str | None, description: str) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"type": "string", "description": description}}
    if data:
        media["x-sse-data"] = _ref(data)
    return {"text/event-stream": media}


_ERROR_TEXT = {
    400: "Invalid request: malformed JSON, an invalid parameter (`param` names it), or the engine rejected it.",
    401: "Missing or wrong API key.",
    403: "The key may not use this model, endpoint or admin operation.",
    404: "Unknown model, job, tenant, key or route.",
    409: "Conflict: an Idempotency-Key reused with another body, or a job not finished yet.",
    413: "Body over the size limit.",
    429: "Rate limit or quota exceeded; `retry-after` says when to retry.",
    503: "Engine unreachable, no worker picked the job up in time, or the orchestrator is down.",
}


def _errors(*statuses: int) -> dict[str, Any]:
    out = {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in statuses}
    out["default"] = {"$ref": "#/components/responses/Error"}
    return out


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": schema or {"type": "string"}}


IDEMPOTENCY = _param("Idempotency-Key", "header", "The same key and body from the same tenant returns the "
                     "same job (no second generation); another body is 409 `idempotency_key_reused`.",
                     {"type": "string", "minLength": 1, "maxLength": 255})
PREFER = _param("Prefer", "header", "`respond-async` answers 202 with the job (`Location: /v1/jobs/{id}`) "
                "instead of waiting for the result.")
JOB_ID = _param("job_id", "path", "The job's id (`x-job-id`, the completion id).")


def _ok(description: str, content: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if content:
        out["content"] = content
    if headers:
        out["headers"] = headers
    return out


def _hdr(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


JOB_HEADERS = {"x-job-id": _hdr("The job's id."), "ETag": _hdr("The job view's entity tag."),
               "Retry-After": _hdr("`1` while the job has not finished.")}
ACCEPTED = _ok("The job was accepted (`Prefer: respond-async`); poll its `Location`.", _json("JobView"),
               {"Location": _hdr("`/v1/jobs/{id}`."), **JOB_HEADERS,
                "Preference-Applied": _hdr("`respond-async`.")})


def _generation(tag: str, summary: str, request: str, result: str, chunk: str, stream_text: str) -> dict:
    return {
        "tags": [tag], "summary": summary,
        "parameters": [IDEMPOTENCY, PREFER],
        "requestBody": {"required": True, "content": _json(request),
                        "description": "OpenAI's request; other fields are a 400 unless the "
                                       "model's `extra_params` name them."},
        "responses": {
            "200": _ok("`stream: false`: the result as JSON. `stream: true`: " + stream_text,
                       {**_json(result), **_sse(chunk, stream_text)},
                       {"x-job-id": _hdr("The job's id (also the completion id and the workflow id).")}),
            "202": ACCEPTED,
            **_errors(400, 401, 403, 404, 409, 413, 429, 503),
        },
    }


TRANSCRIPTION_FORM = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "model"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "The audio (flac, mp3, mp4, mpeg, mpga, m4a, ogg, oga, opus, wav, webm), "
                                "at most 25 MB; stored in the object store, only its reference enters Temporal."},
        "model": {"type": "string", "description": "An `asr` model, or a pipeline starting with one."},
        "language": {"type": "string", "description": "ISO-639-1 (transcriptions only)."},
        "prompt": {"type": "string"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "response_format": {"type": "string", "enum": ["json", "text", "srt", "verbose_json", "vtt"],
                            "default": "json"},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]},
                                      "description": "With `verbose_json` only."},
    }}}}


def _audio_in(summary: str) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string", "description": "`text`, `srt` or `vtt`."}}}
    return {
        "tags": ["audio"], "summary": summary, "parameters": [IDEMPOTENCY, PREFER],
        "requestBody": {"required": True, "content": TRANSCRIPTION_FORM},
        "responses": {"200": _ok("The transcript in the asked `response_format`.",
                                 {"application/json": {"schema": {"oneOf": [_ref("TranscriptionJSON"),
                                                                            _ref("VerboseTranscription")]}},
                                  **text}, {"x-job-id": _hdr("The job's id.")}),
                      "202": ACCEPTED, **_errors(400, 401, 403, 404, 409, 413, 429, 503)},
    }


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    chat_stream = ("a `text/event-stream` of `chat.completion.chunk` events, each with `id: <seq>`; "
                   "`stream_options.include_usage` adds a chunk with `choices: []` and `usage`; it ends "
                   "with `data: [DONE]`. Idle streams get `: keep-alive` comments. After the first byte an "
                   "error is sent in-band as `data: {\"error\": {...}}` then `data: [DONE]`.")
    admin = ["admin"]
    return {
        ("POST", "/v1/chat/completions"): _generation(
            "chat", "Create a chat completion (a durable job)", "ChatCompletionRequest", "ChatCompletion",
            "ChatCompletionChunk", chat_stream),
        ("POST", "/v1/completions"): _generation(
            "completions", "Create a text completion (legacy; a durable job)", "CompletionRequest",
            "TextCompletion", "TextCompletion",
            "a `text/event-stream` of `text_completion` chunks ending with `data: [DONE]`."),
        ("POST", "/v1/embeddings"): {
            "tags": ["embeddings"], "summary": "Create embeddings (a job)",
            "parameters": [IDEMPOTENCY, PREFER],
            "requestBody": {"required": True, "content": _json("EmbeddingRequest")},
            "responses": {"200": _ok("The vectors, in input order.", _json("EmbeddingList"),
                                     {"x-job-id": _hdr("The job's id.")}),
                          "202": ACCEPTED, **_errors(400, 401, 403, 404, 409, 413, 429, 503)},
        },
        ("POST", "/v1/audio/transcriptions"): _audio_in("Transcribe audio (a job)"),
        ("POST", "/v1/audio/translations"): _audio_in("Translate audio into English text (a job)"),
        ("POST", "/v1/audio/speech"): {
            "tags": ["audio"], "summary": "Text to speech (a job), streamed as it is made",
            "parameters": [IDEMPOTENCY, PREFER],
            "requestBody": {"required": True, "content": _json("SpeechRequest")},
            "responses": {"200": _ok("The audio file, sent as the engine produces it (chunked). A failure "
                                     "after the first bytes cuts the body short.",
                                     {t: {"schema": {"type": "string", "format": "binary"}}
                                      for t in ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac",
                                                "audio/wav", "audio/pcm")},
                                     {"x-job-id": _hdr("The job's id.")}),
                          "202": ACCEPTED, **_errors(400, 401, 403, 404, 409, 429, 503)},
        },
        ("POST", "/v1/jobs"): {
            "tags": ["jobs"], "summary": "Create a job for an OpenAI endpoint's body",
            "parameters": [IDEMPOTENCY],
            "requestBody": {"required": True, "content": _json("JobCreate")},
            "responses": {"202": ACCEPTED, **_errors(400, 401, 403, 404, 409, 413, 429, 503)},
        },
        ("GET", "/v1/jobs"): {
            "tags": ["jobs"], "summary": "List the caller's jobs, newest first",
            "parameters": [_param("limit", "query", "Page size.", {"type": "integer", "minimum": 1,
                                                                     "maximum": 100, "default": 20}),
                           _param("after", "query", "A job id: the page starts after it.")],
            "responses": {"200": _ok("A page of jobs.", _json("JobList")), **_errors(400, 401, 404, 503)},
        },
        ("GET", "/v1/jobs/{job_id}"): {
            "tags": ["jobs"], "summary": "A job's status",
            "parameters": [JOB_ID, _param("If-None-Match", "header", "An ETag from an earlier answer.")],
            "responses": {"200": _ok("The job.", _json("JobView"), JOB_HEADERS),
                          "304": _ok("Unchanged since the ETag sent in `If-None-Match`.",
                                     headers={"ETag": JOB_HEADERS["ETag"]}),
                          **_errors(401, 404, 503)},
        },
        ("GET", "/v1/jobs/{job_id}/events"): {
            "tags": ["jobs"], "summary": "A job's events as server-sent events, resumable",
            "parameters": [JOB_ID,
                           _param("Last-Event-ID", "header", "Resume after this event id.",
                                  {"type": "string", "pattern": "^[0-9]+$"}),
                           _param("after", "query", "Resume after this event id (as `Last-Event-ID`).",
                                  {"type": "integer", "minimum": 0})],
            "responses": {
                "200": _ok("Every event has an `id:`. Deltas are unnamed `chat.completion.chunk` events; "
                           "lifecycle events are named `job.running`, `job.restarted`, `job.succeeded`, "
                           "`job.failed`, `job.cancelled`; the stream ends after the terminal one.",
                           _sse("ChatCompletionChunk", "Server-sent events of the job."),
                           {"x-job-id": _hdr("The job's id.")}),
                **_errors(400, 401, 404, 503)},
        },
        ("GET", "/v1/jobs/{job_id}/result"): {
            "tags": ["jobs"], "summary": "A finished job's result (the body the synchronous call returns)",
            "parameters": [JOB_ID],
            "responses": {"200": _ok("The result.", _json({"oneOf": [_ref("ChatCompletion"),
                                                                      _ref("TextCompletion"),
                                                                      _ref("EmbeddingList")]})),
                          **_errors(401, 404, 409, 500, 503)},
        },
        ("POST", "/v1/jobs/{job_id}/cancel"): {
            "tags": ["jobs"], "summary": "Cancel a job (idempotent; a finished job is left as it is)",
            "parameters": [JOB_ID],
            "responses": {"200": _ok("The job as it was when the cancel was asked.", _json("JobView"),
                                     {**JOB_HEADERS, "cancel-requested": _hdr("`true`, or `false` for a "
                                                                              "finished job.")}),
                          **_errors(401, 404, 503)},
        },
        ("GET", "/v1/models"): {
            "tags": ["models"], "summary": "The catalog's models",
            "responses": {"200": _ok("The models.", _json("ModelList")), **_errors(401)},
        },
        ("GET", "/v1/models/{model}"): {
            "tags": ["models"], "summary": "One model of the catalog",
            "parameters": [_param("model", "path", "The model's id (may contain `/`).")],
            "responses": {"200": _ok("The model.", _json("Model")), **_errors(401, 404)},
        },
        ("GET", "/v1/ws"): {
            "tags": ["websocket"], "summary": "WebSocket: several jobs on one socket (docs/websocket.md)",
            "description": "A WebSocket upgrade, not a plain HTTP call. Authenticate with the subprotocol "
                           "`bearer.<key>` or a first message `{\"type\": \"auth\", \"api_key\": ...}`; then "
                           "`request`, `cancel` and `resume` messages.",
            "security": [],
            "parameters": [_param("Sec-WebSocket-Protocol", "header", "`bearer.<key>`, optionally.")],
            "responses": {"101": _ok("Switching Protocols: the socket is open."), **_errors(401, 404)},
        },
        ("GET", "/healthz"): {
            "tags": ["operations"], "summary": "Liveness", "security": [],
            "responses": {"200": _ok("The process is up.", _json("Health"))},
        },
        ("GET", "/readyz"): {
            "tags": ["operations"], "summary": "Readiness: Temporal and NATS (and what else the proxy needs)",
            "security": [],
            "responses": {"200": _ok("Ready.", _json("Readiness")),
                          "503": _ok("Not ready; `failed` lists the checks that failed.", _json("Readiness"))},
        },
        ("GET", "/metrics"): {
            "tags": ["operations"], "summary": "Prometheus metrics", "security": [],
            "responses": {"200": _ok("The Prometheus text exposition format.",
                                     {"text/plain": {"schema": {"type": "string"}}})},
        },
        **{("GET", path): {
            "tags": ["operations"], "summary": "The chat page (static HTML; no key needed to load it)",
            "security": [], "responses": {"200": _ok("The page.", {"text/html": {"schema": {"type": "string"}}})},
        } for path in ("/", "/chat")},
        ("GET", "/static/{name}"): {
            "tags": ["operations"], "summary": "The chat page's script and style", "security": [],
            "parameters": [_param("name", "path", "`chat.js`, `markdown.js` or `chat.css`.")],
            "responses": {"200": _ok("The file.", {"text/javascript": {"schema": {"type": "string"}},
                                                   "text/css": {"schema": {"type": "string"}}}),
                          **_errors(404)},
        },
        ("GET", "/openapi.json"): {
            "tags": ["operations"], "summary": "This document", "security": [],
            "responses": {"200": _ok("The OpenAPI 3.1 document.", _json({"type": "object"}))},
        },
        ("POST", "/admin/tenants"): {
            "tags": admin, "summary": "Create a tenant (operator admin keys only)",
            "requestBody": {"required": True, "content": _json("TenantCreate")},
            "responses": {"201": _ok("The tenant.", _json("Tenant")), **_errors(400, 401, 403, 409, 413)},
        },
        ("PATCH", "/admin/tenants/{tenant_id}"): {
            "tags": admin, "summary": "Change a tenant (its own admin: `cors_origins` only)",
            "parameters": [_param("tenant_id", "path", "The tenant's id.")],
            "requestBody": {"required": True, "content": _json("TenantUpdate")},
            "responses": {"200": _ok("The tenant.", _json("Tenant")), **_errors(400, 401, 403, 404, 413)},
        },
        ("GET", "/admin/tenants"): {
            "tags": admin, "summary": "List tenants (an operator sees all, others their own)",
            "responses": {"200": _ok("Tenants (`data` holds Tenant objects).", _json("AdminList")),
                          **_errors(401, 403)},
        },
        ("POST", "/admin/keys"): {
            "tags": admin, "summary": "Create an API key; the key is returned once",
            "requestBody": {"required": True, "content": _json("KeyCreate")},
            "responses": {"201": _ok("The key record, with `key` (shown only here).", _json("KeyRecord")),
                          **_errors(400, 401, 403, 404, 413)},
        },
        ("GET", "/admin/keys"): {
            "tags": admin, "summary": "List API keys (no secrets)",
            "parameters": [_param("tenant", "query", "A tenant id (operators: any; others: their own).")],
            "responses": {"200": _ok("Keys (`data` holds KeyRecord objects).", _json("AdminList")),
                          **_errors(401, 403, 404)},
        },
        ("POST", "/admin/keys/{key_id}/revoke"): {
            "tags": admin, "summary": "Revoke an API key",
            "parameters": [_param("key_id", "path", "The key's id.")],
            "responses": {"200": _ok("The revoked key's record.", _json("KeyRecord")),
                          **_errors(401, 403, 404)},
        },
        **{("POST", f"/admin/codec/{verb}"): {
            "tags": admin, "summary": f"Temporal codec server: {verb} payloads (operator admin keys only)",
            "description": "For `temporal workflow show --codec-endpoint <proxy>/admin/codec` and Temporal's UI: "
                           "`{\"payloads\": [...]}` in protobuf JSON, through the AES-GCM payload codec.",
            "requestBody": {"required": True, "content": _json(_PAYLOADS)},
            "responses": {"200": _ok(f"The {verb}d payloads.", _json(_PAYLOADS)), **_errors(400, 401, 403, 413)},
        } for verb in ("decode", "encode")},
        ("GET", "/admin/usage"): {
            "tags": admin, "summary": "A tenant's usage against its limits",
            "parameters": [_param("tenant", "query", "A tenant id (operators: any; others: their own).")],
            "responses": {"200": _ok("Requests and tokens by period, per tenant and key.",
                                     _json({"type": "object"})),
                          **_errors(401, 403, 404)},
        },
    }


_PAYLOADS = {"type": "object", "required": ["payloads"], "properties": {"payloads": {"type": "array", "items": {
    "type": "object", "properties": {"metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                     "data": {"type": "string"}}}}}}
_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def openapi_path(path: str) -> str:
    """Starlette's `/v1/models/{model:path}` as OpenAPI's `/v1/models/{model}`."""
    return _CONVERTER.sub(r"{\1}", path)


def _undocumented(method: str, path: str) -> dict[str, Any]:
    params = [_param(name, "path", name) for name in re.findall(r"\{(\w+)\}", path)]
    op: dict[str, Any] = {"summary": f"{method} {path}", UNDOCUMENTED: True,
                          "responses": {"200": _ok("Success."), **_errors()}}
    if params:
        op["parameters"] = params
    return op


def _routes(routes: list[Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, WebSocketRoute):
            out.append(("GET", openapi_path(route.path)))
        elif isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                out.append((method, openapi_path(route.path)))
    return out


def build_openapi(routes: list[Any], version: str = "0.1.0") -> dict[str, Any]:
    described = _operations()
    paths: dict[str, dict[str, Any]] = {}
    for method, path in _routes(routes):
        op = dict(described.get((method, path)) or _undocumented(method, path))
        op.setdefault("operationId", _operation_id(method, path))
        paths.setdefault(path, {})[method.lower()] = op
    _, components = msgspec.json.schema_components(_structs(), ref_template=REF)
    envelope = {"description": "An error in OpenAI's envelope.", "content": _json("ErrorEnvelope"),
                "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}}}
    responses: dict[str, Any] = {"Error": envelope}
    for status, text in _ERROR_TEXT.items():
        responses[f"Error{status}"] = {**envelope, "description": text}
    responses["Error500"] = {**envelope, "description": "An internal error, or a job that failed."}
    _add_request_id(paths)
    doc = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Switchyard", "version": version,
                 "description": "A durable OpenAI-compatible serving proxy. Every response carries "
                                "`x-request-id`; errors use OpenAI's envelope `{\"error\": {\"message\", "
                                "\"type\", \"param\", \"code\"}}`.",
                 "license": {"name": "Proprietary", "identifier": "LicenseRef-Proprietary"}},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in ("chat", "completions", "embeddings", "jobs", "models", "websocket",
                                        "admin", "operations")],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": responses,
            "headers": {"RequestId": {"description": "The request's id (the client's `x-request-id` when "
                                                     "well-formed).", "schema": {"type": "string"}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "`Authorization: Bearer <API key>`."}},
        },
    }
    return msgspec.json.decode(msgspec.json.encode(doc))  # plain JSON values (tuples become lists)


def _add_request_id(paths: dict[str, dict[str, Any]]) -> None:
    for item in paths.values():
        for op in item.values():
            for status, response in list(op["responses"].items()):
                if "$ref" in response:
                    continue
                op["responses"][status] = {**response, "headers": {
                    **response.get("headers", {}), "x-request-id": {"$ref": "#/components/headers/RequestId"}}}


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.replace("{", "by_").replace("}", "")) if w]
    return method.lower() + "_" + "_".join(words)


async def openapi_endpoint(request):
    """GET /openapi.json: built once per app from its routes."""
    from starlette.responses import Response

    state = request.app.state
    body = getattr(state, "openapi_json", None)
    if body is None:
        body = state.openapi_json = msgspec.json.encode(build_openapi(request.app.routes))
    return Response(body, media_type="application/json")
