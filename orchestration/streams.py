"""The JetStream stream that holds every job's events, and small helpers over it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from orchestration.natsconfig import DEFAULT_JOBS_MAX_AGE_S, DEFAULT_JOBS_MAX_BYTES
from schemas.events import JobEvent, event_decoder, is_terminal

T = TypeVar("T")
STREAM = "SWITCHYARD_JOBS"
SUBJECT_PREFIX = "sy.jobs"
TTL_HEADER = "Nats-TTL"  # per-message TTL, seconds (NATS 2.11+, streams with allow_msg_ttl)


def events_ttl(retention_s: int, max_age_s: float) -> int:
    """The TTL of a job's events: the tenant's retention when it is shorter than the stream's max
    age, else 0 (the stream's own limits apply)."""
    return retention_s if 0 < retention_s < max_age_s else 0


def job_subject(job_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{job_id}"


def client_of(js: JetStreamContext) -> NATS:
    """The core connection under a JetStream context (for subscriptions and direct gets)."""
    return js._nc


# What a cluster answers while it is forming or electing a leader: worth asking again shortly.
TRANSIENT_ERRORS = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError,
                    NoStreamResponseError)
SETUP_WITHIN_S = 30.0


async def patiently(call: Callable[[], Awaitable[T]], within_s: float = SETUP_WITHIN_S) -> T:
    """`call()`, again after a transient failure (a JetStream API timeout while a cluster's nodes
    create streams at once, no meta leader yet) until `within_s` has passed."""
    deadline = time.monotonic() + within_s
    delay = 0.25
    while True:
        try:
            return await call()
        except TRANSIENT_ERRORS:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


async def _add_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    """Creates the stream, or brings an existing one to `config`. Its replicas are raised to
    `config`'s (JetStream scales a stream in place), never lowered: a process started without
    SWITCHYARD_NATS_REPLICAS (a CLI on a laptop) must not take copies away; lowering is an operator's
    `nats stream edit`. A stream already as configured is left alone (a NATS user allowed only to
    look it up, a worker in compose, gets by). When nothing works, the creation's error is the one
    raised (e.g. "replicas > 1 not supported in non-clustered mode" for SWITCHYARD_NATS_REPLICAS=3 on
    a single node)."""
    assert config.name is not None
    try:
        existing = (await js.stream_info(config.name)).config
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except Exception as exc:
            try:
                existing = (await js.stream_info(config.name)).config  # created by someone else meanwhile
            except NotFoundError:
                raise exc from None
    wanted = config.evolve(num_replicas=max(existing.num_replicas or 1, config.num_replicas or 1))
    if any(getattr(existing, f.name) != value for f in dataclasses.fields(wanted)
           if (value := getattr(wanted, f.name)) is not None):
        await js.update_stream(wanted)


async def ensure_stream(js: JetStreamContext, *, replicas: int = 1, max_age_s: float = DEFAULT_JOBS_MAX_AGE_S,
                        max_bytes: int = DEFAULT_JOBS_MAX_BYTES) -> None:
    """The job events stream, with `replicas` copies (SWITCHYARD_NATS_REPLICAS: pass the configured
    value, since an existing stream is brought to it) and its limits (SWITCHYARD_JOBS_MAX_*; the
    oldest events go first). Events may carry a shorter TTL of their own (a tenant's `retention_s`)."""
    config = StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        storage=StorageType.FILE,
        max_age=max_age_s,
        max_bytes=max_bytes,
        duplicate_window=120.0,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
        allow_msg_ttl=True,
        num_replicas=replicas,
    )
    await patiently(lambda: _add_or_update(js, config))


async def ensure_kv(js: JetStreamContext, bucket: str, *, replicas: int = 1, **config: Any) -> KeyValue:
    """Opens a KV bucket, creating it with `replicas` copies on first use (safe when several
    processes race to create it). An existing bucket with fewer copies is scaled up to `replicas`
    (never down, as streams); its other settings are left as they are."""
    return await patiently(lambda: _ensure_kv_once(js, bucket, replicas, config))


async def _ensure_kv_once(js: JetStreamContext, bucket: str, replicas: int, config: dict[str, Any]) -> KeyValue:
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(bucket=bucket, replicas=replicas, **config)
        except Exception as exc:
            try:
                kv = await js.key_value(bucket)  # created by someone else meanwhile
            except BucketNotFoundError:
                raise exc from None
    stream = f"KV_{bucket}"
    info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) < replicas:
        await js.update_stream(info.config.evolve(num_replicas=replicas))
    return kv


async def kv_values(kv: KeyValue, prefix: str) -> list[bytes]:
    """The stored values of the keys under `prefix.` (deleted ones left out), read once."""
    watcher = await kv.watch(f"{prefix}.>", ignore_deletes=True)
    out: list[bytes] = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of what is stored
                break
            if entry.value:
                out.append(entry.value)
    finally:
        await watcher.stop()
    return out


async def last_event(js: JetStreamContext, job_id: str) -> JobEvent | None:
    try:
        msg = await js.get_last_msg(STREAM, job_subject(job_id), direct=True)
    except NotFoundError:
        return None
    assert msg.data is not None  # a stored message, if an empty one
    try:
        return event_decoder.decode(msg.data)
    except msgspec.DecodeError:
        return None


class TooManyEvents(Exception):
    """A bounded read met more events (or bytes of them) than it may take."""


async def last_ttl(js: JetStreamContext, job_id: str) -> int:
    """The TTL the job's latest event was stored with (0: none, or no event)."""
    try:
        msg = await js.get_last_msg(STREAM, job_subject(job_id), direct=True)
    except NotFoundError:
        return 0
    raw = (msg.headers or {}).get(TTL_HEADER, "")
    return int(raw) if raw.isdigit() else 0


async def read_stored(nc: NATS, job_id: str, after_seq: int = 0, batch: int = 256,
                      max_events: float = float("inf"), max_bytes: float = float("inf")) -> list[JobEvent]:
    """Every stored event of a job with seq > after_seq, and its terminal event whatever its seq, by
    batched direct gets: no consumer, so nothing is left on the server however the caller ends.
    TooManyEvents past `max_events` events or `max_bytes` bytes of them."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    events: list[JobEvent] = []
    size = 0
    start = 1
    try:
        while True:
            request = msgspec.json.encode({"seq": start, "next_by_subj": job_subject(job_id), "batch": batch})
            await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", request, reply=inbox)
            pending = 0
            while True:
                msg = await sub.next_msg(timeout=5)
                headers = msg.headers or {}
                if headers.get("Status"):  # 204: end of this batch; 404: nothing (more) stored
                    pending = int(headers.get("Nats-Num-Pending", 0)) if headers["Status"] == "204" else 0
                    break
                start = int(headers["Nats-Sequence"]) + 1
                try:
                    event = event_decoder.decode(msg.data)
                except msgspec.DecodeError:
                    continue
                if event.seq > after_seq or is_terminal(event):
                    events.append(event)
                    size += len(msg.data)
                    if len(events) > max_events or size > max_bytes:
                        raise TooManyEvents(job_id)
            if pending <= 0:
                return events
    finally:
        await sub.unsubscribe()


async def read_events(js: JetStreamContext, job_id: str, after_seq: int = 0, **bounds: int) -> list[JobEvent]:
    return await read_stored(client_of(js), job_id, after_seq, **bounds)


async def ensure_secrets_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """Webhook secrets, by job id: kept out of Temporal's history, expired after a week."""
    from orchestration.webhooks import SECRETS_BUCKET

    return await ensure_kv(js, SECRETS_BUCKET, replicas=replicas, ttl=7 * 24 * 3600, storage=StorageType.FILE)


SETTLE_STREAM = "SWITCHYARD_SETTLE"


async def ensure_settle_stream(js: JetStreamContext, *, replicas: int = 1) -> None:
    from nats.js.api import RetentionPolicy

    config = StreamConfig(name=SETTLE_STREAM, subjects=["sy.settle.>"], storage=StorageType.FILE,
                          retention=RetentionPolicy.WORK_QUEUE, duplicate_window=600.0,
                          max_age=7 * 24 * 3600, num_replicas=replicas)
    await patiently(lambda: _add_or_update(js, config))
