"""Adapter for Hugging Face text-generation-inference (TGI) and text-embeddings-inference (TEI).

- chat: TGI's Messages API, `POST /v1/chat/completions` (OpenAI chunks, but errors are TGI's).
- completions: the native `POST /generate_stream`: SSE events `{"token": {"id", "text", "logprob",
  "special"}, "generated_text": null | str, "details": null | {"finish_reason", "generated_tokens",
  "seed", "input_length"}}`; the last event carries `generated_text` and `details`.
- embeddings: TEI's `POST /embed` (`{"inputs", "normalize", "truncate"}` -> `[[float]]`); a TEI
  deployment is a catalog entry of kind `tgi` with `capabilities: [embeddings]`.
- errors: `{"error": "...", "error_type": "..."}`, as an HTTP status (422 validation, 424
  generation, 429 overloaded, 413 batch size) or, on a stream, as an event with HTTP 200: TGI
  validates and queues inside the stream, so an overloaded or invalid request arrives that way.
Sources: TGI's docs/openapi.json and router/src/server.rs; TEI's docs/openapi.json.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, AsyncIterator, TypeVar, Union

import httpx
import msgspec

from adapters.base import (
    decode_answer,
    json_headers,
    probe,
    ASR,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    TTS,
    AudioInput,
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
    stream_cut,
    transport_errors,
    unavailable,
    UnsupportedCapability,
)
from schemas.audio import Transcript
from schemas.catalog import EngineSpec
from schemas.openai import Usage


class _Delta(msgspec.Struct):
    content: Union[str, None] = None
    role: Union[str, None] = None
    # a list in OpenAI's format; a single object in TGI 2.x
    tool_calls: Union[list[dict[str, Any]], dict[str, Any], None] = None


class _ChatChoice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: Union[str, None] = None


class _ChatEvent(msgspec.Struct):
    choices: list[_ChatChoice] = []
    usage: Union[Usage, None] = None
    model: Union[str, None] = None
    error: Union[str, None] = None
    error_type: Union[str, None] = None


class _Token(msgspec.Struct):
    text: str = ""
    special: bool = False


class _Details(msgspec.Struct):
    finish_reason: str = ""
    generated_tokens: int = 0
    input_length: Union[int, None] = None   # TGI >= 2.1
    prompt_tokens: Union[int, None] = None  # some older builds


class _GenerateEvent(msgspec.Struct):
    token: Union[_Token, None] = None
    generated_text: Union[str, None] = None
    details: Union[_Details, None] = None
    error: Union[str, None] = None
    error_type: Union[str, None] = None


_chat_decoder = msgspec.json.Decoder(_ChatEvent)
_generate_decoder = msgspec.json.Decoder(_GenerateEvent)
_vectors_decoder = msgspec.json.Decoder(list[list[float]])
_encoder = msgspec.json.Encoder()

FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
_REJECTED_TYPES = frozenset({"validation", "template_error", "tool_error", "missing_template_variable",
                             "tokenizer"})


def event_error(message: str, error_type: str | None) -> EngineError:
    """An error TGI sent as a stream event (HTTP 200): classified by its `error_type`."""
    message = message[:300]
    if error_type in _REJECTED_TYPES:
        return rejected(message, code="engine_rejected")
    if error_type == "overloaded":
        return unavailable(f"engine overloaded: {message}", code="engine_overloaded")
    # generation, incomplete_generation: the engine failed, the request was fine
    return unavailable(f"engine failed: {message}", code="engine_generation_error")


def generate_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI completion options as TGI `parameters` (TGI wants temperature and top_p strictly
    inside (0, 1) and expresses greedy decoding as do_sample false)."""
    params: dict[str, Any] = {"details": True}
    if body.get("max_tokens") is not None:
        params["max_new_tokens"] = body["max_tokens"]
    temperature = body.get("temperature")
    if temperature is not None:
        params["do_sample"] = temperature > 0
        if temperature > 0:
            params["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None and 0 < top_p < 1:
        params["top_p"] = top_p
    stop = body.get("stop")
    if stop:
        params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("seed", "frequency_penalty"):
        if body.get(name) is not None:
            params[name] = body[name]
    return params


class TGIAdapter:
    supported = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})

    def __init__(self, spec: EngineSpec, client: httpx.AsyncClient | None = None):
        self._spec = spec
        self.capabilities = declared_capabilities(self.supported, spec.capabilities, spec.kind)
        self._base = spec.url.rstrip("/")
        self._headers = json_headers(spec.api_key_env)
        self._client = client or http_client(spec.connect_timeout_s, spec.read_timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ready(self) -> bool:
        return await probe(self._client, self._base + "/health", self._spec.connect_timeout_s)

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        require(self, CHAT, "tgi")
        payload = dict(body)
        # TGI reads any `model` other than "tgi" as the name of a LoRA adapter to load.
        payload["model"] = self._spec.served_name or "tgi"
        if payload.get("max_tokens") is None and payload.get("max_completion_tokens") is not None:
            payload["max_tokens"] = payload.pop("max_completion_tokens")  # TGI knows only max_tokens
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        async with self._open("/v1/chat/completions", payload) as response:
            async for data in sse_data(response):
                if data == "[DONE]":
                    return
                event = _decode(_chat_decoder, data)
                if event.error is not None:
                    raise event_error(event.error, event.error_type)
                for choice in event.choices:
                    d = choice.delta
                    calls = [d.tool_calls] if isinstance(d.tool_calls, dict) else d.tool_calls
                    yield StreamPiece(content=d.content or "", role=d.role, tool_calls=calls,
                                      finish_reason=choice.finish_reason, model=event.model)
                if event.usage is not None:
                    yield StreamPiece(usage=event.usage, model=event.model)
        raise stream_cut()

    async def stream_completion(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        require(self, COMPLETIONS, "tgi")
        payload = {"inputs": single_prompt(body), "parameters": generate_parameters(body)}
        async with self._open("/generate_stream", payload) as response:
            async for data in sse_data(response):
                event = _decode(_generate_decoder, data)
                if event.error is not None:
                    raise event_error(event.error, event.error_type)
                token = event.token
                text = token.text if token is not None and not token.special else ""
                if event.generated_text is None:  # an intermediate token
                    if text:
                        yield StreamPiece(content=text)
                    continue
                details = event.details or _Details(finish_reason="eos_token")
                # TGI rejects decoder_input_details on streams, so the prompt's length is known only
                # from input_length (TGI >= 2.1); older versions do not say: reported as 0.
                prompt = details.input_length if details.input_length is not None else (details.prompt_tokens or 0)
                yield StreamPiece(content=text, finish_reason=FINISH_REASONS.get(details.finish_reason, "stop"))
                yield StreamPiece(usage=Usage(prompt_tokens=prompt, completion_tokens=details.generated_tokens,
                                              total_tokens=prompt + details.generated_tokens))
                return
        raise stream_cut()

    async def embed(self, body: dict[str, Any]) -> EmbeddingResult:
        require(self, EMBEDDINGS, "tgi")
        refuse_fields(body, ("dimensions",))
        inputs = body.get("input")
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], int):
            inputs = [inputs]  # one prompt of token ids
        payload = {"inputs": inputs, "normalize": self._spec.tei_normalize,
                   "truncate": self._spec.tei_truncate}
        with transport_errors():
            r = await self._client.post(self._base + "/embed", content=_encoder.encode(payload),
                                        headers=self._headers)
        vectors = decode_answer(r, _vectors_decoder, "a malformed embeddings response")
        tokens = r.headers.get("x-compute-tokens", "")  # TEI counts the tokens it embedded here
        return EmbeddingResult(vectors=vectors, prompt_tokens=int(tokens) if tokens.isdigit() else 0)

    async def transcribe(self, request: AudioInput) -> Transcript:
        raise UnsupportedCapability(ASR, "tgi")

    def speak(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        raise UnsupportedCapability(TTS, "tgi")

    def _open(self, path: str, payload: dict[str, Any]) -> AbstractAsyncContextManager[httpx.Response]:
        return open_stream(self._client, self._base + path, _encoder.encode(payload), self._headers)


T = TypeVar("T")


def _decode(decoder: msgspec.json.Decoder[T], data: str | bytes, what: str = "a malformed stream event") -> T:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError:
        raise bad_output(what) from None
