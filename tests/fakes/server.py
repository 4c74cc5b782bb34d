"""Runs a fake's Starlette app with uvicorn in a thread on a loopback port."""

from __future__ import annotations

import threading
import time

import uvicorn


class LoopbackServer:
    """Mixin for the fakes: `self.app` is served by `start(port)` until `stop()`."""

    app: object
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def start(self, port: int) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{type(self).__name__} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(5)
