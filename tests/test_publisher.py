"""EventPublisher against a real nats-server when acks go missing (as while a NATS cluster elects a
new stream leader): events JetStream did not store are published again by `close()`, in order and
once; when a later event is stored already, the attempt fails instead of storing out of order."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.errors import BadRequestError, NoStreamResponseError

from orchestration import publisher as publisher_module
from orchestration.publisher import EventPublisher, EventsNotStored
from orchestration.streams import ensure_stream, read_events
from schemas.events import Delta, Started, event_decoder

WORDS = ["one", " two", " three", " four"]


class Lossy:
    """A JetStream context that loses some publishes: `drop` are never stored (the ack is a "no
    responders" error), `unacked` are stored but their ack never comes, `refuse` are refused."""

    def __init__(self, js, drop: set[int] = frozenset(), unacked: set[int] = frozenset(),
                 refuse: set[int] = frozenset()):
        self._js = js
        self._nc = js._nc
        self.drop, self.unacked, self.refuse = set(drop), set(unacked), set(refuse)

    def __getattr__(self, name):
        return getattr(self._js, name)

    async def publish_async(self, subject, payload=b"", headers=None, **kw):
        seq = event_decoder.decode(payload).seq
        ack = asyncio.get_running_loop().create_future()
        if seq in self.drop:
            ack.set_exception(NoStreamResponseError())
            return ack
        if seq in self.refuse:
            ack.set_exception(BadRequestError(code=400, description="refused"))
            return ack
        if seq in self.unacked:
            await self._js.publish(subject, payload, headers=headers)
            return ack
        return await self._js.publish_async(subject, payload, headers=headers, **kw)


async def run_attempt(js, job_id: str) -> None:
    pub = EventPublisher(js, job_id, attempt=1, first_seq=0)
    await pub.started(resumed_from=0)  # seq 1
    for word in WORDS:  # seqs 2..5
        await pub.add_text(word)
        await pub.flush()
    await pub.close()


@pytest.fixture
async def js(nats_url, monkeypatch):
    monkeypatch.setattr(publisher_module, "ACK_WAIT_S", 0.3)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js)
    yield js
    await nc.close()


async def test_lost_events_are_stored_again_in_order(js):
    job_id = "job-" + uuid.uuid4().hex
    await run_attempt(Lossy(js, drop={3, 4, 5}), job_id)
    events = await read_events(js, job_id)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert isinstance(events[0], Started)
    assert "".join(e.content for e in events if isinstance(e, Delta)) == "".join(WORDS)


async def test_an_event_stored_without_its_ack_is_not_stored_twice(js):
    job_id = "job-" + uuid.uuid4().hex
    await run_attempt(Lossy(js, drop={5}, unacked={3, 4}), job_id)
    assert [e.seq for e in await read_events(js, job_id)] == [1, 2, 3, 4, 5]


async def test_a_gap_before_a_stored_event_fails_the_attempt(js):
    job_id = "job-" + uuid.uuid4().hex
    with pytest.raises(EventsNotStored):
        await run_attempt(Lossy(js, drop={3}), job_id)
    assert [e.seq for e in await read_events(js, job_id)] == [1, 2, 4, 5]  # nothing stored out of order


async def test_an_event_refused_for_good_fails_the_attempt_at_once(js):
    job_id = "job-" + uuid.uuid4().hex
    with pytest.raises(BadRequestError):
        await run_attempt(Lossy(js, drop={4}, refuse={5}), job_id)
    assert [e.seq for e in await read_events(js, job_id)] == [1, 2, 3]
