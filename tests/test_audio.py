"""Audio and real models through the whole durable path, judged with the OpenAI SDK: speech from
hibari, transcriptions and translations from Whisper, embeddings from all-MiniLM-L6-v2, all served
by a real Triton (compose/triton/serve.py)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import wave

import httpx
import openai
import pytest

from tests.conftest import Stack
from tests.jobclient import wait_finished

TTS, ASR, EMBED = "hibari-tts", "whisper-tiny", "all-minilm-l6-v2"
FOX = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def fox_wav(stack: Stack) -> bytes:
    client = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    return client.audio.speech.create(model=TTS, voice="alloy", input=FOX, response_format="wav").content


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_speech_is_a_playable_wav_of_the_text(fox_wav: bytes):
    with wave.open(io.BytesIO(fox_wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        frames = w.readframes(10**9)
    seconds = len(frames) / 2 / 24000
    assert 1.0 < seconds < 6.0  # nine words spoken


@pytest.mark.parametrize("fmt, content_type, magic", [
    ("mp3", "audio/mpeg", (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")),
    ("opus", "audio/ogg", (b"OggS",)),
    ("aac", "audio/aac", (b"\xff\xf1", b"\xff\xf9")),
    ("flac", "audio/flac", (b"fLaC",)),
])
def test_each_speech_format_has_its_content_type_and_signature(stack: Stack, fmt, content_type, magic):
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}, timeout=60) as h:
        r = h.post("/v1/audio/speech", json={"model": TTS, "input": "Hello there.", "voice": "heart",
                                              "response_format": fmt})
    assert r.status_code == 200 and r.headers["content-type"] == content_type
    assert r.content.startswith(magic) and len(r.content) > 500


def test_pcm_is_raw_16_bit_samples(client: openai.OpenAI):
    pcm = client.audio.speech.create(model=TTS, voice="alloy", input="Hello.", response_format="pcm").content
    assert len(pcm) % 2 == 0 and 0.3 < len(pcm) / 2 / 24000 < 3 and not pcm.startswith(b"RIFF")


def test_speech_streams_sentence_by_sentence_and_is_a_job(stack: Stack, http: httpx.Client):
    text = "This is the first sentence. And here comes a second one. A third ends it."
    with http.stream("POST", "/v1/audio/speech", json={"model": TTS, "input": text, "voice": "heart",
                                                        "response_format": "pcm"}) as r:
        assert r.status_code == 200
        job_id = r.headers["x-job-id"]
        streamed = b"".join(r.iter_bytes())
    events = http.get(f"/v1/jobs/{job_id}/events").text
    deltas = [json.loads(line[6:]) for line in events.splitlines()
              if line.startswith("data: ") and "speech.audio.delta" in line]
    assert len(deltas) >= 3  # the audio was published as it was made, not at the end
    assert b"".join(base64.b64decode(d["audio"]) for d in deltas) == streamed
    result = http.get(f"/v1/jobs/{job_id}/result")
    assert result.headers["content-type"] == "audio/pcm" and result.content == streamed
    assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_speech_refusals(client: openai.OpenAI):
    cases = [
        (dict(voice="nobody"), "voice"),
        (dict(voice="heart", input="x" * 4097), "input"),
        (dict(voice="heart", speed=9.0), "speed"),
        (dict(voice="heart", response_format="mp4"), "response_format"),
    ]
    for extra, param in cases:
        kwargs = {"model": TTS, "input": "Hello.", **extra}
        with pytest.raises(openai.BadRequestError) as info:
            client.audio.speech.create(**kwargs)
        assert info.value.body["param"] == param, (extra, info.value.body)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="smollm2-135m-instruct", input="Hello.", voice="alloy")
    assert info.value.body["code"] == "unsupported_capability"


def test_transcription_hears_the_words(client: openai.OpenAI, fox_wav: bytes):
    out = client.audio.transcriptions.create(model="whisper-1", file=("fox.wav", fox_wav))
    assert {"quick", "brown", "fox", "lazy", "dog"} <= words(out.text)


def test_transcription_formats(client: openai.OpenAI, fox_wav: bytes):
    srt = client.audio.transcriptions.create(model=ASR, file=("fox.wav", fox_wav), response_format="srt")
    first = srt.strip().split("\n\n")[0].splitlines()
    assert first[0] == "1" and re.fullmatch(r"00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}", first[1])
    assert "fox" in srt.lower()
    vtt = client.audio.transcriptions.create(model=ASR, file=("fox.wav", fox_wav), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and re.search(r"00:00:\d\d\.\d{3} --> 00:00:\d\d\.\d{3}", vtt)
    text = client.audio.transcriptions.create(model=ASR, file=("fox.wav", fox_wav), response_format="text")
    assert "brown" in text.lower()
    verbose = client.audio.transcriptions.create(model=ASR, file=("fox.wav", fox_wav),
                                                 response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and 1.0 < verbose.duration < 6.0
    assert verbose.segments and all(0 <= s.start < s.end <= verbose.duration + 0.5 for s in verbose.segments)
    spoken = [w.word.strip(" .,").lower() for w in verbose.words]
    assert "fox" in spoken and all(a.start <= b.start for a, b in zip(verbose.words, verbose.words[1:]))


def test_translation_gives_english_text(client: openai.OpenAI, fox_wav: bytes):
    out = client.audio.translations.create(model=ASR, file=("fox.wav", fox_wav))
    assert {"quick", "fox"} <= words(out.text)


def test_transcription_refusals(client: openai.OpenAI, http: httpx.Client, fox_wav: bytes):
    with pytest.raises(openai.BadRequestError) as info:  # not audio at all: the engine cannot decode it
        client.audio.transcriptions.create(model=ASR, file=("notes.wav", b"this is not audio" * 100))
    assert info.value.status_code == 400 and "decode" in info.value.message.lower()
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=ASR, file=("notes.txt", fox_wav))
    assert info.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=ASR, file=("fox.wav", fox_wav), response_format="text",
                                           timestamp_granularities=["word"])
    assert info.value.body["param"] == "timestamp_granularities"
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=TTS, file=("fox.wav", fox_wav))
    assert info.value.body["code"] == "unsupported_capability"
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="no-such-model", file=("fox.wav", fox_wav))
    r = http.post("/v1/audio/transcriptions", data={"model": ASR})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
    r = http.post("/v1/audio/transcriptions", data={"model": ASR}, files={"other": ("a.wav", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "other"
    r = http.post("/v1/audio/transcriptions", data={"model": ASR, "temperature": "hot"},
                  files={"file": ("a.wav", fox_wav)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_a_transcription_is_a_job_too(http: httpx.Client, fox_wav: bytes):
    r = http.post("/v1/audio/transcriptions", data={"model": ASR, "response_format": "srt"},
                  files={"file": ("fox.wav", fox_wav)}, headers={"prefer": "respond-async"})
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"
    job_id = r.json()["id"]
    events = http.get(f"/v1/jobs/{job_id}/events").text
    assert "event: job.succeeded" in events
    result = http.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and result.text.startswith("1\n") and "fox" in result.text.lower()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_minilm_embeddings_are_the_same_in_both_encodings_and_mean_something(client: openai.OpenAI):
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    default = client.embeddings.create(model=EMBED, input=texts)  # the SDK asks for base64 and decodes it
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    a, b = [d.embedding for d in default.data], [d.embedding for d in floats.data]
    assert a == b and all(len(v) == 384 for v in a)
    assert cosine(a[0], a[1]) > cosine(a[0], a[2]) + 0.3
    assert default.usage.prompt_tokens > 3 * 5  # counted by the model's tokenizer


def test_a_worker_killed_mid_speech_restarts_the_audio_and_the_job_completes(stack: Stack, http: httpx.Client):
    text = " ".join([FOX] * 90)[:4000]  # about four minutes of speech: still being made when the worker dies
    with http.stream("POST", "/v1/audio/speech", json={"model": TTS, "input": text, "voice": "heart",
                                                        "response_format": "pcm"}) as r:
        assert r.status_code == 200
        job_id = r.headers["x-job-id"]
        chunks = r.iter_bytes()
        assert next(chunks)
        stack.restart_worker(kill=True)
        with pytest.raises(httpx.HTTPError):  # the body is cut short, not silently spliced
            for _ in chunks:
                pass
    job = wait_finished(http, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    events = http.get(f"/v1/jobs/{job_id}/events").text
    assert "event: job.restarted" in events and '"attempt":2' in events
    audio = http.get(f"/v1/jobs/{job_id}/result").content
    assert 120 < len(audio) / 2 / 24000 < 400  # the whole text, spoken once
