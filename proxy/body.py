"""Reading a JSON request body with a size limit and OpenAI-style 4xx errors."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request

from proxy.errors import InvalidRequest, PayloadTooLarge

_decoder = msgspec.json.Decoder()


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        value = _decoder.decode(data)
    except msgspec.DecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request. (HINT: This likely "
                             "means you aren't using your HTTP library correctly.)",
                             code="invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return value
