"""Server-sent events: framing and a streaming ASGI response that survives client disconnects."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from starlette.types import Receive, Scope, Send

from proxy.http.telemetry import ACTIVE_STREAMS, route_of

# A comment line with no blank line after it: a blank line would end an "event" of its own, and the
# OpenAI SDK dispatches such an empty event (it keeps the last `id:`) and fails to parse its data.
KEEPALIVE = b": keep-alive\n"
DONE = b"data: [DONE]\n\n"


# Every frame a job event can render has a fixed slot, and frame ids are seq * FRAMES_PER_EVENT +
# slot. So each frame has its own id, ids only grow, an id names the same frame on every stream of
# the job (an OpenAI endpoint's own stream shows the chunk, usage and [DONE] slots; the jobs stream
# shows chunk, usage and the named `job.*` event), and a resume can start inside an event's frames.
FRAMES_PER_EVENT = 4
CHUNK, USAGE, LIFECYCLE, END = range(FRAMES_PER_EVENT)
DONE_DATA = b"[DONE]"
Part = tuple[int, bytes | None, bytes]  # (slot, event name or None for an unnamed event, data)


def frame_id(seq: int, slot: int = 0) -> int:
    return seq * FRAMES_PER_EVENT + slot


def resume_seq(after_id: int) -> int:
    """The feed position for a resume after frame `after_id`: the event holding that frame is read
    again, and its frames up to `after_id` are skipped (`render`)."""
    return max(0, after_id // FRAMES_PER_EVENT - 1)


def render(seq: int, parts: list[Part], after_id: int = -1) -> bytes:
    out = []
    for slot, name, data in parts:
        i = frame_id(seq, slot)
        if i > after_id:
            out.append(b"id: %d\n%sdata: %s\n\n" % (i, b"event: " + name + b"\n" if name else b"", data))
    return b"".join(out)


def frame(data: bytes, event_id: int | None = None) -> bytes:
    if event_id is None:
        return b"data: " + data + b"\n\n"
    return b"id: " + str(event_id).encode() + b"\ndata: " + data + b"\n\n"


class SSEResponse:
    """Streams `body` as text/event-stream. A client that goes away stops the relay, never the job."""

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str], on_close=None):
        self.body = body
        self.headers = headers
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        disconnected = asyncio.ensure_future(_wait_disconnect(receive))
        active = ACTIVE_STREAMS.labels(route_of(scope))
        active.inc()
        try:
            async for chunk in self.body:
                if disconnected.done():
                    break
                try:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except OSError:
                    break
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            active.dec()
            disconnected.cancel()
            aclose = getattr(self.body, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.on_close is not None:
                await self.on_close()


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
