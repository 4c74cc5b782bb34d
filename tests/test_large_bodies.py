"""Bodies Temporal alone would refuse (its payload limit is 2 MB): a 5 MB chat prompt and a 20 MB
audio upload, through the running stack with the local store and with S3 (moto's real S3 API)."""

from __future__ import annotations

import array
import io
import re
import uuid
import wave
from pathlib import Path

import httpx
import openai
import pytest

from schemas.jobs import InferenceSummary
from switchyard.processes import free_port, start_python, wait_http
from tests.conftest import Stack, scenario
from tests.fakes.vllm import REPLY

AUDIO_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def s3_proxy(stack: Stack, s3_server: str, tmp_path_factory: pytest.TempPathFactory):
    """A second proxy and worker on the same Temporal and NATS, storing claims in S3."""
    port = free_port()
    env = {**stack.env, "SWITCHYARD_OBJECT_STORE": "s3", "SWITCHYARD_S3_BUCKET": "claims",
           "SWITCHYARD_S3_ENDPOINT_URL": s3_server, "SWITCHYARD_S3_REGION": "us-east-1",
           "SWITCHYARD_S3_CREATE_BUCKET": "1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "SWITCHYARD_CATALOG": str(Path(__file__).parent / "catalog_s3.yaml"), "SWITCHYARD_QUEUES": "s3.test",
           "SWITCHYARD_PORT": str(port), "SWITCHYARD_METRICS_PORT": str(free_port())}
    log = tmp_path_factory.mktemp("s3stack")
    worker = start_python("worker-s3", ["worker"], log, None, env)
    proxy = start_python("proxy-s3", ["proxy"], log, None, env)
    try:
        wait_http(proxy, f"http://127.0.0.1:{port}/healthz", 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.stop()
        worker.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, stack: Stack):
    """(proxy URL, a function listing the stored object keys) for each claim-check store."""
    if request.param == "local":
        root = Path(stack.env["SWITCHYARD_OBJECT_DIR"])
        return stack.proxy_url, lambda: [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    url = request.getfixturevalue("s3_proxy")
    s3 = request.getfixturevalue("s3_server")
    return url, lambda: re.findall(r"<Key>([^<]+)</Key>", httpx.get(f"{s3}/claims?list-type=2&max-keys=1000").text)


def long_recording(wav_bytes: bytes) -> bytes:
    """A 20 MB WAV: the speech at 96 kHz, stereo, 32-bit, then silence (about 27 s in all)."""
    with wave.open(io.BytesIO(wav_bytes)) as w:
        rate, samples = w.getframerate(), array.array("h", w.readframes(10**9))
    step = 96000 // rate
    wide = array.array("i", bytes(4 * 2 * step * len(samples)))
    for i, s in enumerate(samples):
        wide[2 * step * i:2 * step * (i + 1)] = array.array("i", [s << 16]) * (2 * step)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(4)
        w.setframerate(96000)
        w.writeframes(wide.tobytes() + bytes(AUDIO_BYTES - len(wide) * 4))
    return out.getvalue()


async def history_of(temporal, job_id: str):
    handle = temporal.get_workflow_handle(job_id, result_type=InferenceSummary)
    await handle.result()
    return (await handle.fetch_history()).to_json()


async def test_a_5_mb_chat_prompt(store, stack: Stack, temporal):
    url, keys = store
    client = openai.OpenAI(base_url=url + "/v1", api_key=stack.key, max_retries=0, timeout=120)
    marker = uuid.uuid4().hex
    prompt = f"{marker} " + "lorem ipsum " * 440_000  # 5.28 MB
    raw = client.chat.completions.with_raw_response.create(
        model="fake-vllm", stream=True, messages=[{"role": "system", "content": prompt}, *scenario("ok")])
    job_id = raw.headers["x-job-id"]
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == REPLY
    assert [s for s in stack.fake.seen if s.startswith(marker)] == [prompt]  # whole, once
    history = await history_of(temporal, job_id)
    assert len(history) < 50_000 and marker not in history
    assert any(k.startswith(f"{job_id}/request-") for k in keys())


async def test_a_20_mb_audio_upload(store, stack: Stack, temporal):
    url, keys = store
    client = openai.OpenAI(base_url=url + "/v1", api_key=stack.key, max_retries=0, timeout=120)
    speech = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    fox = speech.audio.speech.create(model="hibari-tts", voice="heart", response_format="wav",
                                     input="The quick brown fox jumps over the lazy dog.").content
    recording = long_recording(fox)
    assert len(recording) > AUDIO_BYTES
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-tiny", file=("long.wav", recording))
    assert {"quick", "fox"} <= set(re.findall(r"[a-z]+", raw.parse().text.lower()))
    job_id = raw.headers["x-job-id"]
    assert len(await history_of(temporal, job_id)) < 50_000
    stored = [k for k in keys() if k.startswith(f"{job_id}/")]
    assert any("/upload-" in k and k.endswith(".wav") for k in stored), stored
    assert f"{job_id}/result.json" in stored


def test_an_upload_over_25_mb_is_refused_before_it_is_read(stack: Stack, http: httpx.Client):
    r = http.post("/v1/audio/transcriptions", data={"model": "whisper-tiny"},
                  files={"file": ("big.wav", bytes(26 * 1024 * 1024))})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
