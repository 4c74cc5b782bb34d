"""The engine slots of one task queue on this worker, shared by its Temporal activities and the runs
dispatched to it directly: together they never exceed what the engines of that queue can take.

Temporal reserves a slot before each poll (a poller waits here while the engines are full), so
queued jobs stay in Temporal's queue, in priority order, until a slot frees. A dispatched run
takes a slot only when one is free and no poller is waiting for it: work already queued goes
first."""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from temporalio.worker import CustomSlotSupplier, SlotPermit


class EngineSlots(CustomSlotSupplier):
    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop):
        self.capacity = capacity
        self.in_use = 0
        self._loop = loop
        self._lock = threading.Lock()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        with self._lock:
            if self.in_use < self.capacity and not self._waiters:
                self.in_use += 1
                return True
            return False

    def give_back(self) -> None:
        with self._lock:
            self.in_use -= 1
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            while self._waiters and self.in_use < self.capacity:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    self.in_use += 1
                    waiter.set_result(None)

    async def reserve_slot(self, ctx) -> SlotPermit:
        if self.try_take():
            return SlotPermit()
        waiter = self._loop.create_future()
        with self._lock:
            self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # granted just as the poll was cancelled
            raise
        return SlotPermit()

    def try_reserve_slot(self, ctx) -> SlotPermit | None:
        return SlotPermit() if self.try_take() else None

    def mark_slot_used(self, ctx) -> None:
        pass

    def release_slot(self, ctx) -> None:
        self.give_back()
