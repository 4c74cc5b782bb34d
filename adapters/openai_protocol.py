"""Adapter for engines that speak the OpenAI HTTP protocol: vLLM, llama.cpp's llama-server, SGLang.

Audio: vLLM serves `/v1/audio/transcriptions` and `/translations` (Whisper) as multipart uploads;
this adapter asks for `verbose_json` and makes every response format from its segments. vLLM's
verbose_json differs from OpenAI's: `duration` is a string, `language` is null unless the request
named one, and the segments' scores are null; both are read. Speech is
`POST /v1/audio/speech` on an OpenAI-compatible TTS server, its audio read as it arrives."""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Iterable, Union

import httpx
import msgspec

from adapters.base import (
    decode_answer,
    rejected,
    json_headers,
    probe,
    ASR,
    CHAT,
    COMPLETIONS,
    TTS,
    AudioInput,
    EMBEDDINGS,
    PREFIX_CONTINUATION,
    RESPONSES,
    EmbeddingResult,
    EngineError,
    StreamPiece,
    bad_output,
    CONTENT_PARTS,
    declared_capabilities,
    http_client,
    open_stream,
    require,
    sse_data,
    status_error,
    stream_cut,
    transport_errors,
)
from adapters.responses import ResponsesStreamReader
from schemas.audio import Segment, Transcript, Word
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


class _TextChoice(msgspec.Struct):
    text: str = ""
    finish_reason: Union[str, None] = None
    index: int = 0


class _TextChunk(msgspec.Struct):
    choices: list[_TextChoice] = []
    usage: Union[Usage, None] = None
    model: Union[str, None] = None
    error: Union[_ErrorBody, None] = None


class _Embedding(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int = 0


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]
    usage: _EmbeddingUsage = msgspec.field(default_factory=_EmbeddingUsage)


class _VerboseSegment(msgspec.Struct):
    start: float
    end: float
    text: str
    id: int = 0
    seek: Union[int, float] = 0
    tokens: Union[list[int], None] = None
    temperature: Union[float, None] = None
    avg_logprob: Union[float, None] = None
    compression_ratio: Union[float, None] = None
    no_speech_prob: Union[float, None] = None


class _VerboseTranscript(msgspec.Struct):
    """verbose_json as OpenAI and vLLM write it (vLLM: duration as a string, nulls for the unknown)."""

    text: str
    language: Union[str, None] = None
    duration: Union[float, str, None] = None
    segments: Union[list[_VerboseSegment], None] = None
    words: Union[list[Word], None] = None

    def transcript(self, language: str) -> Transcript:
        segments = [Segment(id=s.id, seek=int(s.seek), start=s.start, end=s.end, text=s.text,
                            tokens=s.tokens or [], temperature=s.temperature or 0.0,
                            avg_logprob=s.avg_logprob or 0.0, compression_ratio=s.compression_ratio or 0.0,
                            no_speech_prob=s.no_speech_prob or 0.0) for s in self.segments or []]
        try:
            duration = float(self.duration) if self.duration is not None else 0.0
        except ValueError:
            duration = 0.0
        if not duration and segments:
            duration = segments[-1].end
        return Transcript(text=self.text, language=self.language or language, duration=duration,
                          segments=segments, words=self.words or [])


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_text_chunk_decoder = msgspec.json.Decoder(_TextChunk)
_embeddings_decoder = msgspec.json.Decoder(_Embeddings)
_transcript_decoder = msgspec.json.Decoder(_VerboseTranscript)
_body_encoder = msgspec.json.Encoder()


def classify_status(status: int, text: str) -> EngineError:
    """Map an engine's HTTP error to the client-facing error and its retry class."""
    return status_error(status, text)


class OpenAIProtocolAdapter:
    supported = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, ASR, TTS, PREFIX_CONTINUATION, RESPONSES, *CONTENT_PARTS})

    def __init__(self, spec: EngineSpec, client: httpx.AsyncClient | None = None):
        self._spec = spec
        self.capabilities = declared_capabilities(self.supported, spec.capabilities, spec.kind)
        self._base = spec.url.rstrip("/")
        self._headers = json_headers(spec.api_key_env)
        self._client = client or http_client(spec.connect_timeout_s, spec.read_timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ready(self) -> bool:
        return await probe(self._client, self._base + "/models", self._spec.connect_timeout_s, self._headers)

    def _payload(self, body: dict[str, Any], stream: bool) -> bytes:
        payload = dict(body)
        if self._spec.served_name:
            payload["model"] = self._spec.served_name
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return _body_encoder.encode(payload)

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        require(self, CHAT, self._spec.kind)
        async for piece in self._stream("/chat/completions", body, _chunk_decoder, _chat_pieces):
            yield piece

    async def stream_completion(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        require(self, COMPLETIONS, self._spec.kind)
        async for piece in self._stream("/completions", body, _text_chunk_decoder, _text_pieces):
            yield piece

    async def stream_responses(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        """A Responses request passed through to the engine's /v1/responses; its typed events back
        as pieces (adapters/responses.py)."""
        require(self, RESPONSES, self._spec.kind)
        payload = {**body, "stream": True}
        if self._spec.served_name:
            payload["model"] = self._spec.served_name
        reader = ResponsesStreamReader()
        async with open_stream(self._client, self._base + "/responses", _body_encoder.encode(payload),
                               self._headers) as response:
            async for data in sse_data(response):
                for piece in reader.pieces(data):
                    yield piece
                if reader.done:
                    return
        raise stream_cut()

    async def embed(self, body: dict[str, Any]) -> EmbeddingResult:
        require(self, EMBEDDINGS, self._spec.kind)
        # Floats from the engine whatever the client asked: the serving layer encodes base64 itself.
        content = self._payload({**body, "encoding_format": "float"}, stream=False)
        with transport_errors():
            r = await self._client.post(self._base + "/embeddings", content=content, headers=self._headers)
        out = decode_answer(r, _embeddings_decoder, "a malformed embeddings response")
        data = sorted(out.data, key=lambda e: e.index)
        return EmbeddingResult(vectors=[e.embedding for e in data], prompt_tokens=out.usage.prompt_tokens)

    async def transcribe(self, request: AudioInput) -> Transcript:
        require(self, ASR, self._spec.kind)
        fields: list[tuple[str, str]] = [("model", self._spec.served_name or "whisper"),
                                         ("response_format", "verbose_json"),
                                         ("timestamp_granularities[]", "segment")]
        if request.word_timestamps:
            fields.append(("timestamp_granularities[]", "word"))
        if request.language and request.task == "transcribe":
            fields.append(("language", request.language))
        if request.prompt:
            fields.append(("prompt", request.prompt))
        if request.temperature is not None:
            fields.append(("temperature", str(request.temperature)))
        path = "/audio/translations" if request.task == "translate" else "/audio/transcriptions"
        headers = {k: v for k, v in self._headers.items() if k != "content-type"}  # httpx sets the boundary
        with transport_errors():
            r = await self._client.post(self._base + path, data=dict(_group(fields)), headers=headers,
                                        files={"file": (request.filename, request.audio)})
        verbose = decode_answer(r, _transcript_decoder, "a malformed transcription")
        if request.word_timestamps and not verbose.words:  # vLLM gives segments only
            raise rejected("this model's engine gives no word timestamps; ask for "
                           "timestamp_granularities[] segment", param="timestamp_granularities[]",
                           code="unsupported_granularity")
        return verbose.transcript("en" if request.task == "translate" else request.language)

    async def speak(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        require(self, TTS, self._spec.kind)
        content = self._payload(body, stream=False)
        async with open_stream(self._client, self._base + "/audio/speech", content, self._headers) as response:
            async for chunk in response.aiter_bytes():
                if chunk:
                    yield chunk

    async def _stream(self, path: str, body: dict[str, Any], decoder: msgspec.json.Decoder[Any],
                      pieces: Callable[[Any], Iterable[StreamPiece]]) -> AsyncIterator[StreamPiece]:
        content = self._payload(body, stream=True)
        async with open_stream(self._client, self._base + path, content, self._headers) as response:
            async for data in sse_data(response):
                if data == "[DONE]":
                    return
                try:
                    chunk = decoder.decode(data)
                except msgspec.DecodeError:
                    raise bad_output() from None
                if chunk.error is not None:
                    raise EngineError(chunk.error.message or "engine error", status=502,
                                      retryable=False, code="engine_error")
                for piece in pieces(chunk):
                    yield piece
        raise stream_cut()


def _chat_pieces(chunk: _Chunk) -> Iterable[StreamPiece]:
    for choice in chunk.choices:
        d = choice.delta
        yield StreamPiece(content=d.content or "", reasoning=d.reasoning_content or "", role=d.role,
                          tool_calls=d.tool_calls, finish_reason=choice.finish_reason, model=chunk.model)
    if chunk.usage is not None:
        yield StreamPiece(usage=chunk.usage, model=chunk.model)


def _text_pieces(chunk: _TextChunk) -> Iterable[StreamPiece]:
    for choice in chunk.choices:
        yield StreamPiece(content=choice.text, finish_reason=choice.finish_reason, model=chunk.model)
    if chunk.usage is not None:
        yield StreamPiece(usage=chunk.usage, model=chunk.model)


def _group(fields: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Form fields for httpx: a repeated name (`timestamp_granularities[]`) as a list."""
    out: dict[str, str | list[str]] = {}
    for name, value in fields:
        if name in out:
            prev = out[name]
            out[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[name] = value
    return out
