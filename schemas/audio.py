"""OpenAI's audio wire format: transcriptions and translations (multipart in), speech (JSON in,
audio out), and the transcript an engine hands back, from which every response format is made."""

from __future__ import annotations

from typing import Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType
from typing_extensions import Annotated

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
Granularity = Literal["word", "segment"]

MAX_SPEECH_INPUT = 4096  # characters, as OpenAI
MAX_AUDIO_BYTES = 25 * 1024 * 1024  # OpenAI's upload limit


class TranscriptionRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """The form fields of POST /v1/audio/transcriptions and /translations (the file apart)."""

    model: str
    language: Union[Annotated[str, Meta(pattern=r"^[a-z]{2,3}$")], UnsetType] = UNSET
    prompt: Union[Annotated[str, Meta(max_length=4096)], UnsetType] = UNSET
    temperature: Union[Annotated[float, Meta(ge=0.0, le=1.0)], UnsetType] = UNSET
    response_format: TranscriptFormat = "json"
    timestamp_granularities: tuple[Granularity, ...] = ()
    stream: bool = False


class SpeechRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    model: str
    input: Annotated[str, Meta(min_length=1, max_length=MAX_SPEECH_INPUT)]
    voice: Annotated[str, Meta(min_length=1, max_length=64)] = "default"
    response_format: SpeechFormat = "mp3"
    speed: Annotated[float, Meta(ge=0.25, le=4.0)] = 1.0
    instructions: Union[str, UnsetType] = UNSET
    stream_format: Literal["audio"] = "audio"


class Word(msgspec.Struct):
    word: str
    start: float
    end: float


class Segment(msgspec.Struct, kw_only=True):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = []
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


class Transcript(msgspec.Struct, kw_only=True):
    """What an engine heard: Whisper's verbose output (OpenAI's `verbose_json` minus `task`)."""

    text: str
    language: str = ""
    duration: float = 0.0
    segments: list[Segment] = []
    words: list[Word] = []


class TranscriptionJSON(msgspec.Struct):
    text: str


class VerboseTranscription(msgspec.Struct, kw_only=True, omit_defaults=True):
    task: str
    language: str
    duration: float
    text: str
    segments: Union[list[Segment], UnsetType] = UNSET
    words: Union[list[Word], UnsetType] = UNSET


SPEECH_MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
    "wav": "audio/wav", "pcm": "audio/pcm",
}
TRANSCRIPT_MEDIA_TYPES: dict[str, str] = {
    "json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8", "vtt": "text/plain; charset=utf-8",  # as OpenAI answers
}
