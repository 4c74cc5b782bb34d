"""Audio through OpenAI-protocol engines, end to end with the SDK: vLLM's speech-to-text endpoints
and OpenAI's speech endpoint, spoken by the fake engine (tests/fakes/vllm.py) in their wire format,
vLLM's verbose_json quirks and errors included."""

from __future__ import annotations

import io
import struct
import wave

import httpx
import openai
import pytest

from tests.conftest import Stack
from tests.fakes.vllm import TRANSCRIPT, tone

ASR = "fake-vllm-whisper"
TTS = "fake-vllm-tts"
HEARD = "".join(TRANSCRIPT).strip()  # the leading space Whisper writes is dropped, as OpenAI does


def wav_of(seconds: float, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack("<h", 0) * int(seconds * rate))
    return out.getvalue()


def test_transcription_reads_vllm_verbose_json(client: openai.OpenAI, stack: Stack):
    sent_before = len(stack.fake.audio_forms)
    out = client.audio.transcriptions.create(model=ASR, file=("talk.wav", wav_of(2.5)), language="en",
                                             response_format="verbose_json", temperature=0.2)
    assert out.text == HEARD
    assert out.duration == pytest.approx(2.5)  # vLLM wrote "2.5", a string
    assert out.language == "english"  # OpenAI names the language
    assert [s.text.strip() for s in out.segments] == [t.strip() for t in TRANSCRIPT]
    assert out.segments[-1].end == pytest.approx(2.5) and out.segments[0].avg_logprob == 0.0  # null there
    (form,) = stack.fake.audio_forms[sent_before:]
    assert form["model"] == ["openai/whisper-large-v3"] and form["response_format"] == ["verbose_json"]
    assert form["language"] == ["en"] and form["temperature"] == ["0.2"]


def test_every_response_format_is_made_from_vllm_segments(client: openai.OpenAI):
    wav = ("talk.wav", wav_of(3.0))
    assert client.audio.transcriptions.create(model=ASR, file=wav).text == HEARD
    text = client.audio.transcriptions.create(model=ASR, file=wav, response_format="text")
    assert text.strip() == HEARD.strip()
    srt = client.audio.transcriptions.create(model=ASR, file=wav, response_format="srt")
    assert "1\n00:00:00,000 --> 00:00:01,500\nThe fake engine heard you." in srt
    assert "2\n00:00:01,500 --> 00:00:03,000\nIt says so in two segments." in srt
    vtt = client.audio.transcriptions.create(model=ASR, file=wav, response_format="vtt")
    assert vtt.startswith("WEBVTT") and "00:00:01.500 --> 00:00:03.000" in vtt


def test_translation_goes_to_vllms_translation_endpoint(client: openai.OpenAI, stack: Stack):
    sent_before = len(stack.fake.audio_forms)
    out = client.audio.translations.create(model=ASR, file=("talk.wav", wav_of(1.0)),
                                           response_format="verbose_json")
    assert out.text == HEARD and out.language == "english"  # vLLM's null language: translations are English
    (form,) = stack.fake.audio_forms[sent_before:]
    assert "language" not in form


def test_vllm_refusals_reach_the_client_as_400s(stack: Stack, http: httpx.Client):
    wav = {"file": ("talk.wav", wav_of(1.0), "audio/wav")}
    r = http.post("/v1/audio/transcriptions", data={"model": ASR, "language": "xx"}, files=wav)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "Unsupported language: 'xx'" in error["message"]
    r = http.post("/v1/audio/transcriptions", files=wav, data={
        "model": ASR, "response_format": "verbose_json", "timestamp_granularities[]": "word"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "timestamp_granularities[]", r.text
    assert "no word timestamps" in r.json()["error"]["message"]


def test_speech_from_an_openai_protocol_engine_is_streamed_as_made(client: openai.OpenAI, stack: Stack,
                                                                   http: httpx.Client):
    with client.audio.speech.with_streaming_response.create(
            model=TTS, voice="alloy", input="Hello there.", response_format="wav") as r:
        assert r.headers["content-type"] == "audio/wav"
        job_id = r.headers["x-job-id"]
        audio = r.read()
    assert audio == tone("wav", len("Hello there."))
    events = http.get(f"/v1/jobs/{job_id}/events").text
    assert events.count("speech.audio.delta") >= 2  # published as the engine's pieces came
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getframerate() == 24000 and w.getnframes() == 960 * len("Hello there.")
    form = stack.fake.audio_forms[-1]
    assert form["model"] == ["fake-tts"] and form["voice"] == ["alloy"] and form["response_format"] == ["wav"]


def test_an_engine_that_refuses_a_voice_is_a_400(http: httpx.Client):
    r = http.post("/v1/audio/speech", json={"model": TTS, "voice": "nova", "input": "Hi.", "response_format": "pcm"})
    assert r.status_code == 400, r.text
    assert "Invalid voice 'nova'" in r.json()["error"]["message"]
