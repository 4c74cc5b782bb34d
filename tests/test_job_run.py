"""`JobRun`'s branches against a fake event feed and fake starts (no servers): the header wait with
keep-alives, no capacity (503 and the job given up), an in-band failure, and the assembled result."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import msgspec
import pytest
from starlette.requests import Request

from gatekeeping.auth import Principal
from orchestration.catalog import parse_catalog
from proxy.http.sse import KEEPALIVE
from proxy.jobs.prepare import new_streamed_job
from proxy.jobs.render import ChunkWriter, CompletionAssembler
from proxy.jobs.run import JobRun
from schemas.errors import APIError, ServiceUnavailable
from schemas.events import Delta, Failed, Finished, Started
from schemas.jobs import CHAT_ENDPOINT
from schemas.openai import ChatCompletionRequest, ErrorBody, Usage

CATALOG = parse_catalog("""
version: 1
models:
  - id: m1
    engine: {kind: openai, url: "http://127.0.0.1:9/v1"}
    task_queue: gpu.a
    timeouts: {schedule_to_start_s: 0.5}
""")


class FakeFeed:
    """Batches handed out when due: `script` is [(delay_s, [events])]."""

    def __init__(self, script: list[tuple[float, list]]) -> None:
        self.script = list(script)
        self.ended = False
        self.last_seq = 0
        self.closed = 0

    async def next_batch(self, timeout: float) -> list:
        if not self.script:
            await asyncio.sleep(timeout)
            raise TimeoutError
        delay, batch = self.script[0]
        if delay > timeout:
            self.script[0] = (delay - timeout, batch)
            await asyncio.sleep(timeout)
            raise TimeoutError
        await asyncio.sleep(delay)
        self.script.pop(0)
        self.last_seq = batch[-1].seq
        self.ended = any(isinstance(e, (Finished, Failed)) for e in batch)
        return batch

    async def backfill(self) -> None:
        pass

    async def close(self) -> None:
        self.closed += 1


class Harness:
    def __init__(self, script: list[tuple[float, list]], *, stream: bool, header_wait_s: float = 0.1) -> None:
        self.feed = FakeFeed(script)
        self.started: list[str] = []
        self.cancelled: list[str] = []
        raw = {"model": "m1", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        request_struct = msgspec.convert(raw, ChatCompletionRequest)
        self.job = new_streamed_job(Principal("t", "k"), CATALOG.get("m1"), CHAT_ENDPOINT, request_struct, raw)
        self.rt = SimpleNamespace(js=None, temporal=None,
                                  settings=SimpleNamespace(header_wait_s=header_wait_s, keepalive_s=0.05))
        self.request = Request({"type": "http", "method": "POST", "path": CHAT_ENDPOINT, "headers": [],
                                "query_string": b""})

    def run(self) -> JobRun:
        async def start(rt, inp, model, memo, direct=False):
            self.started.append(inp.inference.job_id)
            return True

        async def open_feed(js, job_id, **kwargs):
            return self.feed

        async def cancel(rt, job_id):
            self.cancelled.append(job_id)

        async def not_moving(rt, job_id):
            return False

        run = JobRun(self.rt, self.request, self.job, start=start, open_feed=open_feed, cancel=cancel,
                     moving=not_moving)
        run.queue_grace_s = 0.1
        return run

    def writer(self) -> ChunkWriter:
        return ChunkWriter(self.job.job_id, "m1", self.job.memo.created, False)


def delta(seq: int, text: str) -> Delta:
    return Delta(seq=seq, attempt=1, content=text, tokens=1, total=seq - 1)


def finished(seq: int) -> Finished:
    return Finished(seq=seq, attempt=1, finish_reason="stop", usage=Usage(3, 2, 5), model="m1", created=1)


async def body_of(response) -> bytes:
    out = []
    async for part in response.body:
        out.append(part)
    return b"".join(out)


async def test_a_stream_past_the_header_wait_commits_200_with_keepalives_then_the_text():
    h = Harness([(0.3, [Started(seq=1, attempt=1), delta(2, "Hel")]), (0.0, [delta(3, "lo"), finished(4)])],
                stream=True)
    run = h.run()
    response = await run.respond(h.writer(), CompletionAssembler(h.writer()), admitted=True)
    assert response.headers == {"x-job-id": h.job.job_id} and h.started == [h.job.job_id]
    body = await body_of(response)
    assert body.startswith(KEEPALIVE)  # the status line went out before the first event
    assert b'"Hel"' in body and b'"lo"' in body and body.rstrip().endswith(b"data: [DONE]")
    assert h.cancelled == []


async def test_nobody_taking_the_job_is_a_503_no_capacity_and_the_job_is_given_up():
    h = Harness([], stream=False)
    run = h.run()
    with pytest.raises(ServiceUnavailable) as info:
        await run.respond(h.writer(), CompletionAssembler(h.writer()), admitted=True)
    assert info.value.code == "no_capacity"
    assert info.value.headers["x-job-id"] == h.job.job_id and info.value.headers["retry-after"] == "1"
    assert h.cancelled == [h.job.job_id] and h.feed.closed >= 1


async def test_a_stream_nobody_takes_ends_in_band_with_no_capacity():
    h = Harness([], stream=True, header_wait_s=0.05)
    run = h.run()
    response = await run.respond(h.writer(), CompletionAssembler(h.writer()), admitted=True)
    body = await body_of(response)
    assert b'"code":"no_capacity"' in body and body.rstrip().endswith(b"data: [DONE]")
    assert h.cancelled == [h.job.job_id]


async def test_a_failure_before_any_output_is_the_jobs_own_http_error():
    error = ErrorBody(message="The engine refused the request.", type="invalid_request_error", param=None,
                      code="engine_rejected")
    h = Harness([(0.0, [Started(seq=1, attempt=1), Failed(seq=2, attempt=1, status=400, error=error)])],
                stream=True)
    run = h.run()
    with pytest.raises(APIError) as info:
        await run.respond(h.writer(), CompletionAssembler(h.writer()), admitted=True)
    assert (info.value.status, info.value.code) == (400, "engine_rejected")
    assert info.value.headers["x-job-id"] == h.job.job_id
    assert h.feed.closed >= 1 and h.cancelled == []


async def test_a_non_streamed_job_is_assembled_and_its_feed_closed():
    h = Harness([(0.0, [Started(seq=1, attempt=1), delta(2, "Hel")]), (0.05, [delta(3, "lo"), finished(4)])],
                stream=False)
    run = h.run()
    response = await run.respond(h.writer(), CompletionAssembler(h.writer()), admitted=True)
    completion = msgspec.json.decode(response.body)
    assert completion["choices"][0]["message"]["content"] == "Hello"
    assert completion["usage"]["total_tokens"] == 5 and response.headers["x-job-id"] == h.job.job_id
    assert h.feed.closed == 1
