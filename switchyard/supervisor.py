"""Keeps the embedded stack's processes running: one that exits is started again after a backoff."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from switchyard.processes import Managed, stop_all


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n (1, 2, ...): `initial` doubling up to `cap`; a process that stayed up
    `reset_after` seconds starts again from restart 1."""

    initial: float = 0.5
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.initial * 2 ** (attempt - 1))


@dataclass
class Service:
    name: str
    spawn: Callable[[], Managed]  # starts the process and returns at once
    current: Managed
    started_at: float
    attempt: int = 0  # restarts since it last stayed up `reset_after`
    restart_at: float | None = None  # set while it is down


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _console(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, backoff: Backoff = Backoff(), log: Callable[[str], None] = _console,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff, self.log, self.clock = backoff, log, clock
        self.services: list[Service] = []

    def add(self, name: str, spawn: Callable[[], Managed]) -> Managed:
        """Starts a process and supervises it from now on; the caller may wait for it to be ready."""
        m = spawn()
        self.services.append(Service(name, spawn, m, self.clock()))
        return m

    def processes(self) -> list[Managed]:
        return [s.current for s in self.services]

    def check(self) -> None:
        """One pass: schedules the restart of each process that exited, starts those that are due."""
        now = self.clock()
        for s in self.services:
            if s.restart_at is None and not s.current.alive():
                up_for = now - s.started_at
                self._schedule(s, now, up_for, f"pid {s.current.proc.pid} "
                               f"{describe_exit(s.current.proc.returncode)} after {up_for:.1f}s up")
            elif s.restart_at is not None and now >= s.restart_at:
                try:
                    s.current = s.spawn()
                except OSError as exc:  # e.g. the binary is gone: try again later
                    self._schedule(s, now, 0.0, f"could not start ({exc})")
                    continue
                s.started_at, s.restart_at = now, None
                self.log(f"{s.name}: restarted, pid {s.current.proc.pid} (attempt {s.attempt})")

    def _schedule(self, s: Service, now: float, up_for: float, why: str) -> None:
        s.attempt = 1 if up_for >= self.backoff.reset_after else s.attempt + 1
        delay = self.backoff.delay(s.attempt)
        s.restart_at = now + delay
        self.log(f"{s.name}: {why}; restart attempt {s.attempt} in {delay:.1f}s (log: {s.current.log_path})")

    def run(self, interval: float = 0.2) -> None:
        """Supervises until interrupted (KeyboardInterrupt)."""
        while True:
            self.check()
            time.sleep(interval)

    def stop(self, grace: float = 2.0) -> list[str]:
        """Stops every process at once; the names of those that needed SIGKILL."""
        return stop_all(self.processes(), grace)
