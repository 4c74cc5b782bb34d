"""Reads one job's events from JetStream, in order, without gaps or duplicates."""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from orchestration.streams import STREAM, job_subject
from schemas.events import JobEvent, Started, event_decoder, is_terminal


class EventFeed:
    def __init__(self, sub, after_seq: int = 0):
        self._sub = sub
        self.after_seq = after_seq
        self.last_seq = after_seq
        self.ended = False

    @classmethod
    async def open(cls, js: JetStreamContext, job_id: str, after_seq: int = 0) -> "EventFeed":
        sub = await js.subscribe(job_subject(job_id), stream=STREAM, ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL, inactive_threshold=300.0)
        return cls(sub, after_seq)

    async def next_batch(self, timeout: float) -> list[JobEvent]:
        """Events that arrived since the last call (at least one); TimeoutError when idle."""
        msg = await self._sub.next_msg(timeout=timeout)
        msgs = [msg]
        while self._sub.pending_msgs:
            msgs.append(await self._sub.next_msg(timeout=None))
        events: list[JobEvent] = []
        for m in msgs:
            if self.ended:
                break
            try:
                event = event_decoder.decode(m.data)
            except msgspec.DecodeError:
                continue
            terminal = is_terminal(event)
            # A terminal event past the resume point is always delivered: a cancellation may race
            # the last delta for a sequence number.
            if terminal and event.seq <= self.after_seq:
                self.ended = True  # the client saw the end already
                break
            if event.seq <= self.last_seq and not (terminal and event.seq > self.after_seq):
                continue
            self.last_seq = max(self.last_seq, event.seq)
            self.ended = terminal
            events.append(event)
        return events

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except Exception:
            pass


async def first_batch(feed: EventFeed, deadline_s: float) -> list[JobEvent]:
    """Events up to and including the first that is not a `Started` lifecycle marker."""
    loop = asyncio.get_running_loop()
    collected: list[JobEvent] = []
    end = loop.time() + deadline_s
    while True:
        remaining = end - loop.time()
        if remaining <= 0:
            raise asyncio.TimeoutError
        try:
            batch = await feed.next_batch(timeout=remaining)
        except TimeoutError:
            raise asyncio.TimeoutError from None
        collected += batch
        if any(not isinstance(e, Started) for e in batch):
            return collected
