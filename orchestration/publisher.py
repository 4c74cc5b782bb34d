"""Publishes a job's events to JetStream: the first delta at once, later ones coalesced.

Publishing is asynchronous (acks are collected, not awaited one by one); `close()` waits for
every ack so the workflow's sync point only follows events that are stored.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from nats.js import JetStreamContext

from orchestration.streams import job_subject
from orchestration.telemetry import trace_headers
from schemas.events import (
    Cancelled,
    Delta,
    Failed,
    Finished,
    JobEvent,
    Restarted,
    Started,
    event_encoder,
    is_terminal,
    msg_id,
    terminal_msg_id,
)

AUDIO_PIECE_BYTES = 256 * 1024  # base64 makes it ~350 kB: under NATS's 1 MB message limit


class EventPublisher:
    def __init__(self, js: JetStreamContext, job_id: str, attempt: int, first_seq: int,
                 coalesce_s: float = 0.005, on_flush: Callable[[int], None] | None = None,
                 tokens_before: int = 0):
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
        self._acks: list[asyncio.Future[Any]] = []
        self._lock = asyncio.Lock()
        self.deltas_published = 0
        # The attempt's trace context (`traceparent`), sent with every event so readers join the trace.
        self._trace = trace_headers()

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
        acks, self._acks = self._acks, []
        if acks:
            await asyncio.gather(*acks)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _take_role(self) -> str | None:
        role, self._role = self._role, None
        return role

    async def _publish(self, event: JobEvent) -> None:
        mid = terminal_msg_id(self._job_id) if is_terminal(event) else msg_id(self._job_id, self._attempt, event.seq)
        headers = {"Nats-Msg-Id": mid, **self._trace} if self._trace else {"Nats-Msg-Id": mid}
        fut = await self._js.publish_async(self._subject, event_encoder.encode(event), headers=headers)
        self._acks.append(fut)
        if self._on_flush is not None:
            self._on_flush(event.seq)
