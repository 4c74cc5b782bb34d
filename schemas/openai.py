"""OpenAI chat wire format: requests, responses, chunks, errors, models."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType
from typing_extensions import Annotated

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Meta(ge=1)]
# Bounds that keep a request's cost in proportion: OpenAI's 128 tools; 16 stop strings, more than
# OpenAI's 4, as open models' templates often want several.
Stop = Union[Annotated[str, Meta(max_length=4096)], Annotated[list[Annotated[str, Meta(max_length=4096)]],
                                                                 Meta(max_length=16)]]


# Content parts, told apart by `type`; fields not named here are tolerated and passed on.
class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(msgspec.Struct, omit_defaults=True):
    url: str
    detail: Union[str, UnsetType] = UNSET


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class InputAudio(msgspec.Struct):
    data: str
    format: str


class InputAudioPart(msgspec.Struct, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FilePart(msgspec.Struct, tag_field="type", tag="file"):
    file: dict[str, Any]


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


class AudioURLPart(msgspec.Struct, tag_field="type", tag="audio_url"):  # a vLLM extension
    audio_url: dict[str, Any]


class VideoURLPart(msgspec.Struct, tag_field="type", tag="video_url"):  # a vLLM extension
    video_url: dict[str, Any]


ContentPart = Union[TextPart, ImagePart, InputAudioPart, FilePart, RefusalPart, AudioURLPart, VideoURLPart]
# Roles whose messages must carry `content` (an assistant's may be null when it made tool calls).
CONTENT_REQUIRED: frozenset[str] = frozenset({"system", "developer", "user", "tool"})


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: Role
    # str, a list of content parts, or null (assistant messages with tool calls); required for the
    # roles in CONTENT_REQUIRED, which the serving layer checks
    content: Union[str, list[ContentPart], None] = None
    name: Union[str, UnsetType] = UNSET
    tool_calls: Union[list[dict[str, Any]], UnsetType] = UNSET
    tool_call_id: Union[str, UnsetType] = UNSET


class FunctionDefinition(msgspec.Struct, omit_defaults=True):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: Union[str, None, UnsetType] = UNSET
    parameters: Union[dict[str, Any], None, UnsetType] = UNSET  # a JSON Schema object
    strict: Union[bool, None, UnsetType] = UNSET


class Tool(msgspec.Struct, omit_defaults=True):
    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """Unknown fields get past the struct; proxy/endpoints/params.py decides what reaches the engine."""

    model: str
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    stream: bool = False
    stream_options: Union[StreamOptions, None, UnsetType] = UNSET
    max_tokens: Union[PositiveInt, None, UnsetType] = UNSET
    max_completion_tokens: Union[PositiveInt, None, UnsetType] = UNSET
    temperature: Union[Temperature, None, UnsetType] = UNSET
    top_p: Union[TopP, None, UnsetType] = UNSET
    n: Union[Annotated[int, Meta(ge=1, le=1)], None, UnsetType] = UNSET
    stop: Union[Stop, None, UnsetType] = UNSET
    presence_penalty: Union[Penalty, None, UnsetType] = UNSET
    frequency_penalty: Union[Penalty, None, UnsetType] = UNSET
    seed: Union[int, None, UnsetType] = UNSET
    user: Union[str, UnsetType] = UNSET
    tools: Union[Annotated[list[Tool], Meta(max_length=128)], None, UnsetType] = UNSET
    tool_choice: Union[str, dict[str, Any], None, UnsetType] = UNSET
    response_format: Union[dict[str, Any], None, UnsetType] = UNSET
    logprobs: Union[bool, None, UnsetType] = UNSET
    top_logprobs: Union[Annotated[int, Meta(ge=0, le=20)], None, UnsetType] = UNSET
    logit_bias: Union[dict[str, float], None, UnsetType] = UNSET
    parallel_tool_calls: Union[bool, None, UnsetType] = UNSET
    modalities: Union[list[Literal["text"]], None, UnsetType] = UNSET  # audio output is not served


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChunkDelta(msgspec.Struct, omit_defaults=True):
    role: Union[str, UnsetType] = UNSET
    content: Union[str, None, UnsetType] = UNSET
    reasoning_content: Union[str, UnsetType] = UNSET
    tool_calls: Union[list[dict[str, Any]], UnsetType] = UNSET


class ChunkChoice(msgspec.Struct):
    index: int
    delta: ChunkDelta
    finish_reason: Union[str, None] = None
    logprobs: Union[dict[str, Any], None] = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: Union[str, UnsetType] = UNSET
    usage: Union[Usage, None, UnsetType] = UNSET


class ResponseMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: Union[str, None]
    reasoning_content: Union[str, UnsetType] = UNSET
    tool_calls: Union[list[dict[str, Any]], UnsetType] = UNSET


class Choice(msgspec.Struct):
    index: int
    message: ResponseMessage
    finish_reason: Union[str, None]
    logprobs: Union[dict[str, Any], None] = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: Union[str, None] = None
    code: Union[str, None] = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Model]


# Legacy text completions (POST /v1/completions) and embeddings (POST /v1/embeddings).

# One prompt: a string, or token ids. A list of several prompts is validated by the serving layer.
Prompt = Union[str, list[Union[str, int, list[int]]]]


class CompletionRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """Unknown fields get past the struct; proxy/endpoints/params.py decides what reaches the engine."""

    model: str
    prompt: Prompt
    stream: bool = False
    stream_options: Union[StreamOptions, None, UnsetType] = UNSET
    max_tokens: Union[PositiveInt, None, UnsetType] = UNSET
    temperature: Union[Temperature, None, UnsetType] = UNSET
    top_p: Union[TopP, None, UnsetType] = UNSET
    n: Union[Annotated[int, Meta(ge=1, le=1)], None, UnsetType] = UNSET
    best_of: Union[Annotated[int, Meta(ge=1, le=1)], None, UnsetType] = UNSET
    stop: Union[Stop, None, UnsetType] = UNSET
    presence_penalty: Union[Penalty, None, UnsetType] = UNSET
    frequency_penalty: Union[Penalty, None, UnsetType] = UNSET
    seed: Union[int, None, UnsetType] = UNSET
    echo: Union[bool, None, UnsetType] = UNSET
    suffix: Union[str, None, UnsetType] = UNSET
    logprobs: Union[Annotated[int, Meta(ge=0, le=5)], None, UnsetType] = UNSET
    logit_bias: Union[dict[str, float], None, UnsetType] = UNSET
    user: Union[str, UnsetType] = UNSET


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: Union[str, None] = None
    logprobs: Union[dict[str, Any], None] = None


class TextCompletion(msgspec.Struct, kw_only=True):
    """A `text_completion` object: the whole response, and each streamed chunk."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: Union[str, UnsetType] = UNSET
    usage: Union[Usage, None, UnsetType] = UNSET


EmbeddingInput = Union[str, list[Union[str, int, list[int]]]]


class EmbeddingRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Union[PositiveInt, UnsetType] = UNSET
    user: Union[str, UnsetType] = UNSET


class Embedding(msgspec.Struct, kw_only=True):
    object: str = "embedding"
    index: int
    embedding: Union[list[float], str]  # floats, or base64 of little-endian float32


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
