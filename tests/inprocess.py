"""A proxy served by uvicorn inside the test's own event loop (for spans, metrics and protocol tests)."""

from __future__ import annotations

import asyncio
import time

import uvicorn


async def until_started(server: uvicorn.Server, serving: asyncio.Future, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        assert time.monotonic() < deadline and not serving.done(), "in-process proxy did not start"
        await asyncio.sleep(0.05)
