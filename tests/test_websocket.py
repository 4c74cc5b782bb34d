"""WebSocket: several requests on one socket, interleaved events, cancel by id, auth never in the URL."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.conftest import MODEL, Stack, scenario


def ws_url(stack: Stack) -> str:
    return stack.proxy_url.replace("http://", "ws://") + "/v1/ws"


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 30))


async def test_two_requests_interleave_and_one_is_cancelled(stack: Stack):
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{stack.key}"]) as ws:
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "request", "id": "slow", "body": {
            "model": "fake-vllm", "messages": scenario("slow")}}))
        await ws.send(json.dumps({"type": "request", "id": "long", "body": {
            "model": MODEL, "max_tokens": 1000, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Write a long essay about rivers."}]}}))
        seen: list[tuple[str, str]] = []
        done: set[str] = set()
        cancelled_sent = False
        text = {"slow": "", "long": ""}
        while done != {"slow", "long"}:
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
