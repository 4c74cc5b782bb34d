"""Adapter for NVIDIA Triton Inference Server over HTTP (KServe v2 protocol and its extensions).

- chat, completions: the generate extension, `POST /v2/models/{m}/generate_stream` with
  `{"text_input": ..., "parameters": {...}}`, answered with SSE events `data: {"model_name",
  "model_version", "text_output": ...}` (any other output tensor appears as a field of its name);
  the stream has no end marker: it ends with the body. An error before inference is an HTTP status
  with `{"error": "..."}`; one during inference is an event `data: {"error": "..."}` on a 200 stream.
- embeddings: `POST /v2/models/{m}/infer` with a BYTES input tensor of the texts and an FP32 output
  tensor, whose `data` is flattened row-major and reshaped here by its `shape`.
- readiness: `GET /v2/models/{m}/ready` answers 200 when the model is ready.
Triton's generate takes text, not messages, so chat is rendered here with the catalog's simple
template (`triton_message_format`, `triton_generation_prompt`, or only the last user message).
Where the model ships a chat template of its own, prefer a deployment that applies it (Triton's
OpenAI-compatible frontend, as kind `openai`). Stop sequences are applied here, since generate
parameters cannot carry a list. Sources: triton-inference-server/server docs/protocol/
extension_generate.md; the KServe Open Inference Protocol (v2) REST specification.
"""

from __future__ import annotations

import math
from typing import Any, AsyncIterator, Union
from urllib.parse import quote

import httpx
import msgspec

from adapters.base import (
    probe,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    PREFIX_CONTINUATION,
    EmbeddingResult,
    StreamPiece,
    bad_output,
    declared_capabilities,
    http_client,
    open_stream,
    refuse_fields,
    rejected,
    require,
    single_prompt,
    sse_data,
    status_error,
    transport_errors,
    unavailable,
)
from schemas.catalog import EngineSpec
from schemas.openai import Usage


class _Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class _InferResponse(msgspec.Struct):
    outputs: list[_Tensor]


_infer_decoder = msgspec.json.Decoder(_InferResponse)
_encoder = msgspec.json.Encoder()
_FLOAT_TYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})


class TritonAdapter:
    supported = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, PREFIX_CONTINUATION})

    @classmethod
    def supported_for(cls, spec: EngineSpec) -> frozenset[str]:
        if spec.triton_chat_mode == "last_user":  # history is dropped: nothing to continue
            return cls.supported - {PREFIX_CONTINUATION}
        return cls.supported

    def __init__(self, spec: EngineSpec, client: httpx.AsyncClient | None = None):
        self._spec = spec
        self.capabilities = declared_capabilities(self.supported_for(spec), spec.capabilities, spec.kind)
        self._model_url = f"{spec.url.rstrip('/')}/v2/models/{quote(spec.served_name, safe='')}"
        self._headers = {"content-type": "application/json"}
        self._client = client or http_client(spec.connect_timeout_s, spec.read_timeout_s)
        # One event struct per adapter: the text output's field is the model's tensor name.
        self._event_decoder = msgspec.json.Decoder(msgspec.defstruct("TritonEvent", [
            ("text", Any, None), ("error", Union[str, None], None), ("finish_reason", Any, None),
            ("prompt_tokens", Any, None), ("completion_tokens", Any, None),
        ], rename={"text": spec.triton_text_output}))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ready(self) -> bool:
        return await probe(self._client, self._model_url + "/ready", self._spec.connect_timeout_s)

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        require(self, CHAT, "triton")
        refuse_fields(body, ("tools", "logprobs"))
        async for piece in self._generate(render_chat(self._spec, body), body, role="assistant"):
            yield piece

    async def stream_completion(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        require(self, COMPLETIONS, "triton")
        async for piece in self._generate(single_prompt(body), body, role=None):
            yield piece

    async def _generate(self, text: str, body: dict[str, Any], role: str | None) -> AsyncIterator[StreamPiece]:
        spec = self._spec
        options: dict[str, Any] = {"stream": True}
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        for name in ("temperature", "top_p", "seed"):
            if body.get(name) is not None:
                options[name] = body[name]
        payload: dict[str, Any] = {spec.triton_text_input: text}
        if spec.triton_params_as_inputs:
            payload.update(options)
        else:
            payload["parameters"] = options
        stop = body.get("stop")
        matcher = StopMatcher([stop] if isinstance(stop, str) else list(stop or []))
        seen, finish, usage = "", None, Usage()
        async with open_stream(self._client, self._model_url + "/generate_stream",
                               _encoder.encode(payload), self._headers) as response:
            async for data in sse_data(response):
                try:
                    event = self._event_decoder.decode(data)
                except msgspec.DecodeError:
                    raise bad_output() from None
                if event.error is not None:  # a model's traceback ends with what went wrong
                    lines = event.error.strip().splitlines() or ["engine error"]
                    raise unavailable(f"engine failed: {lines[-1][:300]}", code="engine_generation_error")
                chunk = _as_text(event.text)
                if spec.triton_cumulative_output:
                    chunk, seen = (chunk[len(seen):] if chunk.startswith(seen) else chunk), chunk
                out, stopped = matcher.feed(chunk)
                if out or stopped:
                    yield StreamPiece(content=out, role=role, finish_reason="stop" if stopped else None)
                    role = None
                if stopped:  # leaving the block closes the request: the engine stops generating
                    yield StreamPiece(usage=usage)
                    return
                finish = _finish_reason(event.finish_reason) or finish
                usage = _usage(event, usage)
        # A normal end of the body. Without a finish_reason tensor a length cut cannot be told
        # apart, and without token-count tensors usage is 0: Triton's generate reports neither.
        yield StreamPiece(content=matcher.flush(), role=role, finish_reason=finish or "stop")
        yield StreamPiece(usage=usage)

    async def embed(self, body: dict[str, Any]) -> EmbeddingResult:
        require(self, EMBEDDINGS, "triton")
        spec = self._spec
        refuse_fields(body, ("dimensions",))
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise rejected("this engine embeds text only: `input` must be a string or a list of strings",
                           param="input")
        payload = {"inputs": [{"name": spec.triton_embedding_input, "datatype": "BYTES",
                               "shape": [len(texts), *spec.triton_embedding_input_dims], "data": texts}],
                   "outputs": [{"name": spec.triton_embedding_output}]}
        with transport_errors():
            r = await self._client.post(self._model_url + "/infer", content=_encoder.encode(payload),
                                        headers=self._headers)
        if r.status_code != 200:
            raise status_error(r.status_code, r.text)
        try:
            out = _infer_decoder.decode(r.content)
        except msgspec.DecodeError:
            raise bad_output("a malformed infer response") from None
        tensor = next((t for t in out.outputs if t.name == spec.triton_embedding_output), None)
        if tensor is None or tensor.datatype not in _FLOAT_TYPES or not tensor.shape:
            raise bad_output(f"no float output tensor {spec.triton_embedding_output!r}")
        return EmbeddingResult(vectors=reshape(tensor, len(texts)))


def reshape(tensor: _Tensor, n: int) -> list[list[float]]:
    """Rows of a [n, ...] tensor, each flattened; `data` may be flat (row-major) or nested."""
    flat = tensor.data
    while flat and isinstance(flat[0], list):
        flat = [x for row in flat for x in row]
    width = math.prod(tensor.shape[1:])
    if tensor.shape[0] != n or len(flat) != n * width:
        raise bad_output(f"an embedding tensor of shape {tensor.shape} for {n} inputs")
    return [[float(x) for x in flat[i * width:(i + 1) * width]] for i in range(n)]


def render_chat(spec: EngineSpec, body: dict[str, Any]) -> str:
    """Messages as one text: each through `triton_message_format` ({role}, {content}), then the
    generation prompt; with continue_final_message the last assistant message is left open."""
    messages = body.get("messages") or []
    if spec.triton_chat_mode == "last_user":
        for m in reversed(messages):
            if m.get("role") == "user":
                return _content_text(m.get("content"))
        raise rejected("the request has no user message", param="messages")
    fmt = spec.triton_message_format
    open_last = bool(body.get("continue_final_message")) and bool(messages) \
        and messages[-1].get("role") == "assistant"
    parts = []
    for i, m in enumerate(messages):
        role, content = str(m.get("role", "user")), _content_text(m.get("content"))
        if open_last and i == len(messages) - 1:
            parts.append(fmt.partition("{content}")[0].replace("{role}", role) + content)
        else:  # content last, so braces in it are never read as placeholders
            parts.append(fmt.replace("{role}", role).replace("{content}", content))
    if not open_last and body.get("add_generation_prompt", True):
        parts.append(spec.triton_generation_prompt)
    return "".join(parts)


class StopMatcher:
    """Cuts a stream at the first stop sequence, holding back text that may be the start of one."""

    def __init__(self, stops: list[str]):
        self._stops = [s for s in stops if s]
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        buf = self._buffer + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._buffer = ""
            return buf[:min(hits)], True
        keep = max((k for s in self._stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        out, self._buffer = buf[:len(buf) - keep], buf[len(buf) - keep:]
        return out, False

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _as_text(value: Any) -> str:
    if isinstance(value, list):  # a tensor with more than one element
        return "".join(_as_text(v) for v in value)
    return "" if value is None else str(value)


def _finish_reason(value: Any) -> str | None:
    value = value[0] if isinstance(value, list) and value else value
    if not value:
        return None
    return "length" if str(value) in ("length", "max_tokens") else "stop"


def _usage(event: Any, usage: Usage) -> Usage:
    """Token counts where the model outputs `prompt_tokens` / `completion_tokens` tensors."""
    prompt, completion = _scalar(event.prompt_tokens), _scalar(event.completion_tokens)
    if prompt is None and completion is None:
        return usage
    prompt = usage.prompt_tokens if prompt is None else prompt
    completion = usage.completion_tokens if completion is None else completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _scalar(value: Any) -> int | None:
    value = value[0] if isinstance(value, list) and value else value
    return int(value) if isinstance(value, (int, float)) else None
