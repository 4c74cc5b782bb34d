"""The candidate engine: a llama-server of its own for a trained GGUF, started for verification and
stopped after it (or by the saga's compensation)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import httpx

from orchestration.training.llamacpp import _die_with_parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CandidateEngines:
    """The llama-servers this worker started, by pid. Each dies with the worker (a retried stage
    starts a new one)."""

    def __init__(self, server_bin: Path, threads: int = 2):
        self.server_bin = server_bin
        self.threads = threads
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    async def start(self, model_path: str, served_name: str, log: Path, ready_s: float = 120.0) -> tuple[str, int]:
        """(OpenAI base URL, pid) of a llama-server answering for `model_path`."""
        port = free_port()
        with open(log, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                str(self.server_bin), "-m", model_path, "--host", "127.0.0.1", "--port", str(port),
                "-c", "2048", "--parallel", "1", "-t", str(self.threads), "--jinja",
                "--alias", served_name, "--no-webui",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        self._procs[proc.pid] = proc
        url = f"http://127.0.0.1:{port}"
        try:
            await self._ready(proc, url, ready_s)
        except BaseException:
            await self.stop(proc.pid, model_path)
            raise
        return url + "/v1", proc.pid

    async def _ready(self, proc: asyncio.subprocess.Process, url: str, within_s: float) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within_s
            while loop.time() < deadline:
                if proc.returncode is not None:
                    raise RuntimeError(f"the candidate engine exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url + "/health")).status_code == 200:
                        return
                await asyncio.sleep(0.25)
        raise TimeoutError(f"the candidate engine did not answer within {within_s:.0f} s")

    async def stop(self, pid: int, model_path: str) -> bool:
        """Stops it; True if it was running. A pid this process did not start is only signalled
        when it still runs a llama-server on `model_path` (never a reused pid)."""
        proc = self._procs.pop(pid, None)
        if proc is None:
            if not _runs(pid, model_path):
                return False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return True
        if proc.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        return True

    def running(self, pid: int) -> bool:
        proc = self._procs.get(pid)
        return proc is not None and proc.returncode is None


def _runs(pid: int, model_path: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"llama-server") and model_path.encode() in argv
