"""Reads one job's events from JetStream, in order, without gaps or duplicates."""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from orchestration.streams import client_of, job_subject, last_event, read_stored
from orchestration.telemetry import context_from_headers, tracer
from schemas.errors import InvalidRequest
from proxy.http.telemetry import StreamStats
from schemas.events import Delta, JobEvent, Started, event_decoder, is_terminal


class EventFeed:
    """A core NATS subscription on the job's subject: the server keeps nothing for it but the
    interest, gone with `close()` or the connection. Events are ordered and deduplicated by their
    `seq`; what the subscription did not see (events before it opened, a gap after a slow-consumer
    drop or a reconnect, a quiet spell) is read back from the stream by direct gets.

    `model` marks a live relay of a job this request started: it records time to first token and
    inter-token latency. The first message carrying a trace context (the worker's `traceparent`
    header) starts the relay's span in the job's trace; it ends with the feed."""

    GAP_RETRIES = 5

    def __init__(self, js: JetStreamContext, sub, after_seq: int = 0, job_id: str = "", model: str | None = None):
        self._js = js
        self._sub = sub
        self.after_seq = after_seq
        self.last_seq = after_seq
        self.ended = False
        self.job_id = job_id
        self._ready: list[JobEvent] = []
        self._held: list[JobEvent] = []  # live events past a gap, until the stream fills it
        self._stats = StreamStats(model) if model else None
        self._span: trace.Span | None = None
        self._traced = False

    @classmethod
    async def open(cls, js: JetStreamContext, job_id: str, after_seq: int = 0,
                   model: str | None = None, fresh: bool = False) -> "EventFeed":
        """`fresh`: the job is being started now, so nothing is stored yet to read back."""
        sub = await client_of(js).subscribe(job_subject(job_id))
        feed = cls(js, sub, after_seq, job_id, model)
        if not fresh:
            try:
                await feed.backfill()
            except BaseException:
                await feed.close()
                raise
        return feed

    async def backfill(self) -> None:
        """Takes every stored event past the last one seen."""
        for event in await read_stored(client_of(self._js), self.job_id, self.last_seq):
            self._accept(event)

    def _accept(self, event: JobEvent) -> None:
        if self.ended:
            return
        terminal = is_terminal(event)
        # A terminal event past the resume point is always delivered: a cancellation may race
        # the last delta for a sequence number.
        if terminal and event.seq <= self.after_seq:
            self.ended = True  # the client saw the end already
            return
        if event.seq <= self.last_seq and not (terminal and event.seq > self.after_seq):
            return
        self.last_seq = max(self.last_seq, event.seq)
        self.ended = terminal
        self._ready.append(event)

    async def _take_live(self, events: list[JobEvent]) -> None:
        for event in events:
            if event.seq > self.last_seq + 1 and not self.ended:
                self._held.append(event)
            else:
                self._accept(event)
        for attempt in range(self.GAP_RETRIES):
            if not self._held or self.ended:
                break
            await self.backfill()
            if min(e.seq for e in self._held) <= self.last_seq + 1:
                break
            await asyncio.sleep(0.01 * (attempt + 1))  # the stream may store a message after core delivery
        held, self._held = sorted(self._held, key=lambda e: e.seq), []
        for event in held:
            self._accept(event)

    async def _newer_stored(self) -> bool:
        """After a quiet spell: whether the stream holds events the subscription missed."""
        last = await last_event(self._js, self.job_id)
        if last is None or (last.seq <= self.last_seq and not (is_terminal(last) and not self.ended)):
            return False
        await self.backfill()
        return bool(self._ready)

    def _join_trace(self, headers) -> None:
        self._traced = True
        context = context_from_headers(headers)
        if context is None:
            return
        here = trace.get_current_span().get_span_context()
        self._span = tracer().start_span(
            "relay job events", context=context, kind=SpanKind.CONSUMER,
            links=[Link(here)] if here.is_valid else None,
            attributes={"messaging.system": "nats", "messaging.destination.name": job_subject(self.job_id),
                        "switchyard.job_id": self.job_id, "switchyard.after_seq": self.after_seq})

    def _end_span(self) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.set_attribute("switchyard.last_seq", self.last_seq)
            span.end()

    async def next_batch(self, timeout: float) -> list[JobEvent]:
        """Events that arrived since the last call (at least one); TimeoutError when idle. Empty
        once the feed has ended."""
        while not self._ready and not self.ended:
            try:
                msg = await self._sub.next_msg(timeout=timeout)
            except TimeoutError:
                if self.ended or not await self._newer_stored():
                    raise
                break
            msgs = [msg]
            while self._sub.pending_msgs:
                msgs.append(await self._sub.next_msg(timeout=None))
            if not self._traced:
                self._join_trace(msg.headers)
            events = []
            for m in msgs:
                try:
                    events.append(event_decoder.decode(m.data))
                except msgspec.DecodeError:
                    continue
            await self._take_live(events)
        events, self._ready = self._ready, []
        if self._stats is not None:
            tokens = sum((e.tokens or 1) for e in events if isinstance(e, Delta))
            if tokens:
                self._stats.deltas(tokens)
        if self.ended:
            self._end_span()
        return events

    async def close(self) -> None:
        self._end_span()
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
        if feed.ended or any(not isinstance(e, Started) for e in batch):
            return collected


def parse_event_id(raw: object, param: str = "after") -> int:
    """A client's resume point (`Last-Event-ID`, `?after=`, a WebSocket `after`): a frame id."""
    try:
        value = int(str(raw).strip()) if not isinstance(raw, bool) else -1
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 53:
        raise InvalidRequest("Last-Event-ID / after must be an event id (a non-negative integer).", param=param)
    return value
