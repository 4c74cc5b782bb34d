"""A private nats-server (JetStream) per test module, on a free 127.0.0.1 port, stopped at teardown."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from switchyard.processes import free_port, start_nats


@contextlib.contextmanager
def running_nats(base: Path) -> Iterator[str]:
    port = free_port()
    server = start_nats(port, base / "js", base / "log")
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.stop()
