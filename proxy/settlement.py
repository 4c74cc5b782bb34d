"""Settling token reservations when jobs end, whichever proxy replica admitted them.

A finished workflow publishes `{admission, actual_tokens}` to `sy.settle.<job>` (stream
SWITCHYARD_SETTLE, work-queue retention, de-duplicated by message id); every proxy runs a pull
consumer of one shared durable, so each settlement is applied once by one live replica, even if the
admitting replica is gone.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from nats.js import JetStreamContext

from orchestration.streams import SETTLE_STREAM, ensure_settle_stream
from proxy.limits import Admission, Limiter
from schemas.jobs import Settlement

log = structlog.get_logger("switchyard.settlement")
_decoder = msgspec.json.Decoder(Settlement)


async def run_settler(js: JetStreamContext, limiter: Limiter) -> None:
    await ensure_settle_stream(js)
    sub = await js.pull_subscribe("sy.settle.>", durable="settler", stream=SETTLE_STREAM)
    while True:
        try:
            msgs = await sub.fetch(32, timeout=5)
        except (TimeoutError, asyncio.TimeoutError):
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("settler_fetch_failed", error_type=type(exc).__name__)
            await asyncio.sleep(1)
            continue
        for msg in msgs:
            try:
                s = _decoder.decode(msg.data)
                admission = msgspec.convert(s.admission, Admission)
                if await limiter.settle(admission, s.actual_tokens):
                    await msg.ack()
                else:
                    await msg.nak(delay=2)
            except msgspec.ValidationError:
                await msg.term()  # malformed: never settle it
