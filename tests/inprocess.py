"""A proxy served by uvicorn inside the test's own event loop (for spans, metrics and protocol tests)."""

from __future__ import annotations

import asyncio

import uvicorn

from tests.eventually import eventually_async


async def until_started(server: uvicorn.Server, serving: asyncio.Future, timeout: float = 30) -> None:
    def started() -> bool:
        if serving.done():
            raise RuntimeError("the in-process proxy stopped before it started")
        return server.started

    await eventually_async(started, timeout, interval=0.05, what="the in-process proxy starting")
