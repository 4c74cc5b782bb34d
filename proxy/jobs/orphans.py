"""Sweeping orphaned inputs from the object store: audio uploads (`<job>/upload-*`) and claim-checked
request bodies (`<job>/request*.json`) older than a TTL whose job does not exist (its start failed or
was refused after the write) or has ended (its workflow closed, after its terminal event and its
settlement). Results are left to the store's retention (orchestration.objectstore).

Every proxy runs the sweep every `SWITCHYARD_ORPHAN_SWEEP_S`; a compare-and-set turn in KV bucket
`sy_sweeps` lets one replica sweep per interval (the deletes are idempotent anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from orchestration.objectstore import FILES_PREFIX, ObjectStore
from orchestration.streams import ensure_kv

log = structlog.get_logger("switchyard.orphans")
INPUT_NAMES = ("upload-", "request")
SWEEPS_BUCKET = "sy_sweeps"
TURN_KEY = "orphans"
MISSING, LIVE, ENDED, UNKNOWN = "missing", "live", "ended", "unknown"
JobState = Callable[[str], Awaitable[str]]


def temporal_job_state(temporal: Client) -> JobState:
    async def state(job_id: str) -> str:
        try:
            desc = await temporal.get_workflow_handle(job_id).describe()
        except RPCError as exc:
            return MISSING if exc.status == RPCStatusCode.NOT_FOUND else UNKNOWN
        return LIVE if desc.status == WorkflowExecutionStatus.RUNNING else ENDED

    return state


async def sweep_orphans(store: ObjectStore, job_state: JobState, ttl_s: float, now: float | None = None) -> int:
    """Deletes the orphaned inputs older than `ttl_s`; returns how many went. A job whose state cannot
    be told (Temporal unreachable) keeps its objects until a later sweep."""
    cutoff = (time.time() if now is None else now) - ttl_s
    old: dict[str, list[str]] = {}
    async for obj in store.list_objects():
        job_id, _, name = obj.key.partition("/")
        if job_id == FILES_PREFIX:  # the Files API's objects: kept until their owner deletes them
            continue
        if name.startswith(INPUT_NAMES) and "/" not in name and obj.modified < cutoff:
            old.setdefault(job_id, []).append(obj.key)
    deleted = 0
    for job_id, keys in old.items():
        if await job_state(job_id) not in (MISSING, ENDED):
            continue
        for key in keys:
            await store.delete(key)
            deleted += 1
    return deleted


async def take_turn(kv: KeyValue, hold_s: float, now: float | None = None) -> bool:
    """Whether this replica sweeps now: no other took a turn in the last `hold_s`."""
    now = time.time() if now is None else now
    value = msgspec.json.encode(now + hold_s)
    try:
        entry = await kv.get(TURN_KEY)
    except KeyNotFoundError:
        entry = None
    try:
        if entry is None:
            await kv.create(TURN_KEY, value)
        elif entry.value and msgspec.json.decode(entry.value, type=float) > now:
            return False
        else:
            await kv.update(TURN_KEY, value, last=entry.revision)
    except KeyWrongLastSequenceError:
        return False  # another replica took it meanwhile
    return True


async def run_orphan_sweeper(js: JetStreamContext, store: ObjectStore, job_state: JobState, *,
                             interval_s: float, ttl_s: float, replicas: int = 1) -> None:
    """Sweeps every `interval_s` for as long as the proxy runs; a failed round is logged and retried
    at the next interval."""
    if interval_s <= 0:
        return
    kv: KeyValue | None = None
    while True:
        try:
            if kv is None:
                kv = await ensure_kv(js, SWEEPS_BUCKET, replicas=replicas, history=1)
            if await take_turn(kv, interval_s * 0.9):
                deleted = await sweep_orphans(store, job_state, ttl_s)
                if deleted:
                    log.info("orphans_swept", objects=deleted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("orphan_sweep_failed", error_type=type(exc).__name__)
        await asyncio.sleep(interval_s)
