"""The claim-check object store: the local directory and S3 (against a real S3 API server, moto),
and large request bodies travelling by reference through the whole stack."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

from orchestration.objectstore import (
    MAX_CLAIM_CHECK_BYTES,
    LocalObjectStore,
    ObjectNotFound,
    S3ObjectStore,
    claim_check_bytes,
    object_store_from_env,
    request_key,
    result_key,
)
from orchestration.converter import data_converter
from schemas.jobs import InferenceSummary
from tests.conftest import Stack, scenario


async def _exercise(store) -> None:
    job = f"chatcmpl-{uuid.uuid4().hex}"
    key = request_key(job)
    with pytest.raises(ObjectNotFound):
        await store.get(key)
    big = os.urandom(3 * 1024 * 1024 + 7)
    assert await store.put(key, big) == key
    assert await store.get(key) == big
    assert await store.size(key) == len(big)
    assert b"".join([c async for c in store.stream(key)]) == big
    await store.put(key, b"replaced")  # overwrite
    assert await store.get(key) == b"replaced"
    await store.delete(key)
    with pytest.raises(ObjectNotFound):
        await store.get(key)
    for bad in ("../etc/passwd", "a/../../b", "/abs", "", "a b"):
        with pytest.raises(ValueError):
            await store.put(bad, b"x")


async def test_local_store(tmp_path: Path):
    store = LocalObjectStore(tmp_path / "objects")
    await _exercise(store)
    key = result_key("embd-1")
    await store.put(key, b"{}")
    assert [p.name for p in (tmp_path / "objects" / "embd-1").iterdir()] == ["result.json"]  # no temp files


async def test_local_store_sweeps_expired_jobs(tmp_path: Path):
    store = LocalObjectStore(tmp_path)
    await store.put(result_key("old"), b"1")
    await store.put(result_key("new"), b"2")
    past = time.time() - 7200
    os.utime(tmp_path / "old" / "result.json", (past, past))
    assert await store.sweep(3600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_threshold_from_env_is_capped():
    assert claim_check_bytes({}) == 1_000_000
    assert claim_check_bytes({"SWITCHYARD_CLAIM_CHECK_BYTES": "2048"}) == 2048
    assert claim_check_bytes({"SWITCHYARD_CLAIM_CHECK_BYTES": "5000000"}) == MAX_CLAIM_CHECK_BYTES
    with pytest.raises(ValueError):
        claim_check_bytes({"SWITCHYARD_CLAIM_CHECK_BYTES": "0"})


def test_store_from_env(tmp_path: Path):
    assert isinstance(object_store_from_env({"SWITCHYARD_OBJECT_DIR": str(tmp_path)}), LocalObjectStore)
    s3 = object_store_from_env({"SWITCHYARD_OBJECT_STORE": "s3", "SWITCHYARD_S3_BUCKET": "b",
                                "SWITCHYARD_S3_PREFIX": "/jobs/"})
    assert isinstance(s3, S3ObjectStore) and s3.prefix == "jobs/"
    with pytest.raises(ValueError):
        object_store_from_env({"SWITCHYARD_OBJECT_STORE": "s3"})
    with pytest.raises(ValueError):
        object_store_from_env({"SWITCHYARD_OBJECT_STORE": "ftp"})


async def test_s3_store(s3_server: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = object_store_from_env({"SWITCHYARD_OBJECT_STORE": "s3", "SWITCHYARD_S3_BUCKET": "switchyard",
                                   "SWITCHYARD_S3_ENDPOINT_URL": s3_server, "SWITCHYARD_S3_PREFIX": "claims",
                                   "SWITCHYARD_S3_REGION": "us-east-1", "SWITCHYARD_S3_CREATE_BUCKET": "1"})
    try:
        await _exercise(store)
        await store.put(result_key("embd-2"), b"{}")
        listing = httpx.get(f"{s3_server}/switchyard?list-type=2").text
        assert "<Key>claims/embd-2/result.json</Key>" in listing
    finally:
        await store.aclose()


async def test_a_chat_body_over_temporals_limit_travels_by_reference(stack: Stack, client: openai.OpenAI,
                                                                      temporal):
    filler = "lorem ipsum " * 250_000  # 3 MB: Temporal alone refuses payloads over 2 MB
    raw = client.chat.completions.with_raw_response.create(
        model="fake-vllm", messages=[{"role": "system", "content": filler}, *scenario("size")])
    completion = raw.parse()
    received = int(completion.choices[0].message.content.split()[1])
    assert received > len(filler)  # the engine got the whole body
    job_id = raw.headers["x-job-id"]
    handle = temporal.get_workflow_handle(job_id, result_type=InferenceSummary)
    await handle.result()
    history = await handle.fetch_history()
    assert len(history.to_json()) < 50_000
    started = history.events[0].workflow_execution_started_event_attributes
    [plain] = await data_converter.payload_codec.decode([started.input.payloads[0]])  # encrypted at rest
    inference = msgspec.json.decode(plain.data)["inference"]
    assert inference["body"] == {} and inference["body_ref"].startswith(f"{job_id}/request-")
    stored = Path(stack.env["SWITCHYARD_OBJECT_DIR"]) / inference["body_ref"]
    assert msgspec.json.decode(stored.read_bytes())["messages"][0]["content"] == filler


def test_a_small_body_stays_inline(stack: Stack, client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(model="fake-vllm", messages=scenario("ok"))
    assert not (Path(stack.env["SWITCHYARD_OBJECT_DIR"]) / raw.headers["x-job-id"]).exists()


def test_a_large_completion_prompt_by_reference_reaches_the_engine(stack: Stack, http: httpx.Client):
    """1.2 MB of prompt goes by reference; the real engine reads it all (and says it is too long)."""
    r = http.post("/v1/completions", json={"model": "smollm2-135m-instruct", "prompt": "word " * 240_000,
                                           "max_tokens": 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "engine_rejected"
    stored = Path(stack.env["SWITCHYARD_OBJECT_DIR"]) / r.headers["x-job-id"]
    assert [p.name.startswith("request-") for p in stored.iterdir()] == [True]
