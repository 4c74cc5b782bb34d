"""Publishes a job's events to JetStream: the first delta at once, later ones coalesced.

Publishing is asynchronous (acks are collected, not awaited one by one); `close()` waits for
every ack so the workflow's sync point only follows events that are stored.

An event whose ack is an error or never comes (the stream's leader died with it in flight, or the
stream had no leader for the few seconds of an election on a NATS cluster) is published again by
`close()`, with the same message id and in order, until it is stored or `REPUBLISH_WITHIN_S` has
passed. That is done only when no later event of the job is stored (the stored events then stay in
seq order); otherwise `close()` raises `EventsNotStored` and the attempt fails, as it would have.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from orchestration.streams import STREAM, TRANSIENT_ERRORS, TTL_HEADER, job_subject, read_events
from orchestration.telemetry import trace_headers
from schemas.events import (
    Cancelled,
    Delta,
    Failed,
    Finished,
    JobEvent,
    Restarted,
    Started,
    event_decoder,
    event_encoder,
    is_terminal,
    msg_id,
    terminal_msg_id,
)

log = structlog.get_logger("switchyard.publisher")
AUDIO_PIECE_BYTES = 256 * 1024  # base64 makes it ~350 kB: under NATS's 1 MB message limit
ACK_WAIT_S = 5.0           # for the acks still outstanding when `close()` is called
REPUBLISH_WITHIN_S = 30.0  # covers a stream leader election (a few seconds) with room to spare


class EventsNotStored(Exception):
    """Events of the attempt that JetStream did not store, and could not be stored again in order."""


class _PartialRead(Exception):
    """The job's stored events were read only in part (the stream did not answer for all)."""


@dataclass
class _Sent:
    seq: int
    data: bytes
    headers: dict[str, str]
    ack: asyncio.Future[Any]

    def stored(self) -> bool:
        return self.ack.done() and not self.ack.cancelled() and self.ack.exception() is None


class EventPublisher:
    def __init__(self, js: JetStreamContext, job_id: str, attempt: int, first_seq: int,
                 coalesce_s: float = 0.005, on_flush: Callable[[int], None] | None = None,
                 tokens_before: int = 0, ttl_s: int = 0):
        self._js = js
        self._job_id = job_id
        self._subject = job_subject(job_id)
        self._attempt = attempt
        self._seq = first_seq
        self._coalesce_s = coalesce_s
        self._on_flush = on_flush
        self._content: list[str] = []
        self._reasoning: list[str] = []
        # The job's first delta names the role; a continuing attempt's deltas do not.
        self._role: str | None = "assistant" if tokens_before == 0 else None
        self._total = tokens_before
        self._tokens = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sent: deque[_Sent] = deque()  # events published and not yet known to be stored
        self._lock = asyncio.Lock()
        self.deltas_published = 0
        # The attempt's trace context (`traceparent`), sent with every event so readers join the trace.
        self._trace = trace_headers()
        # Per-message TTL (a tenant's retention shorter than the stream's max age); 0: the stream's.
        self._ttl = {TTL_HEADER: str(ttl_s)} if ttl_s > 0 else {}

    @property
    def seq(self) -> int:
        return self._seq

    async def started(self, resumed_from: int, stage: str = "") -> None:
        async with self._lock:
            await self._publish(Started(seq=self._next(), attempt=self._attempt, resumed_from=resumed_from,
                                        stage=stage))

    async def restarted(self, reason: str) -> None:
        async with self._lock:
            await self._publish(Restarted(seq=self._next(), attempt=self._attempt, reason=reason))

    async def add_text(self, content: str, reasoning: str = "", role: str | None = None) -> None:
        if content or reasoning:
            self._tokens += 1
        if content:
            self._content.append(content)
        if reasoning:
            self._reasoning.append(reasoning)
        if not (self._content or self._reasoning):
            return
        if self.deltas_published == 0:
            await self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._coalesce_s, self._flush_soon)

    async def add_tool_calls(self, tool_calls: list[dict[str, Any]]) -> None:
        await self.flush()
        async with self._lock:
            self._total += 1
            await self._publish(Delta(seq=self._next(), attempt=self._attempt, tokens=1, total=self._total,
                                      tool_calls=tool_calls, role=self._take_role()))
            self.deltas_published += 1

    async def add_audio(self, data: bytes) -> None:
        """Audio bytes, published at once in pieces small enough for one message each."""
        await self.flush()
        async with self._lock:
            for i in range(0, len(data), AUDIO_PIECE_BYTES):
                await self._publish(Delta(seq=self._next(), attempt=self._attempt,
                                          audio=data[i:i + AUDIO_PIECE_BYTES]))
                self.deltas_published += 1

    def _flush_soon(self) -> None:
        self._timer = None
        asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not (self._content or self._reasoning):
                return
            self._total += self._tokens
            event = Delta(seq=self._next(), attempt=self._attempt, tokens=self._tokens, total=self._total,
                          content="".join(self._content), reasoning="".join(self._reasoning),
                          role=self._take_role())
            self._tokens = 0
            self._content.clear()
            self._reasoning.clear()
            await self._publish(event)
            self.deltas_published += 1

    async def finish(self, event_fields: dict[str, Any]) -> int:
        await self.flush()
        async with self._lock:
            await self._publish(Finished(seq=self._next(), attempt=self._attempt, **event_fields))
        await self.close()
        return self._seq

    async def fail(self, status: int, error: Any) -> int:
        await self.flush()
        async with self._lock:
            await self._publish(Failed(seq=self._next(), attempt=self._attempt, status=status, error=error))
        await self.close()
        return self._seq

    async def cancelled(self, reason: str) -> int:
        await self.flush()
        async with self._lock:
            await self._publish(Cancelled(seq=self._next(), attempt=self._attempt, reason=reason))
        await self.close()
        return self._seq

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sent, self._sent = self._sent, deque()
        if not sent:
            return
        await asyncio.wait([s.ack for s in sent], timeout=ACK_WAIT_S)
        missing = [s for s in sent if not s.stored()]
        refused = None
        for s in missing:
            if not s.ack.done():
                s.ack.cancel()  # no ack: lost with a node, or still on its way; checked below
            elif not s.ack.cancelled() and not isinstance(s.ack.exception(), TRANSIENT_ERRORS):
                refused = refused or s.ack.exception()
        if refused is not None:  # JetStream refused an event for good: no use sending it again
            raise refused
        if missing:
            await self._store_again(missing)

    async def _store_again(self, missing: list[_Sent]) -> None:
        deadline = time.monotonic() + REPUBLISH_WITHIN_S
        stored = await self._retrying(deadline, lambda: self._stored_seqs())
        again = 0
        for s in missing:  # in seq order
            if s.seq in stored:  # stored after all, its ack lost
                continue
            if any(seq > s.seq for seq in stored):
                raise EventsNotStored(f"event {s.seq} of job {self._job_id} is missing and later ones are stored")
            await self._retrying(deadline, functools.partial(self._js.publish, self._subject, s.data,
                                                             headers=s.headers, timeout=2.0))
            again += 1
        log.warning("events_published_again", job_id=self._job_id, unacked=len(missing), published=again)

    async def _stored_seqs(self) -> set[int]:
        """The seqs of the job's stored events; raises unless the stream answered for all of them."""
        try:
            last = await self._js.get_last_msg(STREAM, self._subject, direct=True)
        except NotFoundError:
            return set()
        seqs = {e.seq for e in await read_events(self._js, self._job_id)}
        assert last.data is not None  # a stored message, if an empty one
        if event_decoder.decode(last.data).seq not in seqs:
            raise _PartialRead()
        return seqs

    async def _retrying(self, deadline: float, call: Callable[[], Any]) -> Any:
        delay = 0.2
        while True:
            try:
                return await call()
            except (*TRANSIENT_ERRORS, _PartialRead) as exc:  # no stream leader yet, a timeout, a reconnect
                if time.monotonic() + delay > deadline:
                    raise EventsNotStored(f"events of job {self._job_id} not stored: {type(exc).__name__}") from exc
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _take_role(self) -> str | None:
        role, self._role = self._role, None
        return role

    async def _publish(self, event: JobEvent) -> None:
        mid = terminal_msg_id(self._job_id) if is_terminal(event) else msg_id(self._job_id, self._attempt, event.seq)
        headers = {"Nats-Msg-Id": mid, **self._trace, **self._ttl}
        data = event_encoder.encode(event)
        fut = await self._js.publish_async(self._subject, data, headers=headers)
        while self._sent and self._sent[0].stored():  # only what may need publishing again is kept
            self._sent.popleft()
        self._sent.append(_Sent(event.seq, data, headers, fut))
        if self._on_flush is not None:
            self._on_flush(event.seq)
