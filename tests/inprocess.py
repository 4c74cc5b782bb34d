"""A proxy served by uvicorn inside the test's own event loop (for spans, metrics and protocol tests)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import uvicorn

from tests.eventually import eventually_async


async def until_started(server: uvicorn.Server, serving: asyncio.Future, timeout: float = 30) -> None:
    def started() -> bool:
        if serving.done():
            raise RuntimeError("the in-process proxy stopped before it started")
        return server.started

    await eventually_async(started, timeout, interval=0.05, what="the in-process proxy starting")


def fake_vllm_catalog(stack, name: str) -> Path:
    """A catalog of the fake vLLM alone, at a literal URL (the session's catalog names ${VARS} only
    its processes have)."""
    path = stack.base / name
    path.write_text(f"""version: 1
models:
  - id: fake-vllm
    engine: {{kind: openai, url: "{stack.env['FAKE_ENGINE_URL']}", served_name: fake-model}}
    task_queue: gpu.test
""")
    return path


@contextlib.asynccontextmanager
async def serving(app: Any, config: uvicorn.Config, sockets: list[socket.socket] | None = None
                  ) -> AsyncIterator[None]:
    """`app` served by uvicorn under `config` until the block ends."""
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=sockets))
    try:
        await until_started(server, task)
        yield
    finally:
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            # Runtime.close drains NATS, which waits its drain_timeout (5 s) on the settler's pull
            # subscription; a private proxy need not wait that long.
            runtime.nc.options["drain_timeout"] = 2
        server.should_exit = True
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
