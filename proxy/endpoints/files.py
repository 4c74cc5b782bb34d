"""The Files API: POST/GET /v1/files, GET/DELETE /v1/files/{file_id}, GET /v1/files/{file_id}/content.

An upload streams from the request body to the object store as it arrives (proxy/http/form_stream.py,
orchestration/files.py), so the proxy holds a chunk of it at a time whatever its size; past
`SWITCHYARD_MAX_FILE_BYTES` it is a 413 and nothing is kept. The form's fields may come before or
after the file; a bad field after it discards the bytes already stored. A file is its tenant's
alone: another tenant's id is a 404, as an unknown one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gatekeeping.admission import require_scopes
from gatekeeping.auth import Principal
from orchestration.files import MAX_LIST_LIMIT, FileStore, FileTooLarge, StagedFile, check_purpose
from proxy.http.form_stream import FormStream
from proxy.http.operations import error_responses, json_content, ok, parameter
from proxy.runtime import Runtime
from schemas.errors import InvalidRequest, ServiceUnavailable
from schemas.files import (FILES_ENDPOINT, MAX_EXPIRES_AFTER_S, MIN_EXPIRES_AFTER_S, OUTPUT_PURPOSES,
                           UPLOAD_PURPOSES)

FORM_OVERHEAD = 64 * 1024  # the boundaries and the small fields around the file
FIELD_BYTES = 1024
FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")
_encoder = msgspec.json.Encoder()


def _json(value: Any) -> Response:
    return Response(_encoder.encode(value), media_type="application/json")


def _store(request: Request) -> tuple[FileStore, Principal]:
    principal: Principal = request.state.principal
    require_scopes(principal, FILES_ENDPOINT)
    rt: Runtime = request.app.state.runtime
    if rt.files is None:
        raise ServiceUnavailable("The file store is not available.", code="file_store_unavailable")
    return rt.files, principal


def _expires_after(fields: dict[str, str]) -> int | None:
    """`expires_after[seconds]` (with `expires_after[anchor]=created_at`), or None."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after[anchor]",
                             code="invalid_value")
    if seconds is None or not seconds.strip().isdigit() or \
            not MIN_EXPIRES_AFTER_S <= int(seconds) <= MAX_EXPIRES_AFTER_S:
        raise InvalidRequest(f"expires_after[seconds] must be an integer from {MIN_EXPIRES_AFTER_S} to "
                             f"{MAX_EXPIRES_AFTER_S}.", param="expires_after[seconds]", code="invalid_value")
    return int(seconds)


def _purpose(fields: dict[str, str]) -> str:
    if "purpose" not in fields:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    return check_purpose(fields["purpose"], UPLOAD_PURPOSES)


async def create_file(request: Request) -> Response:
    store, principal = _store(request)
    limit: int = request.app.state.runtime.settings.max_file_bytes
    form = FormStream(request, limit + FORM_OVERHEAD, lambda: FileTooLarge(limit))
    fields: dict[str, str] = {}
    staged: StagedFile | None = None
    filename = "file"
    try:
        async for part in form.parts():
            if part.name == "file":
                if staged is not None:
                    raise InvalidRequest("Send exactly one file.", param="file")
                if "purpose" in fields:  # refused before a byte is stored when the fields come first
                    _purpose(fields)
                    _expires_after(fields)
                filename = part.filename or "file"
                staged = await store.stage(principal.tenant, form.data(), limit)
            elif part.name in FIELDS:
                if part.name in fields:
                    raise InvalidRequest(f"The field '{part.name}' is given more than once.", param=part.name)
                fields[part.name] = (await form.text(FIELD_BYTES, part.name)).strip()
            else:
                raise InvalidRequest(f"Unrecognized request argument supplied: {part.name[:64]}",
                                     param=part.name[:64], code="unknown_parameter")
        if staged is None:
            raise InvalidRequest("Missing required parameter: 'file'.", param="file",
                                 code="missing_required_parameter")
        purpose = _purpose(fields)
        seconds = _expires_after(fields)
        expires_at = None if seconds is None else staged.created_at + seconds
        file = await store.commit(staged, purpose, filename, expires_at)
    except BaseException:
        if staged is not None:
            await store.discard(staged)
        raise
    return _json(file)


def _limit(raw: str | None) -> int:
    if raw is None:
        return MAX_LIST_LIMIT
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.", param="limit",
                             code="invalid_value")
    return int(raw)


async def list_files(request: Request) -> Response:
    store, principal = _store(request)
    q = request.query_params
    purpose = q.get("purpose") or None
    if purpose is not None:
        check_purpose(purpose, UPLOAD_PURPOSES + OUTPUT_PURPOSES)
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order", code="invalid_value")
    after = q.get("after") or None
    if after is not None and len(after) > 64:
        raise InvalidRequest("after must be a file id.", param="after", code="invalid_value")
    return _json(await store.list(principal.tenant, purpose=purpose, after=after, limit=_limit(q.get("limit")),
                                  order=order))


async def retrieve_file(request: Request) -> Response:
    store, principal = _store(request)
    return _json(await store.get(principal.tenant, request.path_params["file_id"]))


async def file_content(request: Request) -> Response:
    store, principal = _store(request)
    file_id = request.path_params["file_id"]
    file = await store.get(principal.tenant, file_id)  # a 404 before the response starts
    headers = {"content-length": str(file.bytes),
               "content-disposition": f"attachment; filename*=UTF-8''{quote(file.filename, safe='')}"}
    return StreamingResponse(store.content(principal.tenant, file_id), media_type="application/octet-stream",
                             headers=headers)


async def delete_file(request: Request) -> Response:
    store, principal = _store(request)
    return _json(await store.delete(principal.tenant, request.path_params["file_id"]))


ROUTES = [
    Route(FILES_ENDPOINT, create_file, methods=["POST"]),
    Route(FILES_ENDPOINT, list_files, methods=["GET"]),
    Route(FILES_ENDPOINT + "/{file_id}", retrieve_file, methods=["GET"]),
    Route(FILES_ENDPOINT + "/{file_id}", delete_file, methods=["DELETE"]),
    Route(FILES_ENDPOINT + "/{file_id}/content", file_content, methods=["GET"]),
]


_FILE_ID = parameter("file_id", "path", "The file's id (`file-` + 32 hex digits).")
_UPLOAD_FORM = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "The file; streamed to the object store, at most SWITCHYARD_MAX_FILE_BYTES."},
        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": MIN_EXPIRES_AFTER_S,
                                   "maximum": MAX_EXPIRES_AFTER_S},
    }}}}
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", FILES_ENDPOINT): {
        "tags": ["files"], "summary": "Upload a file", "requestBody": {"required": True, "content": _UPLOAD_FORM},
        "responses": {"200": ok("The file.", json_content("FileObject")), **error_responses(400, 401, 403, 413, 503)},
    },
    ("GET", FILES_ENDPOINT): {
        "tags": ["files"], "summary": "List the caller's files",
        "parameters": [
            parameter("purpose", "query", "Only files with this purpose.",
                      {"type": "string", "enum": list(UPLOAD_PURPOSES + OUTPUT_PURPOSES)}),
            parameter("limit", "query", "Page size.", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT,
                                                       "default": MAX_LIST_LIMIT}),
            parameter("after", "query", "A file id: the page starts after it.", {"type": "string", "maxLength": 64}),
            parameter("order", "query", "By creation time.", {"type": "string", "enum": ["asc", "desc"],
                                                               "default": "desc"})],
        "responses": {"200": ok("A page of files.", json_content("FileList")), **error_responses(400, 401, 403, 503)},
    },
    ("GET", FILES_ENDPOINT + "/{file_id}"): {
        "tags": ["files"], "summary": "A file's metadata", "parameters": [_FILE_ID],
        "responses": {"200": ok("The file.", json_content("FileObject")), **error_responses(401, 403, 404, 503)},
    },
    ("DELETE", FILES_ENDPOINT + "/{file_id}"): {
        "tags": ["files"], "summary": "Delete a file", "parameters": [_FILE_ID],
        "responses": {"200": ok("Deleted.", json_content("FileDeleted")), **error_responses(401, 403, 404, 503)},
    },
    ("GET", FILES_ENDPOINT + "/{file_id}/content"): {
        "tags": ["files"], "summary": "A file's bytes", "parameters": [_FILE_ID],
        "responses": {"200": ok("The bytes, as uploaded.",
                                {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}),
                      **error_responses(401, 403, 404, 503)},
    },
}
