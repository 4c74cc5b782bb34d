"""Adapter for engines that speak the OpenAI HTTP protocol: vLLM, llama.cpp's llama-server, SGLang."""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Union

import httpx
import msgspec

from adapters.base import EngineError, StreamPiece, rejected, unavailable
from schemas.catalog import EngineSpec
from schemas.openai import Usage


class _Delta(msgspec.Struct):
    content: Union[str, None] = None
    reasoning_content: Union[str, None] = None
    role: Union[str, None] = None
    tool_calls: Union[list[dict[str, Any]], None] = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: Union[str, None] = None
    index: int = 0


class _ErrorBody(msgspec.Struct):
    message: str = ""
    type: Union[str, None] = None
    code: Union[str, int, None] = None
    param: Union[str, None] = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: Union[Usage, None] = None
    model: Union[str, None] = None
    error: Union[_ErrorBody, None] = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_body_encoder = msgspec.json.Encoder()

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def classify_status(status: int, text: str) -> EngineError:
    """Map an engine's HTTP error to the client-facing error and its retry class."""
    message = _error_message(text) or f"engine answered HTTP {status}"
    if status in RETRYABLE_STATUS:
        return unavailable(f"engine unavailable: {message}")
    if status in (400, 413, 422):
        return rejected(message, code="engine_rejected")
    return EngineError(message, status=502, retryable=False, code="engine_error")


def _error_message(text: str) -> str:
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message", ""))[:300]
        return str(err)[:300]
    return ""


class OpenAIProtocolAdapter:
    capabilities = frozenset({"chat", "prefix_continuation"})

    def __init__(self, spec: EngineSpec, client: httpx.AsyncClient | None = None):
        self._spec = spec
        self._url = spec.url.rstrip("/") + "/chat/completions"
        headers = {"content-type": "application/json"}
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._headers = headers
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(spec.read_timeout_s, connect=spec.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        payload = dict(body)
        if self._spec.served_name:
            payload["model"] = self._spec.served_name
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        content = _body_encoder.encode(payload)
        try:
            async with self._client.stream("POST", self._url, content=content,
                                           headers=self._headers) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    raise classify_status(response.status_code, text)
                async for piece in _parse_sse(response):
                    yield piece
        except httpx.ConnectError as exc:
            raise unavailable(f"engine unreachable: {type(exc).__name__}") from None
        except httpx.TimeoutException as exc:
            raise unavailable(f"engine timed out: {type(exc).__name__}", code="engine_timeout") from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise unavailable(f"engine connection lost: {type(exc).__name__}",
                              code="engine_connection_lost") from None


async def _parse_sse(response: httpx.Response) -> AsyncIterator[StreamPiece]:
    finished = False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            finished = True
            break
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.DecodeError:
            raise EngineError("engine sent a malformed stream event", status=502,
                              retryable=True, code="engine_bad_output") from None
        if chunk.error is not None:
            raise EngineError(chunk.error.message or "engine error", status=502,
                              retryable=False, code="engine_error")
        for choice in chunk.choices:
            d = choice.delta
            yield StreamPiece(content=d.content or "", reasoning=d.reasoning_content or "",
                              role=d.role, tool_calls=d.tool_calls,
                              finish_reason=choice.finish_reason, model=chunk.model)
        if chunk.usage is not None:
            yield StreamPiece(usage=chunk.usage, model=chunk.model)
    if not finished:
        raise unavailable("engine closed the stream before it finished", code="engine_connection_lost")
