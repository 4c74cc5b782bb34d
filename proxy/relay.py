"""Reads one job's events from JetStream, in order, without gaps or duplicates."""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from orchestration.streams import STREAM, job_subject
from orchestration.telemetry import context_from_headers, tracer
from proxy.telemetry import StreamStats
from schemas.events import Delta, JobEvent, Started, event_decoder, is_terminal


class EventFeed:
    """`model` marks a live relay of a job this request started: it records time to first token and
    inter-token latency. The first message carrying a trace context (the worker's `traceparent`
    header) starts the relay's span in the job's trace; it ends with the feed."""

    def __init__(self, sub, after_seq: int = 0, job_id: str = "", model: str | None = None):
        self._sub = sub
        self.after_seq = after_seq
        self.last_seq = after_seq
        self.ended = False
        self.job_id = job_id
        self._stats = StreamStats(model) if model else None
        self._span: trace.Span | None = None
        self._traced = False

    @classmethod
    async def open(cls, js: JetStreamContext, job_id: str, after_seq: int = 0,
                   model: str | None = None) -> "EventFeed":
        sub = await js.subscribe(job_subject(job_id), stream=STREAM, ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL, inactive_threshold=300.0)
        return cls(sub, after_seq, job_id, model)

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
        """Events that arrived since the last call (at least one); TimeoutError when idle."""
        msg = await self._sub.next_msg(timeout=timeout)
        msgs = [msg]
        while self._sub.pending_msgs:
            msgs.append(await self._sub.next_msg(timeout=None))
        if not self._traced:
            self._join_trace(msg.headers)
        events: list[JobEvent] = []
        tokens = 0
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
            if isinstance(event, Delta):
                tokens += event.tokens or 1
        if tokens and self._stats is not None:
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
        if any(not isinstance(e, Started) for e in batch):
            return collected
