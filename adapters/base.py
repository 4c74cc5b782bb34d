"""The InferenceAdapter interface and the errors every adapter raises."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Callable, Iterator, Protocol, Sequence, TypeVar, Union

import httpx
import msgspec

from schemas.audio import Transcript
from schemas.openai import Usage


class StreamPiece(msgspec.Struct, omit_defaults=True):
    """One engine event, reduced to what a chat stream needs."""

    content: str = ""
    reasoning: str = ""
    role: Union[str, None] = None
    tool_calls: Union[list[dict[str, Any]], None] = None
    finish_reason: Union[str, None] = None
    usage: Union[Usage, None] = None
    model: Union[str, None] = None


class EmbeddingResult(msgspec.Struct):
    """One vector per input, in input order; `prompt_tokens` is 0 where the engine does not count."""

    vectors: list[list[float]]
    prompt_tokens: int = 0


# What an adapter can do; a model's engine may be declared to do less (EngineSpec.capabilities).
CHAT = "chat"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
ASR = "asr"  # speech to text: transcriptions, and translations where the model translates
TTS = "tts"  # text to speech
PREFIX_CONTINUATION = "prefix_continuation"  # honours continue_final_message / add_generation_prompt
RESPONSES = "responses"  # serves OpenAI's /v1/responses itself (vLLM): only where the catalog says so
# Chat content parts beyond text; only where the catalog names them (proxy/endpoints/params.py).
CONTENT_PARTS = frozenset({"vision", "audio_input", "video_input", "file_input"})


class AudioInput(msgspec.Struct, frozen=True):
    """A transcription request as an engine gets it: the uploaded file and Whisper's options."""

    audio: bytes
    filename: str = "audio"
    task: str = "transcribe"  # or "translate" (into English)
    language: str = ""
    prompt: str = ""
    temperature: Union[float, None] = None
    word_timestamps: bool = False


class EngineError(Exception):
    """An engine answered with an error or could not be reached.

    `status` is what the client should see (OpenAI codes); `retryable` decides whether
    Temporal tries again.
    """

    def __init__(self, message: str, *, status: int, retryable: bool,
                 type: str = "server_error", code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.type = type
        self.code = code
        self.param = param


def unavailable(message: str, code: str = "engine_unavailable") -> EngineError:
    return EngineError(message, status=503, retryable=True, type="server_error", code=code)


def rejected(message: str, param: str | None = None, code: str | None = None) -> EngineError:
    return EngineError(message, status=400, retryable=False, type="invalid_request_error",
                       code=code, param=param)


class UnsupportedCapability(EngineError):
    """The model's engine cannot do what was asked: a 400 the client can act on, never retried."""

    def __init__(self, capability: str, engine: str = "engine"):
        super().__init__(f"this model's engine ({engine}) does not support {capability}", status=400,
                         retryable=False, type="invalid_request_error", code="unsupported_capability")
        self.capability = capability


def require(adapter: "InferenceAdapter", capability: str, engine: str = "engine") -> None:
    if capability not in adapter.capabilities:
        raise UnsupportedCapability(capability, engine)


def declared_capabilities(supported: frozenset[str], configured: Sequence[str], kind: str) -> frozenset[str]:
    """The adapter's capabilities narrowed to what the catalog says this deployment serves; content
    parts (media an engine would fetch) only where the catalog names them."""
    if not configured:
        return supported - CONTENT_PARTS - {RESPONSES}
    extra = set(configured) - supported
    if extra:
        raise ValueError(f"engine kind {kind!r} cannot do {sorted(extra)}")
    return frozenset(configured)


def refuse_fields(body: dict[str, Any], names: Sequence[str]) -> None:
    """A clear 400 for request options this engine cannot honour, rather than ignoring them."""
    for name in names:
        if body.get(name) not in (None, False):
            raise rejected(f"this model's engine does not support `{name}`", param=name)


def single_prompt(body: dict[str, Any]) -> str:
    """The one text prompt of a completions request, for engines that take exactly that."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise rejected("this model's engine takes one text prompt per request", param="prompt")
    for name in ("n", "best_of"):
        if (body.get(name) or 1) != 1:
            raise rejected("this model's engine returns one choice per request", param=name)
    refuse_fields(body, ("echo", "suffix", "logprobs"))
    return prompt


RETRYABLE_STATUS = frozenset({408, 424, 429})  # and every 5xx but 501
REJECTED_STATUS = frozenset({400, 413, 422})


def status_error(status: int, text: str) -> EngineError:
    """Map an engine's HTTP error status (and body) to the client-facing error and its retry class."""
    message = error_message(text) or f"engine answered HTTP {status}"
    if status == 501:  # e.g. llama-server without --embeddings: asking again will not help
        return EngineError(message, status=400, retryable=False, type="invalid_request_error",
                           code="unsupported_capability")
    if status in RETRYABLE_STATUS or status >= 500:
        return unavailable(f"engine unavailable: {message}")
    if status in REJECTED_STATUS:
        return rejected(message, code="engine_rejected")
    return EngineError(message, status=502, retryable=False, code="engine_error")


def error_message(text: str) -> str:
    """The message of an engine's error body: OpenAI's {"error": {"message"}}, TGI's and Triton's
    {"error": "..."}, or the text itself."""
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


@contextmanager
def transport_errors() -> Iterator[None]:
    """Turns httpx's connection failures into retryable engine errors."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise unavailable(f"engine unreachable: {type(exc).__name__}") from None
    except httpx.TimeoutException as exc:
        raise unavailable(f"engine timed out: {type(exc).__name__}", code="engine_timeout") from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise unavailable(f"engine connection lost: {type(exc).__name__}",
                          code="engine_connection_lost") from None


def http_client(connect_timeout_s: float, read_timeout_s: float) -> httpx.AsyncClient:
    client = httpx.AsyncClient(timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
                               limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
    traced(client)
    return client


def json_headers(api_key_env: str = "") -> dict[str, str]:
    """Request headers for a JSON engine API, with the bearer key from `api_key_env` when set."""
    headers = {"content-type": "application/json"}
    key = os.environ.get(api_key_env) if api_key_env else None
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


async def probe(client: httpx.AsyncClient, url: str, timeout: float,
                headers: dict[str, str] | None = None) -> bool:
    """True when `GET url` answers 200 in time; never raises (readiness checks)."""
    try:
        r = await client.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def traced(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Engine calls as OpenTelemetry CLIENT spans (the request's `traceparent` goes to the engine, so
    an engine that traces joins too). A streamed call's span ends at the response headers; the
    activity's span covers the generation. The process's tracer provider decides whether it records."""
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:  # telemetry is optional for the adapters
        return client
    HTTPXClientInstrumentor.instrument_client(client)
    return client


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, url: str, content: bytes, headers: dict[str, str],
                      errors: Callable[[int, str], EngineError] | None = None) -> AsyncIterator[httpx.Response]:
    """POSTs and holds the streamed response; leaving the block (also by closing the generator that
    holds it) closes the engine request. An error status is raised as its EngineError (`errors`
    maps status and body; status_error by default)."""
    with transport_errors():
        async with client.stream("POST", url, content=content, headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                raise (errors or status_error)(response.status_code, text)
            yield response


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream (TGI writes `data:`, others `data: `)."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def bad_output(what: str = "a malformed stream event") -> EngineError:
    return EngineError(f"engine sent {what}", status=502, retryable=True, code="engine_bad_output")


T = TypeVar("T")


def decode_answer(response: httpx.Response, decoder: msgspec.json.Decoder[T], what: str,
                  errors: Callable[[int, str], EngineError] | None = None) -> T:
    """A whole (not streamed) answer decoded; an error status raised as its EngineError (`errors`
    maps status and body; status_error by default), a body that does not decode as bad output."""
    if response.status_code != 200:
        raise (errors or status_error)(response.status_code, response.text)
    try:
        return decoder.decode(response.content)
    except msgspec.DecodeError:
        raise bad_output(what) from None


def stream_cut() -> EngineError:
    return unavailable("engine closed the stream before it finished", code="engine_connection_lost")


class InferenceAdapter(Protocol):
    capabilities: frozenset[str]

    def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        """Yields pieces as the engine produces them; closing the iterator closes the engine request."""
        ...

    def stream_completion(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        """A legacy /v1/completions request (`prompt`, `max_tokens`, ...) as pieces with `content`."""
        ...

    async def embed(self, body: dict[str, Any]) -> EmbeddingResult:
        """An /v1/embeddings request (`input`); vectors are floats whatever `encoding_format` says."""
        ...

    async def transcribe(self, request: AudioInput) -> Transcript:
        """Speech to text (or, with task "translate", to English text), with segment times."""
        ...

    def speak(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """An /v1/audio/speech request (`input`, `voice`, `response_format`, `speed`): the bytes of
        one audio file of that format, yielded as the engine produces them."""
        ...

    async def ready(self) -> bool:
        """Whether the engine answers its readiness probe now; never raises."""
        ...

    async def aclose(self) -> None: ...
