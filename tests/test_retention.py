"""How long job events stay in NATS: the SWITCHYARD_JOBS stream's own limits (max age, max bytes,
reserved apart from the KV buckets), and a tenant's shorter `retention_s`, carried by every event of
its jobs as a per-message TTL (Nats-TTL, NATS 2.11+)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from orchestration.activities import InferenceActivities
from orchestration.natsconfig import retention_from_env
from orchestration.objectstore import LocalObjectStore
from orchestration.publisher import EventPublisher
from orchestration.streams import STREAM, TTL_HEADER, ensure_kv, ensure_stream, events_ttl, job_subject, read_events
from schemas.jobs import TerminalNotice
from schemas.openai import ErrorBody
from tests.eventually import eventually_async
from tests.nats_fixture import running_nats

HELLO = [{"role": "user", "content": "hello"}]


def test_stream_limits_come_from_the_environment():
    r = retention_from_env({"SWITCHYARD_JOBS_MAX_AGE_S": "3600", "SWITCHYARD_JOBS_MAX_BYTES": "1048576"})
    assert (r.max_age_s, r.max_bytes) == (3600, 1 << 20)
    default = retention_from_env({})
    assert (default.max_age_s, default.max_bytes) == (86400, 4 << 30)
    for bad in ({"SWITCHYARD_JOBS_MAX_AGE_S": "0"}, {"SWITCHYARD_JOBS_MAX_BYTES": "lots"}):
        with pytest.raises(ValueError, match="SWITCHYARD_JOBS_MAX"):
            retention_from_env(bad)


def test_a_tenant_retention_only_ever_shortens_the_stream_max_age():
    assert events_ttl(3600, 86400) == 3600
    assert events_ttl(0, 86400) == 0
    assert events_ttl(7 * 86400, 86400) == 0  # the stream's max age removes them first anyway


async def test_full_job_stream_drops_old_events_not_kv_writes(tmp_path: Path):
    with running_nats(tmp_path) as url:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await ensure_stream(js, max_age_s=3600, max_bytes=64 * 1024)
            config = (await js.stream_info(STREAM)).config
            assert (config.max_age, config.max_bytes, config.allow_msg_ttl) == (3600, 64 * 1024, True)
            kv = await ensure_kv(js, "sy_test", history=1)
            for i in range(200):  # ~200 KB of 1 KB events into a 64 KB stream
                await js.publish(job_subject(f"job-{i}"), b"x" * 1024)
            state = (await js.stream_info(STREAM)).state
            assert state.bytes <= 64 * 1024 and state.first_seq > 1  # the oldest went
            await kv.put("still", b"writable")
            assert (await kv.get("still")).value == b"writable"
            await ensure_stream(js, max_age_s=7200, max_bytes=128 * 1024)  # an existing stream is updated
            config = (await js.stream_info(STREAM)).config
            assert (config.max_age, config.max_bytes) == (7200, 128 * 1024)
        finally:
            await nc.close()


async def test_events_with_a_ttl_expire_and_the_others_stay(tmp_path: Path):
    with running_nats(tmp_path) as url:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await ensure_stream(js)
            short = EventPublisher(js, "job-short", 1, 0, ttl_s=1)
            await short.started(resumed_from=0)
            await short.cancelled("done")
            kept = EventPublisher(js, "job-kept", 1, 0)
            await kept.started(resumed_from=0)
            await kept.cancelled("done")
            assert len(await read_events(js, "job-short")) == 2
            async def short_events_expired() -> bool:
                return not await read_events(js, "job-short")

            await eventually_async(short_events_expired, timeout=15, interval=0.2)
            assert len(await read_events(js, "job-kept")) == 2
        finally:
            await nc.close()


async def test_a_failed_job_terminal_event_keeps_the_job_ttl(tmp_path: Path):
    with running_nats(tmp_path) as url:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await ensure_stream(js)
            started = EventPublisher(js, "job-f", 1, 0, ttl_s=120)
            await started.started(resumed_from=0)
            await started.close()
            acts = InferenceActivities(js, {}, objects=LocalObjectStore(tmp_path / "objects"))
            seq = await acts.publish_terminal(TerminalNotice(
                job_id="job-f", kind="failed", status=503, error=ErrorBody(message="gone", type="server_error")))
            last = await js.get_last_msg(STREAM, job_subject("job-f"), direct=True)
            assert last.seq and seq == 2 and last.headers[TTL_HEADER] == "120"
        finally:
            await nc.close()


async def _headers_of(js, job_id: str) -> list[dict[str, str]]:
    out, seq = [], 0
    while True:
        try:
            msg = await js.get_msg(STREAM, seq=seq + 1, next=True, subject=job_subject(job_id), direct=True)
        except NotFoundError:
            return out
        out.append(msg.headers or {})
        seq = msg.seq


async def test_the_stack_stream_has_limits_and_a_tenant_retention_reaches_its_events(stack, js):
    config = (await js.stream_info(STREAM)).config
    assert config.max_age == 86400 and config.max_bytes == 4 << 30 and config.allow_msg_ttl
    admin = {"authorization": f"Bearer {stack.key}"}
    tenant = "ret-" + uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=stack.proxy_url, timeout=60) as http:
        r = await http.post("/admin/tenants", json={"id": tenant, "retention_s": 5}, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
        r = await http.post("/admin/tenants", json={"id": tenant, "retention_s": 600}, headers=admin)
        assert r.status_code == 201 and r.json()["retention_s"] == 600, r.text
        r = await http.post("/admin/keys", json={"tenant": tenant}, headers=admin)
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        jobs = {}
        for who, auth in (("tenant", key), ("operator", stack.key)):
            r = await http.post("/v1/chat/completions", json={"model": "fake-vllm", "messages": HELLO},
                                headers={"authorization": f"Bearer {auth}"})
            assert r.status_code == 200, r.text
            jobs[who] = r.headers["x-job-id"]
        r = await http.patch(f"/admin/tenants/{tenant}", json={"retention_s": 1200}, headers=admin)
        assert r.status_code == 200 and r.json()["retention_s"] == 1200, r.text
    tenant_headers = await _headers_of(js, jobs["tenant"])
    assert len(tenant_headers) >= 3  # started, deltas, finished
    assert all(h.get(TTL_HEADER) == "600" for h in tenant_headers), tenant_headers
    assert all(TTL_HEADER not in h for h in await _headers_of(js, jobs["operator"]))
