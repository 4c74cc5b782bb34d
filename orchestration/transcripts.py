"""A transcript → the body of each `response_format` OpenAI offers: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

import msgspec

from schemas.audio import Transcript, TranscriptionJSON, VerboseTranscription

_encoder = msgspec.json.Encoder()
# The object store key's suffix tells the proxy what it is serving (see objectstore.media_type).
SUFFIX = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"}


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _cues(t: Transcript) -> list[tuple[float, float, str]]:
    if t.segments:
        return [(s.start, s.end, s.text.strip()) for s in t.segments if s.text.strip()]
    return [(0.0, t.duration, t.text.strip())] if t.text.strip() else []


def srt(t: Transcript) -> str:
    blocks = [f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n"
              for i, (a, b, text) in enumerate(_cues(t), 1)]
    return "\n".join(blocks)


def vtt(t: Transcript) -> str:
    blocks = [f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n" for a, b, text in _cues(t)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(t: Transcript, response_format: str, task: str, granularities: tuple[str, ...] = ()) -> bytes:
    """The response body. verbose_json has segments unless only words were asked for, and words
    only when asked for (OpenAI's `timestamp_granularities[]`)."""
    text = t.text.strip()
    if response_format == "text":
        return (text + "\n").encode()
    if response_format == "srt":
        return srt(t).encode()
    if response_format == "vtt":
        return vtt(t).encode()
    if response_format == "verbose_json":
        want_words = "word" in granularities
        want_segments = "segment" in granularities or not want_words
        return _encoder.encode(VerboseTranscription(
            task=task, language=language_name(t.language), duration=round(t.duration, 3), text=text,
            segments=t.segments if want_segments else msgspec.UNSET,
            words=t.words if want_words else msgspec.UNSET))
    return _encoder.encode(TranscriptionJSON(text=text))


_LANGUAGES = {
    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "ja": "japanese", "ko": "korean", "zh": "chinese", "ru": "russian", "pl": "polish",
    "tr": "turkish", "sv": "swedish", "uk": "ukrainian", "ar": "arabic", "hi": "hindi",
}


def language_name(code: str) -> str:
    """verbose_json names the language in English words ("english"), as OpenAI's Whisper does."""
    return _LANGUAGES.get(code, code)
