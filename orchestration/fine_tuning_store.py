"""Fine-tuning jobs' records and events: records in KV bucket `sy_finetune` (key
`<sha256(tenant)[:16]>.<job id>`), events on JetStream subjects `fine_tuning.job.<job id>`
(stream SWITCHYARD_FINETUNE). The workflow writes both through its activities; the proxy reads them."""

from __future__ import annotations

import builtins
import hashlib

import msgspec
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from orchestration.streams import _add_or_update, ensure_kv, kv_values, patiently
from schemas.fine_tuning import (
    EVENT_SUBJECT_PREFIX,
    FINETUNE_BUCKET,
    FINETUNE_STREAM,
    FineTuningJobEvent,
    JobRecord,
    JobUpdate,
    event_subject,
)

EVENTS_MAX_AGE_S = 30 * 24 * 3600
_record = msgspec.json.Decoder(JobRecord)
_event = msgspec.json.Decoder(FineTuningJobEvent)
_encoder = msgspec.json.Encoder()


def tenant_prefix(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:16]


def event_id(job_id: str, key: str) -> str:
    return f"ftevent-{job_id.removeprefix('ftjob-')}-{key}"


def checkpoint_id(job_id: str, step: int) -> str:
    return f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}"


class FineTuningStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue):
        self.js = js
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> "FineTuningStore":
        kv = await ensure_kv(js, FINETUNE_BUCKET, replicas=replicas, storage=StorageType.FILE)
        config = StreamConfig(name=FINETUNE_STREAM, subjects=[f"{EVENT_SUBJECT_PREFIX}.>"],
                              storage=StorageType.FILE, max_age=EVENTS_MAX_AGE_S, duplicate_window=600.0,
                              allow_direct=True, num_replicas=replicas)
        await patiently(lambda: _add_or_update(js, config))
        return cls(js, kv)

    @staticmethod
    def key(tenant: str, job_id: str) -> str:
        return f"{tenant_prefix(tenant)}.{job_id}"

    async def create(self, record: JobRecord) -> None:
        await self.kv.create(self.key(record.tenant, record.job.id), _encoder.encode(record))

    async def get(self, tenant: str, job_id: str) -> JobRecord | None:
        try:
            entry = await self.kv.get(self.key(tenant, job_id))
        except KeyNotFoundError:
            return None
        return _record.decode(entry.value) if entry.value else None

    async def list(self, tenant: str) -> list[JobRecord]:
        """The tenant's jobs, newest first."""
        records = [r for r in map(_record.decode, await kv_values(self.kv, tenant_prefix(tenant)))
                   if r.tenant == tenant]
        return sorted(records, key=lambda r: (r.job.created_at, r.job.id), reverse=True)

    async def apply(self, update: JobUpdate) -> JobRecord:
        """Publishes the step's event (once: the event id is the message id), then applies the step to
        the job's record (compare-and-set; a step already applied is skipped). In that order, a client
        that reads a status has its event in the list already."""
        eid = event_id(update.job_id, update.event_key or str(update.seq))
        event = FineTuningJobEvent(id=eid, created_at=update.at,
                                   level=update.level, message=update.message, type=update.type,
                                   data=update.data)
        await self.js.publish(event_subject(update.job_id), _encoder.encode(event), stream=FINETUNE_STREAM,
                              headers={"Nats-Msg-Id": event.id})
        return await self._apply(update)

    async def _apply(self, update: JobUpdate) -> JobRecord:
        key = self.key(update.tenant, update.job_id)
        while True:
            entry = await self.kv.get(key)
            assert entry.value is not None and entry.revision is not None
            record = _record.decode(entry.value)
            if 0 < update.seq <= record.last_seq:
                return record
            job = record.job
            changes: dict = {}
            if update.status is not None:
                changes["status"] = update.status
                if update.status in ("succeeded", "failed", "cancelled"):
                    changes["finished_at"] = update.at
            for name in ("fine_tuned_model", "trained_tokens", "error"):
                if getattr(update, name) is not None:
                    changes[name] = getattr(update, name)
            checkpoints = record.checkpoints
            if update.checkpoint is not None:
                checkpoints = [c for c in checkpoints if c.id != update.checkpoint.id] + [update.checkpoint]
            new = JobRecord(tenant=record.tenant, job=msgspec.structs.replace(job, **changes),
                            checkpoints=checkpoints, last_seq=max(record.last_seq, update.seq))
            try:
                await self.kv.update(key, _encoder.encode(new), last=entry.revision)
                return new
            except KeyWrongLastSequenceError:
                continue

    async def events(self, job_id: str) -> builtins.list[FineTuningJobEvent]:
        """The job's events, oldest first."""
        out: builtins.list[FineTuningJobEvent] = []
        seq = 1
        while True:
            try:
                msg = await self.js.get_msg(FINETUNE_STREAM, seq=seq, subject=event_subject(job_id),
                                            next=True, direct=True)
            except NotFoundError:
                return out
            if msg.data:
                out.append(_event.decode(msg.data))
            assert msg.seq is not None
            seq = msg.seq + 1
