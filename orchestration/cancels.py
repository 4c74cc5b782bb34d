"""Fast cancellation: the proxy publishes `sy.cancel.<job>` on core NATS and the worker running that
job closes the engine request at once, without waiting for the next heartbeat round trip."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

CANCEL_SUBJECT_PREFIX = "sy.cancel"


def cancel_subject(job_id: str) -> str:
    return f"{CANCEL_SUBJECT_PREFIX}.{job_id}"


class CancelRegistry:
    """Running jobs' cancel flags. A cancel that comes before its job runs here is remembered for
    a while, so a run that starts just after it stops at once."""

    REMEMBERED = 10_000
    REMEMBER_S = 600.0

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Event] = {}
        self._early: OrderedDict[str, float] = OrderedDict()

    def register(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        cancelled_at = self._early.pop(job_id, None)
        if cancelled_at is not None and time.monotonic() - cancelled_at < self.REMEMBER_S:
            event.set()
        self._running[job_id] = event
        return event

    def unregister(self, job_id: str) -> None:
        self._running.pop(job_id, None)

    def cancel(self, job_id: str) -> bool:
        event = self._running.get(job_id)
        if event is None:
            self._early[job_id] = time.monotonic()
            while len(self._early) > self.REMEMBERED:
                self._early.popitem(last=False)
            return False
        event.set()
        return True

    async def on_message(self, msg) -> None:
        self.cancel(msg.subject[len(CANCEL_SUBJECT_PREFIX) + 1:])
