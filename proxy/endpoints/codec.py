"""Temporal's codec server protocol on the admin surface, for operators only: POST /admin/codec/decode
and /admin/codec/encode take and return {"payloads": [...]} as protobuf JSON (bytes in base64), run
through the payload codec (orchestration/codec.py), so `temporal workflow show --codec-endpoint` and
the Temporal UI can show encrypted histories. An operator tenant's admin key is required. Browsers
(the UI's origin) get CORS from the proxy's CORS middleware (SWITCHYARD_CORS_ORIGINS).
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from orchestration.codec import PayloadKeyError, PayloadTampered
from orchestration.converter import data_converter
from proxy.http.body import read_json_body
from schemas.errors import Forbidden, InvalidRequest
from proxy.endpoints.admin import _admin

_BODY_LIMIT = 32 * 1024 * 1024  # a page of history: several payloads of up to 2 MB each


def _parse(raw: dict[str, Any]) -> Payloads:
    return json_format.ParseDict(raw, Payloads())


def _render(payloads: list) -> bytes:
    return json_format.MessageToJson(Payloads(payloads=payloads), indent=None).encode()


async def _run(request: Request, decode: bool) -> Response:
    p = _admin(request)
    if not p.operator:
        raise Forbidden("Only an operator's admin key can encode or decode Temporal payloads.")
    raw = await read_json_body(request, _BODY_LIMIT)
    try:
        payloads = await asyncio.to_thread(_parse, raw)
    except json_format.ParseError as exc:
        raise InvalidRequest(f"Expected {{\"payloads\": [...]}} in protobuf JSON: {str(exc)[:200]}",
                             param="payloads", code="invalid_payloads") from None
    codec = data_converter.payload_codec
    assert codec is not None
    try:
        out = await (codec.decode if decode else codec.encode)(payloads.payloads)
    except PayloadKeyError as exc:
        raise InvalidRequest(str(exc), param="payloads", code="payload_key_unknown") from None
    except PayloadTampered as exc:
        raise InvalidRequest(str(exc), param="payloads", code="payload_tampered") from None
    return Response(await asyncio.to_thread(_render, out), media_type="application/json")


async def decode(request: Request) -> Response:
    return await _run(request, decode=True)


async def encode(request: Request) -> Response:
    return await _run(request, decode=False)


ROUTES = [
    Route("/admin/codec/decode", decode, methods=["POST"]),
    Route("/admin/codec/encode", encode, methods=["POST"]),
]
