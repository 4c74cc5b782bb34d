"""The real models of the Triton deployment (compose/triton), spoken to directly over Triton's HTTP API
(KServe v2 infer, the binary tensor extension, the generate_stream extension): MiniLM embeddings,
Whisper speech to text, hibari text to speech, on the session's server.
It runs from scripts/setup_triton.sh's venv, .cache/pytriton (`make install` builds it)."""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import subprocess
import wave

import httpx
import pytest

from tests.conftest import Stack
from tests.triton_server import PYTRITON_PYTHON

FOX = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def triton(stack: Stack):
    """The session's Triton, the one the stack's worker sends its audio and embedding jobs to."""
    with httpx.Client(base_url=stack.triton_url + "/v2/models", timeout=60) as client:
        yield client


def embed(client: httpx.Client, texts: list[str]) -> tuple[list[list[float]], list[int]]:
    r = client.post("/minilm/infer", json={"inputs": [
        {"name": "text_input", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}]})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["embedding"]["datatype"] == "FP32" and out["embedding"]["shape"] == [len(texts), 384]
    assert out["prompt_tokens"]["datatype"] == "INT32" and out["prompt_tokens"]["shape"] == [len(texts), 1]
    flat = out["embedding"]["data"]
    return [flat[i * 384:(i + 1) * 384] for i in range(len(texts))], out["prompt_tokens"]["data"]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def speak(client: httpx.Client, text: str, **parameters) -> tuple[int, list[dict]]:
    """generate_stream: the status and the SSE events' JSON documents."""
    events = []
    with client.stream("POST", "/tts/generate_stream", json={"text_input": text, "parameters": parameters}) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return r.status_code, events


def audio_of(events: list[dict]) -> bytes:
    assert events and all("error" not in e for e in events), events
    return b"".join(base64.b64decode(e["audio"]) for e in events)


def transcribe(client: httpx.Client, audio: bytes, **parameters) -> httpx.Response:
    """infer with the file as one BYTES element in binary form (the binary tensor data extension)."""
    element = struct.pack("<I", len(audio)) + audio
    header = json.dumps({
        "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": "transcript", "parameters": {"binary_data": False}}],
        "parameters": parameters}).encode()
    return client.post("/whisper/infer", content=header + element,
                       headers={"Content-Type": "application/octet-stream",
                                "Inference-Header-Content-Length": str(len(header))})


def transcript(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "transcript" and out["datatype"] == "BYTES" and out["shape"] == [1]
    return json.loads(out["data"][0])


@pytest.fixture(scope="module")
def fox_wav(triton) -> bytes:
    status, events = speak(triton, FOX, response_format="wav")
    assert status == 200
    assert {e["sample_rate"] for e in events} == {24000}
    return audio_of(events)


def test_minilm_embeds_meaning(triton):
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    vectors, tokens = embed(triton, texts)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > 0.6 > cosine(vectors[0], vectors[2]) + 0.3
    assert tokens == [9, 7, 9]  # word pieces with [CLS] and [SEP]
    for text, vector in zip(texts, vectors):  # the batch answers in order: each as when sent alone
        (alone,), _ = embed(triton, [text])
        assert cosine(alone, vector) > 0.999
    _, (count,) = embed(triton, ["word " * 1000])
    assert count == 256  # truncated as sentence-transformers does for this model


def test_tts_to_whisper_round_trip(triton, fox_wav):
    with wave.open(io.BytesIO(fox_wav)) as w:  # a streamed WAV: the sizes say "unknown"
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        seconds = len(w.readframes(10 ** 9)) / 2 / 24000
    assert 1.5 < seconds < 6
    doc = transcript(transcribe(triton, fox_wav, task="transcribe", word_timestamps=True))
    assert all(word in doc["text"].lower() for word in ("quick", "brown", "fox")), doc["text"]
    assert doc["language"] == "en" and abs(doc["duration"] - seconds) < 0.05
    segments = doc["segments"]
    assert segments and [s["id"] for s in segments] == list(range(len(segments)))
    for s in segments:
        assert 0 <= s["start"] < s["end"] <= doc["duration"] + 0.05 and s["tokens"]
        assert {"seek", "text", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"} <= s.keys()
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    words = [w["word"].strip(" .").lower() for w in doc["words"]]
    assert "fox" in words and all(w["start"] <= w["end"] for w in doc["words"])
    plain = transcript(transcribe(triton, fox_wav))
    assert plain["words"] == [] and "fox" in plain["text"].lower()


def test_translate_of_english_audio_is_english(triton, fox_wav):
    doc = transcript(transcribe(triton, fox_wav, task="translate", temperature=0.2, prompt="A fox."))
    assert "fox" in doc["text"].lower() and "dog" in doc["text"].lower()


def test_whisper_refuses_what_is_not_audio_and_keeps_serving(triton, fox_wav):
    r = transcribe(triton, b"this is not a sound file, only some text " * 20)
    assert 400 <= r.status_code < 600 and "could not be decoded" in r.json()["error"]
    r = transcribe(triton, fox_wav, language="de")  # tiny.en: English only, and says so
    assert 400 <= r.status_code < 600 and "English only" in r.json()["error"]
    assert triton.get("/whisper/ready").status_code == 200
    assert "fox" in transcript(transcribe(triton, fox_wav))["text"].lower()


MAGIC = {"wav": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
         "flac": lambda b: b[:4] == b"fLaC",
         "mp3": lambda b: b[:3] == b"ID3" or (b[0] == 0xFF and b[1] & 0xE0 == 0xE0),
         "opus": lambda b: b[:4] == b"OggS" and b"OpusHead" in b[:64],
         "aac": lambda b: b[0] == 0xFF and b[1] & 0xF6 == 0xF0,  # ADTS sync word, layer 0
         "pcm": lambda b: len(b) % 2 == 0}

DECODE = """
import av, json, sys
out = {}
for path in sys.argv[1:]:
    with av.open(path, format="s16le" if path.endswith(".pcm") else None,
                 options={"sample_rate": "24000", "ch_layout": "mono"} if path.endswith(".pcm") else {}) as c:
        s = c.streams.audio[0]
        out[path.rsplit(".", 1)[1]] = [s.codec_context.name, sum(f.samples / f.sample_rate for f in c.decode(s))]
print(json.dumps(out))
"""


def test_every_format_streams_a_file_that_decodes(triton, tmp_path):
    text = "Hello there, this is the first sentence. And here is a second one!"
    paths = []
    for fmt in ("wav", "pcm", "flac", "mp3", "opus", "aac"):
        status, events = speak(triton, text, response_format=fmt, voice="default")
        assert status == 200
        assert len([e for e in events if e["audio"]]) > 1, f"{fmt}: not streamed"
        data = audio_of(events)
        assert MAGIC[fmt](data), (fmt, data[:16])
        paths.append(tmp_path / f"speech.{fmt}")
        paths[-1].write_bytes(data)
    # the project's venv has no PyAV: decode with the deployment's
    decoded = json.loads(subprocess.check_output([str(PYTRITON_PYTHON), "-c", DECODE, *map(str, paths)]))
    seconds = decoded["pcm"][1]
    assert 2.5 < seconds < 8
    for fmt, (codec, duration) in decoded.items():
        assert abs(duration - seconds) < 0.2, (fmt, codec, duration, seconds)
    assert decoded["opus"][0] == "opus" and decoded["aac"][0] == "aac" and decoded["flac"][0] == "flac"
    fast = audio_of(speak(triton, text, response_format="pcm", speed=2.0)[1])
    faster = audio_of(speak(triton, text, response_format="pcm", speed=4.0)[1])
    assert len(faster) < len(fast) * 0.7 and len(fast) < seconds * 48000 * 0.7


@pytest.mark.parametrize("parameters, text, message", [
    ({"voice": "alloy"}, "Hi.", "available voices: default, heart"),
    ({"response_format": "ogg"}, "Hi.", "supported formats: wav, pcm, mp3, flac, opus, aac"),
    ({"speed": 5}, "Hi.", "speed must be between 0.25 and 4.0"),
    ({}, "x" * 4097, "at most 4096"),
])
def test_tts_refuses_bad_requests_clearly(triton, parameters, text, message):
    status, events = speak(triton, text, **parameters)
    assert status >= 400 and len(events) == 1 and message in events[0]["error"]
