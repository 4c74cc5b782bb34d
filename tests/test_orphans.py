"""Audio uploads are admitted before they are stored, and the proxy sweeps orphaned inputs (uploads and
claim-checked request bodies of jobs that never started or have ended) from the object store."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
import wave
from pathlib import Path

import httpx
import pytest

from orchestration.objectstore import (LocalObjectStore, StoredObject, object_store_from_env, request_key,
                                       result_key, upload_key)
from orchestration.streams import ensure_kv
from schemas.jobs import INFERENCE_WORKFLOW
from proxy.jobs.orphans import sweep_orphans, take_turn, temporal_job_state
from tests.conftest import Stack, scenario
from tests.jobclient import wait_finished

ASR = "fake-vllm-whisper"


def noise_wav() -> bytes:
    """A short WAV no other test sends (its digest names the stored upload)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(os.urandom(3200))
    return out.getvalue()


def stored_uploads(stack: Stack, audio: bytes) -> list[Path]:
    digest = hashlib.sha256(audio).hexdigest()[:32]
    return list(Path(stack.env["SWITCHYARD_OBJECT_DIR"]).glob(f"*/upload-{digest}*"))


def new_key(stack: Stack, limits: dict | None = None, **scopes) -> str:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}, timeout=30) as a:
        assert a.post("/admin/tenants", json={"id": tenant, "limits": limits or {}}).status_code == 201
        r = a.post("/admin/keys", json={"tenant": tenant, **scopes})
        assert r.status_code == 201, r.text
        return r.json()["key"]


def transcribe(stack: Stack, key: str, audio: bytes, model: str = ASR) -> httpx.Response:
    return httpx.post(stack.proxy_url + "/v1/audio/transcriptions", headers={"authorization": f"Bearer {key}",
                      "prefer": "respond-async"}, data={"model": model}, files={"file": ("a.wav", audio)}, timeout=60)


def test_refused_uploads_leave_nothing_in_the_store(stack: Stack):
    refusals = [
        (new_key(stack, endpoints=["/v1/chat/*"]), ASR, 403),       # endpoint out of the key's scope
        (new_key(stack, models=["smollm2-*"]), ASR, 404),           # model out of the key's scope
        (stack.key, "no-such-whisper", 404),                         # no such model
    ]
    for key, model, status in refusals:
        audio = noise_wav()
        r = transcribe(stack, key, audio, model)
        assert r.status_code == status, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert stored_uploads(stack, audio) == [], (model, status)

    limited = new_key(stack, limits={"rpm": 1})
    admitted, refused = noise_wav(), noise_wav()
    assert transcribe(stack, limited, admitted).status_code == 202
    assert len(stored_uploads(stack, admitted)) == 1  # an admitted upload is stored (and found here)
    r = transcribe(stack, limited, refused)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert stored_uploads(stack, refused) == []


async def test_sweep_deletes_old_orphans_and_keeps_live_jobs_inputs(stack: Stack, http: httpx.Client, temporal,
                                                                    tmp_path: Path):
    store = LocalObjectStore(tmp_path / "objects")
    never_started = f"trsc-{uuid.uuid4().hex}"
    live = f"trsc-{uuid.uuid4().hex}"
    handle = await temporal.start_workflow(INFERENCE_WORKFLOW, {}, id=live, task_queue=f"nobody-{uuid.uuid4().hex}")
    ended = http.post("/v1/jobs", json={"endpoint": "/v1/chat/completions",
                                        "body": {"model": "fake-vllm", "messages": scenario("ok")}}).json()["id"]
    assert wait_finished(http, ended)["status"] == "succeeded"
    await temporal.get_workflow_handle(ended).result()  # closed: its ending (settlement) has run
    try:
        old = time.time() - 7200
        keys = {"orphan": upload_key(never_started, "a" * 32, "wav"), "live": upload_key(live, "b" * 32, "wav"),
                "ended": request_key(ended, "c" * 16), "result": result_key(ended),
                "young": upload_key(f"trsc-{uuid.uuid4().hex}", "d" * 32, "wav")}
        for name, key in keys.items():
            await store.put(key, b"x")
            if name != "young":
                os.utime(store.root / key, (old, old))
        deleted = await sweep_orphans(store, temporal_job_state(temporal), ttl_s=3600)
        left = {o.key async for o in store.list_objects()}
        assert deleted == 2 and left == {keys["live"], keys["result"], keys["young"]}
    finally:
        await handle.terminate()


async def test_one_replica_takes_each_sweep_turn(js):
    bucket = f"sy_sweeps_test_{uuid.uuid4().hex[:8]}"
    kv = await ensure_kv(js, bucket)
    try:
        now = time.time()
        assert await take_turn(kv, 60, now) is True
        assert await take_turn(kv, 60, now + 1) is False  # another replica, within the turn
        assert await take_turn(kv, 60, now + 61) is True
    finally:
        await js.delete_key_value(bucket)


async def test_s3_store_lists_its_objects(s3_server: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = object_store_from_env({"SWITCHYARD_OBJECT_STORE": "s3", "SWITCHYARD_S3_BUCKET": "sweeps",
                                   "SWITCHYARD_S3_ENDPOINT_URL": s3_server, "SWITCHYARD_S3_PREFIX": "p",
                                   "SWITCHYARD_S3_REGION": "us-east-1", "SWITCHYARD_S3_CREATE_BUCKET": "1"})
    try:
        await store.put(upload_key("trsc-1", "e" * 32, "wav"), b"1")
        await store.put(result_key("trsc-1"), b"2")
        listed = [o async for o in store.list_objects()]
        assert sorted(o.key for o in listed) == ["trsc-1/result.json", f"trsc-1/upload-{'e' * 32}.wav"]
        assert all(isinstance(o, StoredObject) and abs(o.modified - time.time()) < 300 for o in listed)
    finally:
        await store.aclose()
