"""A proxy replica's part in batches: the status store, the settings, and a small Temporal worker on
task queue `switchyard-proxy` hosting the batch activities. Started and stopped with the Runtime."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

from temporalio.worker import Worker

from orchestration.batch_store import BatchStore
from proxy.batches.activities import ProxyBatchActivities
from proxy.runtime import Runtime
from schemas.batches import PROXY_QUEUE


@dataclass(frozen=True)
class BatchSettings:
    window: int = 32  # SWITCHYARD_BATCH_WINDOW: a batch's lines in flight at once
    lines_per_run: int = 1024  # SWITCHYARD_BATCH_LINES_PER_RUN: continue-as-new after about this many
    activities: int = 8  # SWITCHYARD_BATCH_ACTIVITIES: batch activities one proxy runs at once

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BatchSettings":
        e = os.environ if env is None else env
        return cls(window=max(1, int(e.get("SWITCHYARD_BATCH_WINDOW", "32"))),
                   lines_per_run=max(1, int(e.get("SWITCHYARD_BATCH_LINES_PER_RUN", "1024"))),
                   activities=max(1, int(e.get("SWITCHYARD_BATCH_ACTIVITIES", "8"))))


@dataclass
class BatchService:
    store: BatchStore
    settings: BatchSettings
    worker: Worker
    task: asyncio.Task[None]

    @classmethod
    async def start(cls, rt: Runtime) -> "BatchService":
        store = await BatchStore.open(rt.js, replicas=rt.settings.nats_replicas)
        settings = BatchSettings.from_env()
        acts = ProxyBatchActivities(rt, store)
        worker = Worker(rt.temporal, task_queue=PROXY_QUEUE,
                        activities=[acts.validate, acts.admit, acts.write, acts.write_rest, acts.mark, acts.finalize],
                        max_concurrent_activities=settings.activities,
                        graceful_shutdown_timeout=timedelta(seconds=5))
        return cls(store, settings, worker, asyncio.ensure_future(worker.run()))

    async def stop(self) -> None:
        if not self.task.done():
            await self.worker.shutdown()
        await asyncio.gather(self.task, return_exceptions=True)
