"""nats-server (JetStream) for tests, on a free 127.0.0.1 port, stopped at the end. `nats_url` in
conftest.py gives each test module one; a test that stops and restarts its server takes its own here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from switchyard.processes import Managed, free_port, start_nats


class NatsServer:
    """One nats-server on a fixed port and store: stopped and started again, it keeps both."""

    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process: Managed | None = None

    def start(self) -> None:
        self._process = start_nats(self.port, self.base / "js", self.base / "log")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None


@contextlib.contextmanager
def nats_server(base: Path) -> Iterator[NatsServer]:
    server = NatsServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_nats(base: Path) -> Iterator[str]:
    with nats_server(base) as server:
        yield server.url
