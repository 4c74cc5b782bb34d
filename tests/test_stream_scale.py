"""The stream path past the server's limits: more streams than nats-server allows consumers, and a
worker that takes a dispatched generation and vanishes before its workflow adopts it."""

from __future__ import annotations

import asyncio
import json

import httpx
import msgspec
import nats
import openai

from orchestration.offers import dispatch_group, dispatch_subject
from orchestration.streams import STREAM
from schemas.jobs import DispatchReply
from tests.conftest import Stack, scenario
from tests.fakes.vllm import REPLY
from tests.jobclient import read_events

FAKE = "fake-vllm"


async def stream_once(client: httpx.AsyncClient, body: dict) -> tuple[int, str, str | None, str]:
    """(status, text, finish_reason, job id) of one streamed chat, read to its end."""
    text, finish, done = [], None, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode(), None, ""
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                text.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
        return (r.status_code if done else -1), "".join(text), finish, r.headers.get("x-job-id", "")


async def test_1200_streams_in_a_row_then_20_more(stack: Stack, temporal):
    headers = {"authorization": f"Bearer {stack.key}"}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    results: list[tuple[int, str, str | None, str]] = []
    async with httpx.AsyncClient(base_url=stack.proxy_url, headers=headers, timeout=120, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(1200):
            queue.put_nowait(i)

        async def user() -> None:
            while not queue.empty():
                queue.get_nowait()
                body = {"model": FAKE, "messages": scenario("ok"), "stream": True,
                        "stream_options": {"include_usage": True}}
                results.append(await stream_once(client, body))

        await asyncio.gather(*(user() for _ in range(16)))
    failures = [r for r in results if r[0] != 200 or r[1] != REPLY or r[2] != "stop"]
    assert len(results) == 1200 and not failures, failures[:3]

    sdk = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    for _ in range(20):
        raw = sdk.chat.completions.with_raw_response.create(model=FAKE, messages=scenario("ok"), stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == REPLY
    last = raw.headers["x-job-id"]

    nc = await nats.connect(stack.nats_url)
    try:
        info = await nc.jetstream().stream_info(STREAM)
        assert info.state.consumer_count == 0  # nothing per stream stays on the server
    finally:
        await nc.close()
    # The engine call went the direct path, and the workflow adopted it there.
    handle = temporal.get_workflow_handle(last)
    await asyncio.wait_for(handle.result(), 180)  # the record may trail the stream under load
    history = await handle.fetch_history()
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    assert scheduled == ["adopt"], [e.event_type for e in history.events]


async def test_a_worker_that_vanishes_before_adopting_its_run(stack: Stack, http: httpx.Client):
    """A 'worker' in the dispatch group takes offers and is never heard of again: each such job
    still completes exactly once, taken over on the model's queue."""
    nc = await nats.connect(stack.nats_url)
    taken: list[str] = []

    async def vanish(msg) -> None:
        taken.append(json.loads(msg.data)["inference"]["job_id"])
        await msg.respond(msgspec.json.encode(DispatchReply(queue="gpu.test.direct.vanished")))

    # Many members in the group, so the vanishing one gets nearly every offer.
    subs = [await nc.subscribe(dispatch_subject("gpu.test"), queue=dispatch_group("gpu.test"), cb=vanish)
            for _ in range(30)]
    await nc.flush()
    try:
        headers = {"authorization": f"Bearer {stack.key}"}
        async with httpx.AsyncClient(base_url=stack.proxy_url, headers=headers, timeout=120) as client:
            outcomes = []
            for _ in range(6):
                body = {"model": FAKE, "messages": scenario("ok"), "stream": True}
                outcomes.append(await stream_once(client, body))
                if len(taken) >= 2:
                    break
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.close()
    assert len(taken) >= 2
    for status, text, finish, job_id in outcomes:
        assert (status, text, finish) == (200, REPLY, "stop")
        if job_id in taken:
            events = read_events(http, job_id)
            running = [json.loads(e["data"]) for e in events if e.get("event") == "job.running"]
            assert [r["attempt"] for r in running] == [2]  # the takeover; the lost run never started
            assert [e["event"] for e in events if e.get("event", "").startswith("job.")][-1] == "job.succeeded"
            assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
