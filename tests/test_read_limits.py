"""The jobs API's read routes are rate-limited and bounded: a per-key read rate (429), a cap on open
`/events` streams per key (429), `/result` past its size bound (413 pointing to `/events`), and
`GET /v1/jobs` reading a bounded number of visibility entries per call. Each bound is checked on an
in-process proxy of the session's stack configured with small limits."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx

from proxy.http.app import create_app
from proxy.config import ProxySettings
from switchyard.processes import free_port
from tests.conftest import Stack, scenario
from tests.inprocess import fake_vllm_catalog, serving
from tests.jobclient import wait_finished

import uvicorn

CHAT = "/v1/chat/completions"


@contextlib.asynccontextmanager
async def proxy_with(stack: Stack, **env: str):
    """A proxy on the session's Temporal and NATS, with `env` on top of the session's settings."""
    port = free_port()
    catalog = fake_vllm_catalog(stack, "read-limits-catalog.yaml")
    settings = ProxySettings.from_env({**stack.env, "SWITCHYARD_PORT": str(port), "SWITCHYARD_CATALOG": str(catalog),
                                       "SWITCHYARD_ORPHAN_SWEEP_S": "0", **env})
    app = create_app(settings)
    async with serving(app, uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")):
        yield app, f"http://127.0.0.1:{port}"


def new_key(stack: Stack) -> str:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}, timeout=30) as a:
        assert a.post("/admin/tenants", json={"id": tenant}).status_code == 201
        return a.post("/admin/keys", json={"tenant": tenant}).json()["key"]


def session_client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=60)


def new_job(h: httpx.Client, name: str = "ok") -> str:
    r = h.post("/v1/jobs", json={"endpoint": CHAT, "body": {"model": "fake-vllm", "messages": scenario(name)}})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def assert_envelope(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


async def test_reads_past_the_keys_rate_are_429_with_retry_after(stack: Stack):
    key, other = new_key(stack), new_key(stack)
    with session_client(stack, key) as h:
        job_id = new_job(h)
        wait_finished(h, job_id)
    async with proxy_with(stack, SWITCHYARD_READ_RPS="0.1", SWITCHYARD_READ_BURST="3") as (_, url):
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c:
            reads = [await c.get("/v1/jobs"), await c.get(f"/v1/jobs/{job_id}/result"),
                     await c.get(f"/v1/jobs/{job_id}/events")]
            assert [r.status_code for r in reads] == [200, 200, 200]
            for path in ("/v1/jobs", f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/events"):
                r = await c.get(path)
                assert_envelope(r, 429, "rate_limit_exceeded")
                assert int(r.headers["retry-after"]) >= 1
            assert (await c.get(f"/v1/jobs/{job_id}")).status_code == 200  # a job's status is not a counted read
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {other}"}, timeout=30) as c:
            assert (await c.get("/v1/jobs")).status_code == 200  # per key


async def test_open_event_streams_per_key_are_capped(stack: Stack):
    key = new_key(stack)
    with session_client(stack, key) as h:
        job_id = new_job(h, "slow;delay=1;repeat=3")  # runs ~24 s: its stream stays open
    async with proxy_with(stack, SWITCHYARD_READ_RPS="0", SWITCHYARD_MAX_EVENT_STREAMS="2") as (_, url):
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60) as c:
            async with contextlib.AsyncExitStack() as streams:
                for _ in range(2):
                    r = await streams.enter_async_context(c.stream("GET", f"/v1/jobs/{job_id}/events"))
                    assert r.status_code == 200
                third = await c.get(f"/v1/jobs/{job_id}/events")
                assert_envelope(third, 429, "too_many_event_streams")
                assert third.headers["retry-after"] == "1"
            # Both closed: the proxy frees their slots once it notices (its next keep-alive, 1 s).
            for _ in range(100):
                async with c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
                    if r.status_code == 200:
                        break
                await asyncio.sleep(0.1)
            assert r.status_code == 200
        with session_client(stack, key) as h:
            h.post(f"/v1/jobs/{job_id}/cancel")


async def test_a_result_past_its_bound_is_413_pointing_to_events(stack: Stack):
    key = new_key(stack)
    with session_client(stack, key) as h:
        small, large = new_job(h), new_job(h, "slow;delay=0.03;repeat=4")  # 32 words, one event each
        wait_finished(h, small), wait_finished(h, large)
        assert h.get(f"/v1/jobs/{large}/result").status_code == 200  # the default bound takes it
    async with proxy_with(stack, SWITCHYARD_READ_RPS="0", SWITCHYARD_RESULT_MAX_EVENTS="20") as (_, url):
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c:
            error = assert_envelope(await c.get(f"/v1/jobs/{large}/result"), 413, "result_too_large")
            assert f"/v1/jobs/{large}/events" in error["message"]
            assert (await c.get(f"/v1/jobs/{small}/result")).status_code == 200
            async with c.stream("GET", f"/v1/jobs/{large}/events") as r:  # where the message points
                assert r.status_code == 200 and "job.succeeded" in (await r.aread()).decode()


class CountingTemporal:
    """The proxy's Temporal client, counting the visibility entries its listings read."""

    def __init__(self, client):
        self._client = client
        self.entries = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def list_workflows(self, *args, **kwargs):
        async def counted():
            async for wf in self._client.list_workflows(*args, **kwargs):
                self.entries += 1
                yield wf

        return counted()


async def test_listing_reads_a_bounded_number_of_entries_and_pages_through_all(stack: Stack):
    key = new_key(stack)
    with session_client(stack, key) as h:
        made = [new_job(h) for _ in range(9)]
    async with proxy_with(stack, SWITCHYARD_READ_RPS="0", SWITCHYARD_LIST_MAX_SCAN="4") as (app, url):
        counting = app.state.runtime.temporal = CountingTemporal(app.state.runtime.temporal)
        listed, after, calls = [], None, 0
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c:
            while calls < 20:
                counting.entries, calls = 0, calls + 1
                page = (await c.get("/v1/jobs", params={"limit": 3, **({"after": after} if after else {})})).json()
                assert counting.entries <= 4, counting.entries
                listed += [j["id"] for j in page["data"]]
                if not page["has_more"]:
                    break
                after = page["last_id"] or after
        assert listed == made[::-1]
