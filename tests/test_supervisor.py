"""`switchyard up` supervises its processes: a worker SIGKILLed mid-stream is restarted while the
stream finishes on a worker; Ctrl-C stops every process. Plus the supervisor's backoff."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from temporalio.client import Client

from switchyard.processes import ROOT, free_port
from switchyard.supervisor import Backoff, Supervisor
from tests.eventually import eventually, eventually_async
from tests.jobclient import wait_finished

MODEL = "smollm2-135m-instruct"


def alive(pid: int) -> bool:
    """A zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_files(run_dir: Path) -> dict[str, int]:
    pids = {}
    for path in run_dir.glob("*.pid"):
        text = path.read_text().strip()
        if text:
            pids[path.stem] = int(text)
    return pids


def wait_replaced(run_dir: Path, name: str, old: int, timeout: float = 30) -> int:
    """The pid of the process that took `old`'s place under `name`."""
    def replaced() -> int | None:
        pid = pid_files(run_dir).get(name)
        return pid if pid not in (None, old) and alive(pid) else None

    return eventually(replaced, timeout, interval=0.2, what=f"a new {name} after pid {old}")


@dataclass
class Up:
    proc: subprocess.Popen
    var: Path
    console: Path
    url: str
    key: str

    def output(self) -> str:
        return self.console.read_text(errors="replace")


@pytest.fixture
def up(tmp_path: Path):
    """`switchyard up` (default workers, no Triton) on free loopback ports, its state in tmp_path."""
    var = tmp_path / "var"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(SWITCHYARD_VAR=str(var), SWITCHYARD_PORT=str(port))
    console = tmp_path / "console.log"
    with open(console, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "switchyard.cli", "up", "--no-triton"], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack = Up(proc, var, console, f"http://127.0.0.1:{port}", "")
    try:
        def banner() -> bool:
            if proc.poll() is not None:  # it will never come
                raise RuntimeError(f"`switchyard up` exited {proc.returncode}:\n{stack.output()}")
            assert "Switchyard is up" in stack.output(), stack.output()
            return True

        eventually(banner, timeout=120, interval=0.2)
        stack.key = (var / "demo_key").read_text().strip()
        yield stack
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pid_files(var / "run").values():  # left behind only if `up` itself failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def _worker_pid(temporal_address: str, job_id: str) -> int:
    """The pid of the worker running the job's activity (the SDK's identity is `pid@host`)."""
    client = await Client.connect(temporal_address)

    async def running_on() -> int | None:
        desc = await client.get_workflow_handle(job_id).describe()
        for activity in desc.raw_description.pending_activities:
            if activity.last_worker_identity:
                return int(activity.last_worker_identity.split("@")[0])
        return None

    return await eventually_async(running_on, timeout=5, interval=0.05, what=f"a worker running job {job_id}")


def test_up_banner_names_the_chat_page_and_temporal_ui_and_both_answer(up: Up):
    banner = up.output()[up.output().index("Switchyard is up"):]
    urls = dict(re.findall(r"^  (chat page|Temporal UI) *: (\S+)", banner, re.MULTILINE))
    assert urls.keys() == {"chat page", "Temporal UI"}, banner
    assert f"API key     : {up.key}" in banner
    page = httpx.get(urls["chat page"], timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text[:300]
    ui = httpx.get(urls["Temporal UI"], timeout=10, follow_redirects=True)
    assert ui.status_code == 200 and "<html" in ui.text.lower(), ui.text[:300]
    # the UI's own API answers with this stack's namespace
    api = httpx.get(urls["Temporal UI"].split("/namespaces")[0] + "/api/v1/namespaces/default", timeout=10)
    assert api.status_code == 200 and api.json()["namespaceInfo"]["name"] == "default", api.text[:300]


def test_up_restarts_a_worker_killed_mid_stream_and_stops_on_ctrl_c(up: Up):
    run_dir = up.var / "run"
    pids = pid_files(run_dir)
    assert {"temporal", "nats", "engine", "embed-engine", "worker-1", "worker-2", "proxy"} <= set(pids)
    temporal_address = f"127.0.0.1:{json.loads((up.var / 'ports.json').read_text())['temporal']}"

    client = openai.OpenAI(base_url=up.url + "/v1", api_key=up.key, max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, stream=True, max_tokens=200,
        messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}])
    job_id = raw.headers["x-job-id"]
    pieces, finish, victim = [], None, None
    for chunk in raw.parse():  # ends at [DONE]; an error event would raise
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        if victim is None and len(pieces) >= 5:
            pid = asyncio.run(_worker_pid(temporal_address, job_id))
            victim = {p: name for name, p in pids.items() if name.startswith("worker-")}.get(pid, "?")
            assert victim != "?", (pid, pids)
            os.kill(pid, signal.SIGKILL)
    assert victim is not None and finish in ("length", "stop") and "".join(pieces).strip()
    with httpx.Client(base_url=up.url, headers={"authorization": f"Bearer {up.key}"}, timeout=60) as http:
        assert wait_finished(http, job_id)["status"] == "succeeded"

    replacement = wait_replaced(run_dir, victim, pids[victim])
    assert f"{victim}: pid {pids[victim]} killed by SIGKILL" in up.output()
    assert f"{victim}: restarted, pid {replacement} (attempt 1)" in up.output()

    children = list(pid_files(run_dir).values())
    t0 = time.monotonic()
    up.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: the children have sessions of their own
    assert up.proc.wait(15) == 0, up.output()

    def all_stopped() -> bool:
        assert not [p for p in children if alive(p)], up.output()
        return True

    eventually(all_stopped, timeout=10, interval=0.05)
    print(f"stopped {len(children)} processes in {time.monotonic() - t0:.2f}s")


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.proc = SimpleNamespace(pid=pid, returncode=None)
        self.log_path = Path("worker.log")

    def alive(self) -> bool:
        return self.proc.returncode is None


def test_restart_backoff_doubles_to_the_cap_and_resets_after_a_long_run():
    now, lines, spawned = [0.0], [], []

    def spawn() -> FakeProcess:
        spawned.append(FakeProcess(100 + len(spawned)))
        return spawned[-1]

    sup = Supervisor(Backoff(initial=0.5, cap=30, reset_after=60), log=lines.append, clock=lambda: now[0])
    sup.add("worker-1", spawn)
    delays = []
    for _ in range(8):  # each restarted process crashes at once
        spawned[-1].proc.returncode = -signal.SIGKILL
        sup.check()
        delays.append(sup.services[0].restart_at - now[0])
        now[0] = sup.services[0].restart_at - 0.01
        sup.check()
        assert len(spawned) == len(delays)  # not before its time
        now[0] += 0.01
        sup.check()
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30] and len(spawned) == 9
    assert lines[0] == ("worker-1: pid 100 killed by SIGKILL after 0.0s up; restart attempt 1 in 0.5s "
                        "(log: worker.log)")
    assert lines[1] == "worker-1: restarted, pid 101 (attempt 1)"

    now[0] += 60  # it stayed up a minute: the next crash starts the backoff again
    spawned[-1].proc.returncode = 1
    sup.check()
    assert sup.services[0].restart_at - now[0] == 0.5
    assert lines[-1].startswith("worker-1: pid 108 exit code 1 after 60.0s up; restart attempt 1 in 0.5s")
