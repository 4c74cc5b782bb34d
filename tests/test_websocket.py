"""WebSocket: several requests on one socket, interleaved events, cancel by id, auth never in the URL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid

import httpx
import msgspec
import pytest
import uvicorn
import websockets
from prometheus_client import REGISTRY

from proxy.jobs import ws as socket_module
from proxy.jobs.api import job_parts
from proxy.endpoints.registry import endpoint_of
from proxy.http.sse import LIFECYCLE
from proxy.http.app import create_app
from proxy.config import ProxySettings
from schemas.events import Cancelled, Failed, Finished, Restarted, Started
from schemas.jobs import CHAT_ENDPOINT
from schemas.openai import ErrorBody, Usage
from tests.conftest import MODEL, Stack, scenario
from tests.inprocess import fake_vllm_catalog, serving


def ws_url(stack: Stack) -> str:
    return stack.proxy_url.replace("http://", "ws://") + "/v1/ws"


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 30))


@pytest.mark.parametrize("event", [
    Started(seq=3, attempt=2, resumed_from=2, stage="speak"),
    Restarted(seq=4, attempt=2, reason="the engine cannot continue"),
    Finished(seq=9, attempt=2, finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=5,
                                                                 total_tokens=8), model=MODEL, created=1),
    Failed(seq=9, attempt=1, status=503, error=ErrorBody(message="no", type="server_error", code="no_capacity")),
    Cancelled(seq=9, attempt=1),
], ids=lambda e: type(e).__name__)
def test_a_lifecycle_event_says_over_the_socket_what_it_says_on_the_jobs_stream(event):
    chunks = endpoint_of(CHAT_ENDPOINT).chunk_writer("chatcmpl-1", MODEL, 1, True)
    [(_, name, body)] = [part for part in job_parts(event, chunks) if part[0] == LIFECYCLE]
    message = socket_module.Session._message("c1", event, chunks)
    assert message["event"] == name.decode()
    assert msgspec.json.decode(msgspec.json.encode(message["data"])) == msgspec.json.decode(body)


def test_job_running_over_the_socket_says_where_it_resumed():
    chunks = endpoint_of(CHAT_ENDPOINT).chunk_writer("chatcmpl-1", MODEL, 1, True)
    message = socket_module.Session._message("c1", Started(seq=3, attempt=2, resumed_from=2), chunks)
    assert message["event"] == "job.running"
    assert message["data"]["attempt"] == 2 and message["data"]["resumed_from"] > 0


async def test_two_requests_interleave_and_one_is_cancelled(stack: Stack):
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{stack.key}"]) as ws:
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "request", "id": "long", "body": {
            "model": MODEL, "max_tokens": 1000, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Write a long essay about rivers."}]}}))
        seen: list[tuple[str, str]] = []
        done: set[str] = set()
        cancelled_sent = slow_sent = False
        text = {"slow": "", "long": ""}
        while done != {"slow", "long"}:
            if not slow_sent and text["long"]:  # the long one is generating: the slow one joins it
                await ws.send(json.dumps({"type": "request", "id": "slow", "body": {
                    "model": "fake-vllm", "messages": scenario("slow")}}))
                slow_sent = True
            msg = await recv(ws)
            if msg["type"] == "event":
                seen.append((msg["id"], msg["event"]))
                if msg["event"] == "chunk":
                    text[msg["id"]] += msg["data"]["choices"][0]["delta"].get("content") or ""
                slow_words = len(text["slow"].split())
                if msg["id"] == "long" and slow_words >= 3 and len(text["long"]) > 20 and not cancelled_sent:
                    await ws.send(json.dumps({"type": "cancel", "id": "long"}))
                    cancelled_sent = True
            elif msg["type"] == "done":
                done.add(msg["id"])
            else:
                assert msg["type"] == "accepted", msg
    order = [i for i, e in seen if e == "chunk"]
    switches = sum(1 for a, b in zip(order, order[1:]) if a != b)
    assert switches >= 2  # the two streams interleave on the one socket
    assert ("slow", "job.succeeded") in seen and ("long", "job.cancelled") in seen
    from tests.fakes.vllm import REPLY

    assert text["slow"] == REPLY


async def test_auth_by_first_message_and_bad_key(stack: Stack):
    async with websockets.connect(ws_url(stack)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": stack.key}))
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "request", "id": "a", "body": {"model": "nope", "messages": []}}))
        err = await recv(ws)
        assert err["type"] == "error" and err["id"] == "a" and err["status"] == 400
        await ws.send("not json")
        assert (await recv(ws))["error"]["code"] == "invalid_json"
    async with websockets.connect(ws_url(stack)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": "sk-wrong"}))
        err = await recv(ws)
        assert err["status"] == 401
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)


async def test_socket_close_does_not_cancel_the_job(stack: Stack):
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{stack.key}"]) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "request", "id": "x", "body": {
            "model": "fake-vllm", "messages": scenario("slow")}}))
        job_id = (await recv(ws))["job_id"]
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{stack.key}"]) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "resume", "id": "again", "job_id": job_id, "after": 0}))
        events = []
        while True:
            msg = await recv(ws)
            if msg["type"] == "done":
                break
            events.append(msg["event"])
    assert events[-1] == "job.succeeded" and events.count("chunk") >= 5


def slow_job(repeat: int = 1) -> dict:
    return {"model": "fake-vllm", "messages": [{"role": "user", "content": scenario("slow")[0]["content"]
                                                + f";repeat={repeat}"}]}


async def test_resume_counts_toward_the_in_flight_limit(stack: Stack):
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{stack.key}"]) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "request", "id": "job", "body": slow_job(repeat=6)}))
        job_id = (await recv(ws))["job_id"]
        for i in range(32):  # with "job", one more than the 32 a socket may have in flight
            await ws.send(json.dumps({"type": "resume", "id": f"r{i}", "job_id": job_id, "after": 0}))
        refused, followed = [], set()
        while not refused and "r31" not in followed:
            msg = await recv(ws)
            if msg["type"] == "error":
                refused.append(msg)
            elif msg["type"] == "event":
                followed.add(msg["id"])
        assert [m["id"] for m in refused] == ["r31"] and refused[0]["status"] == 400
        assert refused[0]["error"]["param"] == "id" and "At most 32" in refused[0]["error"]["message"]
        await ws.send(json.dumps({"type": "cancel", "id": "job"}))
        done = set()
        while len(done) < 32:
            msg = await recv(ws)
            if msg["type"] == "done":
                done.add(msg["id"])
        # all ended, so the socket may follow again
        await ws.send(json.dumps({"type": "resume", "id": "again", "job_id": job_id, "after": 0}))
        while (msg := await recv(ws))["type"] != "done":
            assert msg["type"] == "event" and msg["id"] == "again", msg


async def test_an_id_in_flight_is_not_reused_by_a_resume(stack: Stack):
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{stack.key}"]) as ws:
        await recv(ws)
        for cid in ("a", "b"):
            await ws.send(json.dumps({"type": "request", "id": cid, "body": slow_job()}))
        jobs, errors, r_chunks, r_done = {}, [], set(), []
        done: set[str] = set()
        while not {"a", "b", "r"} <= done:
            msg = await recv(ws)
            if msg["type"] == "accepted":
                jobs[msg["id"]] = msg["job_id"]
                if len(jobs) == 2:  # "r" follows a, then is asked to follow b as well
                    for cid in ("a", "b"):
                        await ws.send(json.dumps({"type": "resume", "id": "r", "job_id": jobs[cid], "after": 0}))
            elif msg["type"] == "error":
                errors.append(msg)
            elif msg["type"] == "done":
                done.add(msg["id"])
                if msg["id"] == "r":
                    r_done.append(msg["job_id"])
            elif msg["id"] == "r" and msg["event"] == "chunk":
                r_chunks.add(msg["data"]["id"])
    assert [(e["id"], e["status"], e["error"]["param"]) for e in errors] == [("r", 400, "id")]
    assert "already in flight" in errors[0]["error"]["message"]
    assert r_chunks == {jobs["a"]} and r_done == [jobs["a"]]  # nothing of job b under "r"


async def test_a_revoked_key_closes_its_sockets_within_a_second(stack: Stack):
    headers = {"authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.proxy_url, headers=headers, timeout=30) as admin:
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        assert (await admin.post("/admin/tenants", json={"id": tenant})).status_code == 201
        created = (await admin.post("/admin/keys", json={"tenant": tenant})).json()
        async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{created['key']}"]) as ws:
            assert (await recv(ws))["type"] == "ready"
            await ws.send(json.dumps({"type": "request", "id": "x", "body": slow_job()}))
            assert (await recv(ws))["type"] == "accepted"
            r = await admin.post(f"/admin/keys/{created['key_id']}/revoke")
            assert r.status_code == 200
            revoked_at = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            took = time.monotonic() - revoked_at
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "api key revoked")
    assert took < 1.0, took


async def test_a_huge_message_gets_a_clean_close(stack: Stack, http):
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{stack.key}"], max_size=None) as ws:
        await recv(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.send(json.dumps({"type": "request", "id": "big", "body": {"pad": "x" * (17 * 2**20)}}))
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # uvicorn's ws_max_size, 16 MiB
    assert http.get("/healthz").status_code == 200


# A client that does not read: an in-process proxy with small buffers everywhere (its listening
# socket's send buffer, the outbox) and a 1 s stall deadline, so that a few jobs overflow them.

@contextlib.asynccontextmanager
async def small_buffer_proxy(stack: Stack, stall_s: float):
    catalog = fake_vllm_catalog(stack, "ws-catalog.yaml")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # inherited by accepted sockets
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings = ProxySettings.from_env({**stack.env, "SWITCHYARD_PORT": str(port), "SWITCHYARD_CATALOG": str(catalog),
                                       "SWITCHYARD_WS_STALL_S": str(stall_s)})
    app = create_app(settings)
    try:
        async with serving(app, uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5),
                           sockets=[listener]):
            yield f"ws://127.0.0.1:{port}/v1/ws", port
    finally:
        listener.close()


def stalled_closes() -> float:
    return REGISTRY.get_sample_value("switchyard_websockets_closed_total", {"reason": "stalled"}) or 0.0


async def test_a_client_that_does_not_read_is_closed_and_can_resume(stack: Stack, monkeypatch):
    monkeypatch.setattr(socket_module, "OUTBOX_MESSAGES", 16)
    monkeypatch.setattr(socket_module, "OUTBOX_BYTES", 16 * 1024)
    jobs, repeat = 2, 6000
    async with small_buffer_proxy(stack, stall_s=1) as (url, port):
        before = stalled_closes()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        ws = await websockets.connect(url, sock=sock, subprotocols=[f"bearer.{stack.key}"], ping_interval=None,
                                      max_queue=1, compression=None)  # compressed, the repeated text is tiny
        for i in range(jobs):
            body = {"model": "fake-vllm", "messages": [{"role": "user", "content": f"nonce={uuid.uuid4().hex};"
                                                        f"repeat={repeat}"}]}
            await ws.send(json.dumps({"type": "request", "id": f"j{i}", "body": body}))
        deadline = time.monotonic() + 120
        while stalled_closes() == before:  # not reading: the proxy gives up on this client
            assert time.monotonic() < deadline, "the proxy never closed the socket of a client that did not read"
            await asyncio.sleep(0.2)
        job_ids, last_seq, text, received = {}, {}, {}, 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                raw = await asyncio.wait_for(ws.recv(), 30)
                received += len(raw)
                msg = json.loads(raw)
                if msg["type"] == "accepted":
                    job_ids[msg["id"]] = msg["job_id"]
                elif msg["type"] == "event":
                    last_seq[msg["id"]] = msg["seq"]
                    if msg["event"] == "chunk":
                        text[msg["id"]] = text.get(msg["id"], "") + (msg["data"]["choices"][0]["delta"].get("content") or "")
        rcvd = closed.value.rcvd
        assert rcvd is not None and rcvd.code == 1013 and "resume" in rcvd.reason, closed.value
        # The jobs went on; each resumes where this client stopped reading, and nothing is missing.
        assert sorted(job_ids) == [f"j{i}" for i in range(jobs)]
        async with websockets.connect(url, subprotocols=[f"bearer.{stack.key}"]) as again:
            await recv(again)
            for cid, job_id in job_ids.items():
                await again.send(json.dumps({"type": "resume", "id": cid, "job_id": job_id,
                                             "after": last_seq.get(cid, 0)}))
            done: set[str] = set()
            while len(done) < jobs:
                msg = await recv(again)
                if msg["type"] == "done":
                    done.add(msg["id"])
                elif msg["type"] == "event" and msg["event"] == "chunk":
                    text[msg["id"]] = text.get(msg["id"], "") + (msg["data"]["choices"][0]["delta"].get("content") or "")
    from tests.fakes.vllm import REPLY

    whole = " ".join([REPLY] * repeat)
    assert all(text[f"j{i}"] == whole for i in range(jobs))
    # What the stalled client still got is what the small buffers held, a fraction of the output.
    assert received < jobs * len(whole) / 4, (received, jobs * len(whole))
