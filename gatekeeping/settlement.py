"""Settling token reservations when jobs end, whichever proxy replica admitted them.

A finished workflow publishes `{admission, actual_tokens}` to `sy.settle.<job>` (stream
SWITCHYARD_SETTLE, work-queue retention, de-duplicated by message id); every proxy runs a pull
consumer of one shared durable, so each settlement is applied once by one live replica, even if the
admitting replica is gone.
"""

from __future__ import annotations

import asyncio

from collections.abc import Awaitable

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from orchestration.streams import SETTLE_STREAM, ensure_settle_stream
from gatekeeping.buckets import Admission
from gatekeeping.limits import Limiter
from schemas.jobs import Settlement

log = structlog.get_logger("switchyard.settlement")
_decoder = msgspec.json.Decoder(Settlement)


async def run_settler(js: JetStreamContext, limiter: Limiter, *, replicas: int = 1) -> None:
    """Settles for as long as the proxy runs: a failure of the consumer itself (NATS down, the
    durable gone) is logged and the loop starts again after a backoff. `replicas`: the settle
    stream's (SWITCHYARD_NATS_REPLICAS), as every other stream's."""
    delay = 0.5
    while True:
        try:
            await _settle_forever(js, limiter, replicas)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("settler_restarting", error_type=type(exc).__name__, delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)


async def _settle_forever(js: JetStreamContext, limiter: Limiter, replicas: int) -> None:
    await ensure_settle_stream(js, replicas=replicas)
    sub = await js.pull_subscribe("sy.settle.>", durable="settler", stream=SETTLE_STREAM)
    while True:
        try:
            msgs = await sub.fetch(32, timeout=5)
        except (TimeoutError, asyncio.TimeoutError):
            continue
        for msg in msgs:
            await _settle_one(msg, limiter)


async def _settle_one(msg: Msg, limiter: Limiter) -> None:
    """Applies one settlement. Settling is idempotent per admission and scope (Limiter.settle), so a
    redelivered message charges nothing twice; an undecodable one is dropped for good."""
    try:
        s = _decoder.decode(msg.data)
        admission = msgspec.convert(s.admission, Admission)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("settlement_malformed")
        await _quietly(msg.term())
        return
    if await limiter.settle(admission, s.actual_tokens):
        await _quietly(msg.ack())
    else:
        await _quietly(msg.nak(delay=2))


async def _quietly(reply: Awaitable[None]) -> None:
    try:
        await reply
    except Exception as exc:  # the message comes back after its ack wait; settling it again is a no-op
        log.warning("settlement_ack_failed", error_type=type(exc).__name__)
