"""Batches' status in NATS KV (`sy_batches`), so GET and list answer with no worker running.

Written by the create endpoint (validating), the cancel endpoint (cancelling) and the batch
activities (every later state and the request counts); keyed `<sha256(tenant)[:16]>.<batch_id>`."""

from __future__ import annotations

import re
import time
from typing import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from orchestration.files import tenant_hash
from orchestration.streams import ensure_kv, kv_values
from schemas.batches import TERMINAL, Batch, BatchList, BatchRecord
from schemas.errors import NotFound

BATCHES_BUCKET = "sy_batches"
MAX_LIST_LIMIT = 100
_BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
_decoder = msgspec.json.Decoder(BatchRecord)
# Once a batch is cancelling, a late write of an earlier state (a window's counts) keeps it so.
_AFTER_CANCEL = ("validating", "in_progress", "finalizing")


class BatchNotFound(NotFound):
    code = "batch_not_found"

    def __init__(self, batch_id: str):
        super().__init__(f"No batch found with id '{batch_id}'.", param="batch_id")


def _key(tenant: str, batch_id: str) -> str:
    return f"{tenant_hash(tenant)}.{batch_id}"


class BatchStore:
    def __init__(self, kv: KeyValue):
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> "BatchStore":
        return cls(await ensure_kv(js, BATCHES_BUCKET, replicas=replicas, history=1, storage=StorageType.FILE))

    async def create(self, tenant: str, batch: Batch) -> None:
        await self.kv.create(_key(tenant, batch.id), msgspec.json.encode(BatchRecord(batch=batch, tenant=tenant)))

    async def get(self, tenant: str, batch_id: str) -> Batch:
        if not isinstance(batch_id, str) or not _BATCH_ID.match(batch_id):
            raise BatchNotFound(str(batch_id)[:80])
        try:
            entry = await self.kv.get(_key(tenant, batch_id))
        except KeyNotFoundError:
            raise BatchNotFound(batch_id) from None
        record = _decoder.decode(entry.value or b"")
        if record.tenant != tenant:
            raise BatchNotFound(batch_id)
        return record.batch

    async def update(self, tenant: str, batch_id: str, change: Callable[[Batch], Batch | None]) -> Batch:
        """Applies `change` by compare-and-set, re-reading after a lost race; `change` returning None
        leaves the record as it is."""
        key = _key(tenant, batch_id)
        while True:
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                raise BatchNotFound(batch_id) from None
            record = _decoder.decode(entry.value or b"")
            new = change(record.batch)
            if new is None:
                return record.batch
            try:
                await self.kv.update(key, msgspec.json.encode(BatchRecord(batch=new, tenant=tenant)),
                                     last=entry.revision)
                return new
            except KeyWrongLastSequenceError:
                continue

    async def move(self, tenant: str, batch_id: str, status: str, **fields: object) -> Batch:
        """Sets the status (stamping its `<status>_at` once) and `fields`. A terminal batch stays as
        it is; a cancelling one is not moved back to an earlier state."""
        now = int(time.time())

        def change(b: Batch) -> Batch | None:
            if b.status in TERMINAL:
                return None
            new_status = b.status if b.status == "cancelling" and status in _AFTER_CANCEL else status
            stamp = f"{new_status}_at"
            values = dict(fields)
            if hasattr(b, stamp) and getattr(b, stamp) is None and new_status != "validating":
                values[stamp] = now
            return msgspec.structs.replace(b, status=new_status, **values)

        return await self.update(tenant, batch_id, change)

    async def listing(self, tenant: str, after: str | None = None, limit: int = 20) -> BatchList:
        """The tenant's batches, newest first, `limit` at most, after the batch `after`."""
        limit = max(1, min(int(limit), MAX_LIST_LIMIT))
        batches: list[Batch] = sorted(await self._all(tenant), key=lambda b: (b.created_at, b.id), reverse=True)
        if after:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1:] if after in ids else []
        page = batches[:limit]
        return BatchList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                         has_more=len(batches) > limit)

    async def _all(self, tenant: str) -> list[Batch]:
        return [r.batch for r in map(_decoder.decode, await kv_values(self.kv, tenant_hash(tenant)))
                if r.tenant == tenant]
