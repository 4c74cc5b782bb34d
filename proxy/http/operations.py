"""The hand-written OpenAPI operations, by (method, path): what a route takes and answers, in the
words a client needs. proxy/http/openapi.py joins them with the app's routes and the structs' schemas.
"""

from __future__ import annotations

from typing import Any

from schemas.events import LIFECYCLE_EVENTS

REF = "#/components/schemas/{name}"


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def json_content(schema: dict[str, Any] | str) -> dict[str, Any]:
    return {"application/json": {"schema": schema_ref(schema) if isinstance(schema, str) else schema}}


def _sse(data: str | None, description: str) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"type": "string", "description": description}}
    if data:
        media["x-sse-data"] = schema_ref(data)
    return {"text/event-stream": media}


ERROR_TEXT = {
    400: "Invalid request: malformed JSON, an invalid parameter (`param` names it), or the engine rejected it.",
    401: "Missing or wrong API key.",
    403: "The key may not use this model, endpoint or admin operation.",
    404: "Unknown model, job, tenant, key or route.",
    409: "Conflict: an Idempotency-Key reused with another body, or a job not finished yet.",
    413: "Body over the size limit.",
    429: "Rate limit or quota exceeded; `retry-after` says when to retry.",
    503: "Engine unreachable, no worker picked the job up in time, or the orchestrator is down.",
}


def error_responses(*statuses: int) -> dict[str, Any]:
    out = {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in statuses}
    out["default"] = {"$ref": "#/components/responses/Error"}
    return out


def parameter(name: str, where: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": schema or {"type": "string"}}


IDEMPOTENCY = parameter("Idempotency-Key", "header", "The same key and body from the same tenant returns the "
                     "same job (no second generation); another body is 409 `idempotency_key_reused`.",
                     {"type": "string", "minLength": 1, "maxLength": 255})
PREFER = parameter("Prefer", "header", "`respond-async` answers 202 with the job (`Location: /v1/jobs/{id}`) "
                "instead of waiting for the result.")
JOB_ID = parameter("job_id", "path", "The job's id (`x-job-id`, the completion id).")


def ok(description: str, content: dict[str, Any] | None = None,
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
ACCEPTED = ok("The job was accepted (`Prefer: respond-async`); poll its `Location`.", json_content("JobView"),
               {"Location": _hdr("`/v1/jobs/{id}`."), **JOB_HEADERS,
                "Preference-Applied": _hdr("`respond-async`.")})


def generation_operation(tag: str, summary: str, request: str, result: str, chunk: str, stream_text: str) -> dict:
    return {
        "tags": [tag], "summary": summary,
        "parameters": [IDEMPOTENCY, PREFER],
        "requestBody": {"required": True, "content": json_content(request),
                        "description": "OpenAI's request; other fields are a 400 unless the "
                                       "model's `extra_params` name them."},
        "responses": {
            "200": ok("`stream: false`: the result as JSON. `stream: true`: " + stream_text,
                       {**json_content(result), **_sse(chunk, stream_text)},
                       {"x-job-id": _hdr("The job's id (also the completion id and the workflow id).")}),
            "202": ACCEPTED,
            **error_responses(400, 401, 403, 404, 409, 413, 429, 503),
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


def audio_in_operation(summary: str) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string", "description": "`text`, `srt` or `vtt`."}}}
    return {
        "tags": ["audio"], "summary": summary, "parameters": [IDEMPOTENCY, PREFER],
        "requestBody": {"required": True, "content": TRANSCRIPTION_FORM},
        "responses": {"200": ok("The transcript in the asked `response_format`.",
                                 {"application/json": {"schema": {"oneOf": [schema_ref("TranscriptionJSON"),
                                                                            schema_ref("VerboseTranscription")]}},
                                  **text}, {"x-job-id": _hdr("The job's id.")}),
                      "202": ACCEPTED, **error_responses(400, 401, 403, 404, 409, 413, 429, 503)},
    }


CHAT_STREAM = ("a `text/event-stream` of `chat.completion.chunk` events, each with `id: <seq>`; "
               "`stream_options.include_usage` adds a chunk with `choices: []` and `usage`; it ends "
               "with `data: [DONE]`. Idle streams get `: keep-alive` comments. After the first byte an "
               "error is sent in-band as `data: {\"error\": {...}}` then `data: [DONE]`.")


JOB_ID_HEADER = {"x-job-id": _hdr("The job's id.")}
JOB_ERRORS = (400, 401, 403, 404, 409, 413, 429, 503)


def json_job_operation(tag: str, summary: str, request: str, result: dict[str, Any],
                       statuses: tuple[int, ...] = JOB_ERRORS) -> dict[str, Any]:
    """A job endpoint taking a JSON body and answering with `result` (a `200` response object)."""
    return {
        "tags": [tag], "summary": summary,
        "parameters": [IDEMPOTENCY, PREFER],
        "requestBody": {"required": True, "content": json_content(request)},
        "responses": {"200": result, "202": ACCEPTED, **error_responses(*statuses)},
    }


def described_operations() -> dict[tuple[str, str], dict[str, Any]]:
    """The operations of the routes that are not job endpoints (those are in proxy/endpoints/)."""
    admin = ["admin"]
    return {
        ("POST", "/v1/jobs"): {
            "tags": ["jobs"], "summary": "Create a job for an OpenAI endpoint's body",
            "parameters": [IDEMPOTENCY],
            "requestBody": {"required": True, "content": json_content("JobCreate")},
            "responses": {"202": ACCEPTED, **error_responses(400, 401, 403, 404, 409, 413, 429, 503)},
        },
        ("GET", "/v1/jobs"): {
            "tags": ["jobs"], "summary": "List the caller's jobs, newest first",
            "parameters": [parameter("limit", "query", "Page size.", {"type": "integer", "minimum": 1,
                                                                     "maximum": 100, "default": 20}),
                           parameter("after", "query", "A job id: the page starts after it.")],
            "responses": {"200": ok("A page of jobs.", json_content("JobList")), **error_responses(400, 401, 404, 503)},
        },
        ("GET", "/v1/jobs/{job_id}"): {
            "tags": ["jobs"], "summary": "A job's status",
            "parameters": [JOB_ID, parameter("If-None-Match", "header", "An ETag from an earlier answer.")],
            "responses": {"200": ok("The job.", json_content("JobView"), JOB_HEADERS),
                          "304": ok("Unchanged since the ETag sent in `If-None-Match`.",
                                     headers={"ETag": JOB_HEADERS["ETag"]}),
                          **error_responses(401, 404, 503)},
        },
        ("GET", "/v1/jobs/{job_id}/events"): {
            "tags": ["jobs"], "summary": "A job's events as server-sent events, resumable",
            "parameters": [JOB_ID,
                           parameter("Last-Event-ID", "header", "Resume after this event id.",
                                  {"type": "string", "pattern": "^[0-9]+$"}),
                           parameter("after", "query", "Resume after this event id (as `Last-Event-ID`).",
                                  {"type": "integer", "minimum": 0})],
            "responses": {
                "200": ok("Every event has an `id:`. Deltas are unnamed `chat.completion.chunk` events; "
                           "lifecycle events are named " + ", ".join(f"`{n}`" for n in LIFECYCLE_EVENTS)
                           + "; the stream ends after the terminal one.",
                           _sse("ChatCompletionChunk", "Server-sent events of the job."),
                           {"x-job-id": _hdr("The job's id.")}),
                **error_responses(400, 401, 404, 503)},
        },
        ("GET", "/v1/jobs/{job_id}/result"): {
            "tags": ["jobs"], "summary": "A finished job's result (the body the synchronous call returns)",
            "parameters": [JOB_ID],
            "responses": {"200": ok("The result.", json_content({"oneOf": [schema_ref("ChatCompletion"),
                                                                      schema_ref("TextCompletion"),
                                                                      schema_ref("EmbeddingList")]})),
                          **error_responses(401, 404, 409, 500, 503)},
        },
        ("POST", "/v1/jobs/{job_id}/cancel"): {
            "tags": ["jobs"], "summary": "Cancel a job (idempotent; a finished job is left as it is)",
            "parameters": [JOB_ID],
            "responses": {"200": ok("The job as it was when the cancel was asked.", json_content("JobView"),
                                     {**JOB_HEADERS, "cancel-requested": _hdr("`true`, or `false` for a "
                                                                              "finished job.")}),
                          **error_responses(401, 404, 503)},
        },
        ("GET", "/v1/models"): {
            "tags": ["models"], "summary": "The catalog's models",
            "responses": {"200": ok("The models.", json_content("ModelList")), **error_responses(401)},
        },
        ("GET", "/v1/models/{model}"): {
            "tags": ["models"], "summary": "One model of the catalog",
            "parameters": [parameter("model", "path", "The model's id (may contain `/`).")],
            "responses": {"200": ok("The model.", json_content("Model")), **error_responses(401, 404)},
        },
        ("GET", "/v1/ws"): {
            "tags": ["websocket"], "summary": "WebSocket: several jobs on one socket (docs/websocket.md)",
            "description": "A WebSocket upgrade, not a plain HTTP call. Authenticate with the subprotocol "
                           "`bearer.<key>` or a first message `{\"type\": \"auth\", \"api_key\": ...}`; then "
                           "`request`, `cancel` and `resume` messages.",
            "security": [],
            "parameters": [parameter("Sec-WebSocket-Protocol", "header", "`bearer.<key>`, optionally.")],
            "responses": {"101": ok("Switching Protocols: the socket is open."), **error_responses(401, 404)},
        },
        ("GET", "/healthz"): {
            "tags": ["operations"], "summary": "Liveness", "security": [],
            "responses": {"200": ok("The process is up.", json_content("Health"))},
        },
        ("GET", "/readyz"): {
            "tags": ["operations"], "summary": "Readiness: Temporal and NATS (and what else the proxy needs)",
            "security": [],
            "responses": {"200": ok("Ready.", json_content("Readiness")),
                          "503": ok("Not ready; `failed` lists the checks that failed.", json_content("Readiness"))},
        },
        ("GET", "/metrics"): {
            "tags": ["operations"], "summary": "Prometheus metrics", "security": [],
            "responses": {"200": ok("The Prometheus text exposition format.",
                                     {"text/plain": {"schema": {"type": "string"}}})},
        },
        **{("GET", path): {
            "tags": ["operations"], "summary": "The chat page (static HTML; no key needed to load it)",
            "security": [], "responses": {"200": ok("The page.", {"text/html": {"schema": {"type": "string"}}})},
        } for path in ("/", "/chat")},
        ("GET", "/static/{name}"): {
            "tags": ["operations"], "summary": "The chat page's script and style", "security": [],
            "parameters": [parameter("name", "path", "`chat.js`, `markdown.js` or `chat.css`.")],
            "responses": {"200": ok("The file.", {"text/javascript": {"schema": {"type": "string"}},
                                                   "text/css": {"schema": {"type": "string"}}}),
                          **error_responses(404)},
        },
        ("GET", "/openapi.json"): {
            "tags": ["operations"], "summary": "This document", "security": [],
            "responses": {"200": ok("The OpenAPI 3.1 document.", json_content({"type": "object"}))},
        },
        ("POST", "/admin/tenants"): {
            "tags": admin, "summary": "Create a tenant (operator admin keys only)",
            "requestBody": {"required": True, "content": json_content("TenantCreate")},
            "responses": {"201": ok("The tenant.", json_content("Tenant")), **error_responses(400, 401, 403, 409, 413)},
        },
        ("PATCH", "/admin/tenants/{tenant_id}"): {
            "tags": admin, "summary": "Change a tenant (its own admin: `cors_origins` only)",
            "parameters": [parameter("tenant_id", "path", "The tenant's id.")],
            "requestBody": {"required": True, "content": json_content("TenantUpdate")},
            "responses": {"200": ok("The tenant.", json_content("Tenant")), **error_responses(400, 401, 403, 404, 413)},
        },
        ("GET", "/admin/tenants"): {
            "tags": admin, "summary": "List tenants (an operator sees all, others their own)",
            "responses": {"200": ok("Tenants (`data` holds Tenant objects).", json_content("AdminList")),
                          **error_responses(401, 403)},
        },
        ("POST", "/admin/keys"): {
            "tags": admin, "summary": "Create an API key; the key is returned once",
            "requestBody": {"required": True, "content": json_content("KeyCreate")},
            "responses": {"201": ok("The key record, with `key` (shown only here).", json_content("KeyRecord")),
                          **error_responses(400, 401, 403, 404, 413)},
        },
        ("GET", "/admin/keys"): {
            "tags": admin, "summary": "List API keys (no secrets)",
            "parameters": [parameter("tenant", "query", "A tenant id (operators: any; others: their own).")],
            "responses": {"200": ok("Keys (`data` holds KeyRecord objects).", json_content("AdminList")),
                          **error_responses(401, 403, 404)},
        },
        ("POST", "/admin/keys/{key_id}/revoke"): {
            "tags": admin, "summary": "Revoke an API key",
            "parameters": [parameter("key_id", "path", "The key's id.")],
            "responses": {"200": ok("The revoked key's record.", json_content("KeyRecord")),
                          **error_responses(401, 403, 404)},
        },
        **{("POST", f"/admin/codec/{verb}"): {
            "tags": admin, "summary": f"Temporal codec server: {verb} payloads (operator admin keys only)",
            "description": "For `temporal workflow show --codec-endpoint <proxy>/admin/codec` and Temporal's UI: "
                           "`{\"payloads\": [...]}` in protobuf JSON, through the AES-GCM payload codec.",
            "requestBody": {"required": True, "content": json_content(_PAYLOADS)},
            "responses": {"200": ok(f"The {verb}d payloads.", json_content(_PAYLOADS)),
                          **error_responses(400, 401, 403, 413)},
        } for verb in ("decode", "encode")},
        ("POST", "/admin/models/{model}/rollouts"): {
            "tags": admin, "summary": "Roll an alias out to a new model version (operator admin keys only)",
            "description": "Starts a RolloutWorkflow: deploy (optional) -> verify -> canary -> flip (one "
                           "compare-and-set in NATS KV) -> monitor; a breach flips the alias back. Body: `to` "
                           "(a model id) or `deploy`, `verify`, `canary_percent`, `canary_s`, `monitor`, `tenant`.",
            "parameters": [parameter("model", "path", "The alias clients use (may contain `/`).")],
            "requestBody": {"required": True, "content": json_content({"type": "object"})},
            "responses": {"202": ok("The rollout started.", json_content({"type": "object"})),
                          **error_responses(400, 401, 403, 404, 409, 413)},
        },
        ("POST", "/admin/models/{model}/rollback"): {
            "tags": admin, "summary": "Put an alias back on its previous version now (operator admin keys only)",
            "parameters": [parameter("model", "path", "The alias (may contain `/`).")],
            "responses": {"200": ok("The alias's state after the rollback.", json_content({"type": "object"})),
                          **error_responses(400, 401, 403, 404, 409)},
        },
        ("GET", "/admin/models/{model}"): {
            "tags": admin, "summary": "An alias's versions, status and rollout, or a model's catalog entry",
            "parameters": [parameter("model", "path", "An alias or model id (may contain `/`).")],
            "responses": {"200": ok("The alias or model.", json_content({"type": "object"})),
                          **error_responses(401, 403, 404)},
        },
        ("GET", "/admin/usage"): {
            "tags": admin, "summary": "A tenant's usage against its limits",
            "parameters": [parameter("tenant", "query", "A tenant id (operators: any; others: their own).")],
            "responses": {"200": ok("Requests and tokens by period, per tenant and key.",
                                     json_content({"type": "object"})),
                          **error_responses(401, 403, 404)},
        },
    }


_PAYLOADS = {"type": "object", "required": ["payloads"], "properties": {"payloads": {"type": "array", "items": {
    "type": "object", "properties": {"metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                     "data": {"type": "string"}}}}}}
