"""Fast cancellation: the proxy publishes `sy.cancel.<job>` on core NATS and the worker running that
job closes the engine request at once, without waiting for the next heartbeat round trip."""

from __future__ import annotations

import asyncio

CANCEL_SUBJECT_PREFIX = "sy.cancel"


def cancel_subject(job_id: str) -> str:
    return f"{CANCEL_SUBJECT_PREFIX}.{job_id}"


class CancelRegistry:
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Event] = {}

    def register(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._running[job_id] = event
        return event

    def unregister(self, job_id: str) -> None:
        self._running.pop(job_id, None)

    def cancel(self, job_id: str) -> bool:
        event = self._running.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    async def on_message(self, msg) -> None:
        self.cancel(msg.subject[len(CANCEL_SUBJECT_PREFIX) + 1:])
