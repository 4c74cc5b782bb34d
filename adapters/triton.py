"""Adapter for NVIDIA Triton Inference Server over HTTP (KServe v2 protocol and its extensions).

- chat, completions: the generate extension, `POST /v2/models/{m}/generate_stream` with
  `{"text_input": ..., "parameters": {...}}`, answered with SSE events `data: {"model_name",
  "model_version", "text_output": ...}` (any other output tensor appears as a field of its name);
  the stream has no end marker: it ends with the body. An error before inference is an HTTP status
  with `{"error": "..."}`; one during inference is an event `data: {"error": "..."}` on a 200 stream.
- embeddings: `POST /v2/models/{m}/infer` with a BYTES input tensor of the texts and an FP32 output
  tensor, whose `data` is flattened row-major and reshaped here by its `shape`.
- transcriptions: `POST /v2/models/{m}/infer` with the audio file as one BYTES element sent in
  binary form (the binary tensor data extension: a JSON header of `Inference-Header-Content-Length`
  bytes, then the element as a 4-byte little-endian length and its bytes), Whisper's options as
  request `parameters`; the answer's BYTES output holds the transcript as JSON.
- speech: `generate_stream` with `text_input` and `parameters` {voice, speed, response_format};
  each event's output holds the next bytes of the audio file in base64 (JSON cannot carry bytes).
- readiness: `GET /v2/models/{m}/ready` answers 200 when the model is ready.
Triton's generate takes text, not messages, so chat is rendered here with the catalog's simple
template (`triton_message_format`, `triton_generation_prompt`, or only the last user message).
Where the model ships a chat template of its own, prefer a deployment that applies it (Triton's
OpenAI-compatible frontend, as kind `openai`). Stop sequences are applied here, since generate
parameters cannot carry a list. Sources: triton-inference-server/server docs/protocol/
extension_generate.md; the KServe Open Inference Protocol (v2) REST specification.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from typing import Any, AsyncIterator, Union
from urllib.parse import quote

import httpx
import msgspec

from adapters.base import (
    decode_answer,
    probe,
    CHAT,
    ASR,
    COMPLETIONS,
    EMBEDDINGS,
    TTS,
    AudioInput,
    PREFIX_CONTINUATION,
    EmbeddingResult,
    EngineError,
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
from schemas.audio import Transcript
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
_transcript_decoder = msgspec.json.Decoder(Transcript)
_encoder = msgspec.json.Encoder()
_FLOAT_TYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})


class TritonAdapter:
    supported = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, ASR, TTS, PREFIX_CONTINUATION})

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
        self._event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(msgspec.defstruct("TritonEvent", [
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
                               _encoder.encode(payload), self._headers, stream_error) as response:
            async for data in sse_data(response):
                try:
                    event = self._event_decoder.decode(data)
                except msgspec.DecodeError:
                    raise bad_output() from None
                if event.error is not None:
                    raise model_error(event.error)
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
        size = spec.triton_max_batch or len(texts)
        vectors: list[list[float]] = []
        tokens = 0
        for i in range(0, len(texts), size):
            batch, count = await self._embed_batch(texts[i:i + size])
            vectors += batch
            tokens += count
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens)

    async def _embed_batch(self, texts: list[str]) -> tuple[list[list[float]], int]:
        spec = self._spec
        payload: dict[str, Any] = {"inputs": [{"name": spec.triton_embedding_input, "datatype": "BYTES",
                               "shape": [len(texts), *spec.triton_embedding_input_dims], "data": texts}],
                   "outputs": [{"name": spec.triton_embedding_output}]}
        if spec.triton_token_count_output:
            payload["outputs"].append({"name": spec.triton_token_count_output})
        out = await self._infer(_encoder.encode(payload), self._headers)
        tensor = next((t for t in out.outputs if t.name == spec.triton_embedding_output), None)
        if tensor is None or tensor.datatype not in _FLOAT_TYPES or not tensor.shape:
            raise bad_output(f"no float output tensor {spec.triton_embedding_output!r}")
        counts = next((t for t in out.outputs if t.name == spec.triton_token_count_output), None)
        tokens = int(sum(_flat(counts.data))) if counts is not None else 0
        return reshape(tensor, len(texts)), tokens

    async def transcribe(self, request: AudioInput) -> Transcript:
        require(self, ASR, "triton")
        spec = self._spec
        parameters: dict[str, Any] = {"task": request.task, "word_timestamps": request.word_timestamps}
        if request.language:
            parameters["language"] = request.language
        if request.prompt:
            parameters["prompt"] = request.prompt
        if request.temperature is not None:
            parameters["temperature"] = request.temperature
        element = struct.pack("<I", len(request.audio)) + request.audio
        header = _encoder.encode({
            "inputs": [{"name": spec.triton_audio_input, "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": len(element)}}],
            "outputs": [{"name": spec.triton_transcript_output, "parameters": {"binary_data": False}}],
            "parameters": parameters})
        out = await self._infer(header + element, {"content-type": "application/octet-stream",
                                                   "inference-header-content-length": str(len(header))})
        try:
            tensor = next(t for t in out.outputs if t.name == spec.triton_transcript_output)
            return _transcript_decoder.decode(_as_text(tensor.data))
        except (msgspec.DecodeError, StopIteration):
            raise bad_output(f"no transcript in output {spec.triton_transcript_output!r}") from None

    async def _infer(self, content: bytes, headers: dict[str, str]) -> _InferResponse:
        """POST /infer; its error status as an EngineError, its answer decoded."""
        with transport_errors():
            r = await self._client.post(self._model_url + "/infer", content=content, headers=headers)
        return decode_answer(r, _infer_decoder, "a malformed infer response", infer_error)

    async def speak(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        require(self, TTS, "triton")
        spec = self._spec
        parameters = {"voice": body.get("voice") or "default", "speed": float(body.get("speed") or 1.0),
                      "response_format": body.get("response_format") or "mp3"}
        payload = {spec.triton_text_input: body.get("input", ""), "parameters": parameters}
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(msgspec.defstruct("TritonAudioEvent", [
            ("audio", Any, None), ("error", Union[str, None], None)], rename={"audio": spec.triton_speech_output}))
        async with open_stream(self._client, self._model_url + "/generate_stream",
                               _encoder.encode(payload), self._headers, stream_error) as response:
            async for data in sse_data(response):
                try:
                    event = decoder.decode(data)
                    chunk = base64.b64decode(_as_text(event.audio), validate=True)
                except (msgspec.DecodeError, binascii.Error):
                    raise bad_output() from None
                if event.error is not None:
                    raise model_error(event.error)
                if chunk:
                    yield chunk


_EXCEPTION_LINE = re.compile(r"^\s*(\w*(?:Error|Exception)): (.+)$", re.MULTILINE)


def model_exception(message: str) -> tuple[str, str]:
    """(exception type, its message) from a Python model's traceback, which Triton passes on whole
    (ending in an `At:` list of files); the last line itself where there is none."""
    found = _EXCEPTION_LINE.findall(message)
    if found:
        kind, text = found[-1]
        return kind, text.strip()[:300]
    lines = message.strip().splitlines() or ["engine error"]
    return "", lines[-1][:300]


def model_error(message: str) -> EngineError:
    """An error event mid-stream: the model failed while generating; another attempt may succeed."""
    _, text = model_exception(message)
    return unavailable(f"engine failed: {text}", code="engine_generation_error")


def stream_error(status: int, body: str) -> EngineError:
    """generate_stream's error status: its body may be an SSE frame (`data: {"error": ...}`)."""
    return infer_error(status, body.strip().removeprefix("data:").strip())


def infer_error(status: int, body: str) -> EngineError:
    """An infer request's error. Triton answers 500 for any exception in a Python model; a
    ValueError there is the model refusing its input (audio it cannot decode), not worth a retry."""
    try:  # the whole message: the traceback's last exception line is what matters
        data = msgspec.json.decode(body)
        message = str(data.get("error", body)) if isinstance(data, dict) else body
    except msgspec.DecodeError:
        message = body
    kind, text = model_exception(message)
    if status in (400, 500) and kind == "ValueError":
        return rejected(text, code="engine_rejected")
    return status_error(status, text if kind else body)


def _flat(data: list[Any]) -> list[Any]:
    while data and isinstance(data[0], list):
        data = [x for row in data for x in row]
    return data


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
