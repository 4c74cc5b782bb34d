"""The JetStream stream that holds every job's events, and small helpers over it."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from schemas.events import JobEvent, event_decoder

STREAM = "SWITCHYARD_JOBS"
SUBJECT_PREFIX = "sy.jobs"


def job_subject(job_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{job_id}"


async def ensure_stream(js: JetStreamContext, max_age_s: float = 24 * 3600) -> None:
    config = StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        storage=StorageType.FILE,
        max_age=max_age_s,
        duplicate_window=120.0,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
    )
    try:
        await js.add_stream(config)
    except Exception:
        await js.update_stream(config)


async def last_event(js: JetStreamContext, job_id: str) -> JobEvent | None:
    try:
        msg = await js.get_last_msg(STREAM, job_subject(job_id), direct=True)
    except NotFoundError:
        return None
    try:
        return event_decoder.decode(msg.data)
    except msgspec.DecodeError:
        return None


async def read_events(js: JetStreamContext, job_id: str, after_seq: int = 0) -> list[JobEvent]:
    """Every stored event of a job with seq > after_seq, read up to the last one stored now."""
    try:
        last = await js.get_last_msg(STREAM, job_subject(job_id), direct=True)
    except NotFoundError:
        return []
    sub = await js.subscribe(job_subject(job_id), stream=STREAM, ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    events: list[JobEvent] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            try:
                event = event_decoder.decode(msg.data)
            except msgspec.DecodeError:
                event = None
            if event is not None and event.seq > after_seq:
                events.append(event)
            if msg.metadata.sequence.stream >= last.seq:
                return events
    finally:
        await sub.unsubscribe()


async def ensure_secrets_bucket(js: JetStreamContext):
    """Webhook secrets, by job id: kept out of Temporal's history, expired after a week."""
    from nats.js.api import KeyValueConfig

    from orchestration.webhooks import SECRETS_BUCKET

    try:
        return await js.key_value(SECRETS_BUCKET)
    except Exception:
        return await js.create_key_value(KeyValueConfig(bucket=SECRETS_BUCKET, ttl=7 * 24 * 3600,
                                                        storage=StorageType.FILE))


SETTLE_STREAM = "SWITCHYARD_SETTLE"


async def ensure_settle_stream(js: JetStreamContext) -> None:
    from nats.js.api import RetentionPolicy

    config = StreamConfig(name=SETTLE_STREAM, subjects=["sy.settle.>"], storage=StorageType.FILE,
                          retention=RetentionPolicy.WORK_QUEUE, duplicate_window=600.0,
                          max_age=7 * 24 * 3600)
    try:
        await js.add_stream(config)
    except Exception:
        await js.update_stream(config)
