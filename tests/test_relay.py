"""The relay against a real nats-server: no server-side state per stream, exact order and resume,
gaps and missed endings filled from the stream; and frame ids that name one frame each."""

from __future__ import annotations

import asyncio
import random
import re

import nats
import pytest

from orchestration.streams import STREAM, client_of, ensure_stream, job_subject
from proxy.jobs.render import ChunkWriter
from proxy.jobs.relay import EventFeed, parse_event_id
from schemas.errors import InvalidRequest
from proxy.jobs.api import job_parts
from proxy.http.sse import render, resume_seq
from schemas.events import Delta, Failed, Finished, Started, event_encoder
from schemas.openai import ErrorBody, Usage


@pytest.fixture
async def js(nats_url):
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js)
    yield js
    await nc.close()


def events_of(n: int) -> list:
    out = [Started(seq=1, attempt=1)]
    out += [Delta(seq=i, attempt=1, content=f"t{i} ", tokens=1, total=i - 1) for i in range(2, n)]
    out.append(Finished(seq=n, attempt=1, finish_reason="stop", usage=Usage(1, n - 2, n - 1), model="m", created=1))
    return out


async def publish(js, job_id: str, events: list) -> None:
    for e in events:
        await js.publish(job_subject(job_id), event_encoder.encode(e))


async def drain(feed: EventFeed, timeout: float = 2.0) -> list:
    got = []
    while True:
        got += await feed.next_batch(timeout=timeout)
        if feed.ended:
            return got
    return got


async def test_thousands_of_feeds_leave_nothing_on_the_server(js):
    await publish(js, "leak-0", events_of(6))
    before = len(client_of(js)._subs)
    for _ in range(1500):  # the server refused the 1,001st consumer before
        feed = await EventFeed.open(js, "leak-0", after_seq=random.randrange(0, 5))
        assert (await drain(feed))[-1].seq == 6
        await feed.close()
    info = await js.stream_info(STREAM)
    assert info.state.consumer_count == 0
    assert len(client_of(js)._subs) == before


async def test_live_events_after_a_gap_are_filled_from_the_stream(js):
    events = events_of(10)
    feed = await EventFeed.open(js, "gap-1", fresh=True)
    await publish(js, "gap-1", events[:4])
    # Events 5 and 6 reach the stream while the subscription misses them (a slow-consumer drop).
    await feed._sub.unsubscribe()
    await publish(js, "gap-1", events[4:6])
    feed._sub = await client_of(js).subscribe(job_subject("gap-1"))
    await publish(js, "gap-1", events[6:])
    assert [e.seq for e in await drain(feed)] == list(range(1, 11))
    await feed.close()


async def test_an_ending_the_subscription_missed_is_found_when_quiet(js):
    feed = await EventFeed.open(js, "quiet-1", fresh=True)
    await feed._sub.unsubscribe()
    await publish(js, "quiet-1", events_of(5))
    feed._sub = await client_of(js).subscribe(job_subject("quiet-1"))
    assert [e.seq for e in await drain(feed, timeout=0.3)] == [1, 2, 3, 4, 5]
    await feed.close()


async def test_duplicates_and_resume_points(js):
    events = events_of(8)
    await publish(js, "dup-1", events[:5])
    feed = await EventFeed.open(js, "dup-1", after_seq=2)
    await publish(js, "dup-1", events[3:5])  # a retried publish, stored and seen twice
    await publish(js, "dup-1", events[5:])
    assert [e.seq for e in await drain(feed)] == [3, 4, 5, 6, 7, 8]
    await feed.close()
    ended = await EventFeed.open(js, "dup-1", after_seq=8)  # after the end: nothing, at once
    assert await asyncio.wait_for(ended.next_batch(timeout=5), 1) == [] and ended.ended
    await ended.close()


def test_every_frame_has_its_own_growing_id_and_resume_is_exact():
    events = events_of(6)
    failed = [Started(seq=1, attempt=1), Delta(seq=2, attempt=1, content="a", tokens=1, total=1),
              Failed(seq=3, attempt=1, status=503, error=ErrorBody(message="down", type="server_error"))]
    for stream_events in (events, failed):
        for include_usage in (True, False):
            for jobs_stream in (False, True):
                def whole(after: int = -1) -> str:
                    writer = ChunkWriter("chatcmpl-x", "m", 1, include_usage, after)
                    if jobs_stream:
                        return b"".join(render(e.seq, job_parts(e, writer), after)
                                        for e in stream_events if e.seq >= resume_seq(after) + 1).decode()
                    return b"".join(writer.frames(e) for e in stream_events
                                    if e.seq >= resume_seq(after) + 1).decode()

                full = whole()
                frames = [f for f in full.split("\n\n") if f]
                ids = [int(re.match(r"id: (\d+)", f).group(1)) for f in frames]
                assert ids == sorted(set(ids)) and len(ids) == len(frames)
                if not jobs_stream and stream_events is events:
                    assert frames[-1].endswith("data: [DONE]")
                    assert ('"usage"' in frames[-2]) == include_usage
                for cut, after in enumerate(ids):
                    assert [f for f in whole(after).split("\n\n") if f] == frames[cut + 1:]


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "", "9" * 30])
def test_a_bad_resume_point_is_a_400(raw):
    with pytest.raises(InvalidRequest):
        parse_event_id(raw)
