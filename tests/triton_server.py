"""Starting and stopping the real Triton deployment (compose/triton/serve.py) from tests.

It runs in its own venv, .cache/pytriton (scripts/setup_triton.sh), with LD_LIBRARY_PATH set to that
Python's LIBDIR (tritonserver's Python backend stub needs libpython) and HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from switchyard.processes import (
    PYTRITON_PYTHON,
    TRITON_MODELS as MODELS,
    Managed,
    free_port,
    spawn_triton,
    triton_installed as installed,
    wait_triton,
)

__all__ = ["PYTRITON_PYTHON", "MODELS", "installed", "start_triton", "stop_triton"]


def start_triton(log_dir: Path, models: tuple[str, ...] = MODELS, timeout: float = 180.0,
                 attempts: int = 2) -> tuple[str, Managed]:
    """Start the server on free loopback ports; return its HTTP URL once every model is ready.
    A start that fails is tried again once: every test of the session needs this server, and on a
    busy machine tritonserver's Python backend stubs have been seen to miss a 1 s handshake."""
    for attempt in range(1, attempts + 1):
        server = spawn_triton(free_port(), log_dir, models=models)
        try:
            return wait_triton(server, timeout), server
        except (RuntimeError, TimeoutError):
            stop_triton(server)
            if attempt == attempts:
                raise
            log = server.log_path.read_text(errors="replace") if server.log_path else ""
            (log_dir / f"triton-failed-{attempt}.log").write_text(log)
        except BaseException:
            stop_triton(server)
            raise
    raise AssertionError("unreachable")


def stop_triton(server: Managed, timeout: float = 30.0) -> None:
    """SIGINT lets PyTriton stop tritonserver, which runs in a session of its own; if that hangs,
    the script and every process under it are killed."""
    if server.proc.poll() is not None:
        return
    family = descendants(server.proc.pid)
    server.proc.send_signal(signal.SIGINT)
    try:
        server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        family += descendants(server.proc.pid)
        server.kill()
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def descendants(pid: int) -> list[int]:
    """The processes under pid (tritonserver, its backend stubs, PyTriton's helpers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
