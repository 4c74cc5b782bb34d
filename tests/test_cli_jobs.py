"""`switchyard jobs` against the running stack: list, tail (resuming after a cut connection), cancel;
and the build's progress lines (scripts/progress.py)."""

from __future__ import annotations

import io
import subprocess
import sys

import httpx

from switchyard.processes import ROOT
from tests.conftest import Stack, scenario
from tests.jobclient import wait_finished


def _jobs(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "switchyard.cli", "jobs", *args, "--base-url",
                           stack.proxy_url + "/v1", "--api-key", stack.key],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _create(http: httpx.Client, messages: list[dict], **body) -> str:
    r = http.post("/v1/jobs", json={"endpoint": "/v1/chat/completions",
                                    "body": {"model": "fake-vllm", "messages": messages, **body}})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_tail_prints_the_jobs_text_and_its_outcome_and_list_shows_it(stack: Stack, http: httpx.Client):
    job_id = _create(http, scenario("slow"))
    tail = _jobs(stack, "tail", job_id)
    assert tail.returncode == 0, tail.stderr
    result = http.get(f"/v1/jobs/{job_id}/result").json()
    assert tail.stdout.strip() == result["choices"][0]["message"]["content"].strip()
    assert f"{job_id}: succeeded {result['usage']['total_tokens']} tokens" in tail.stderr

    listed = _jobs(stack, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout


def test_tail_after_an_event_id_prints_only_the_rest(stack: Stack, http: httpx.Client):
    job_id = _create(http, scenario("slow"))
    wait_finished(http, job_id)
    whole = _jobs(stack, "tail", job_id).stdout
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        ids = [line[3:].strip() for line in r.iter_lines() if line.startswith("id:")]
    rest = _jobs(stack, "tail", job_id, "--after", ids[2])
    assert rest.returncode == 0 and rest.stdout.strip() and whole.endswith(rest.stdout), (whole, rest.stdout)
    assert len(rest.stdout) < len(whole)


def test_cancel_ends_a_running_job_and_tail_reports_it(stack: Stack, http: httpx.Client):
    job_id = _create(http, scenario("slow"))
    cancelled = _jobs(stack, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert wait_finished(http, job_id)["status"] == "cancelled"
    tail = _jobs(stack, "tail", job_id)
    assert tail.returncode == 1 and f"{job_id}: cancelled" in tail.stderr, tail.stderr


def test_an_unknown_job_or_a_bad_key_is_a_clear_error(stack: Stack):
    missing = _jobs(stack, "tail", "chatcmpl-does-not-exist")
    assert missing.returncode == 1 and "404 job_not_found" in missing.stderr, missing.stderr
    bad = subprocess.run([sys.executable, "-m", "switchyard.cli", "jobs", "list", "--base-url", stack.proxy_url,
                          "--api-key", "sk-wrong"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 1 and bad.stderr.startswith("401"), bad.stderr


def test_build_progress_prints_stages_percentages_and_keeps_the_whole_log():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from progress import lines_for
    finally:
        sys.path.pop(0)
    build = "".join(f"[{p:3d}%] Building CXX object ggml/src/f{p}.o\n" for p in range(0, 101, 2))
    log = io.StringIO()
    shown = list(lines_for(io.StringIO(build + "Collecting numpy==2.0\n"), "[engine 3/3] compiling", log))
    assert shown[:3] == ["[engine 3/3] compiling   0%", "[engine 3/3] compiling   6%",
                         "[engine 3/3] compiling  12%"]
    assert shown[-2] == "[engine 3/3] compiling 100%" and "1 packages (numpy==2.0)" in shown[-1]
    assert log.getvalue() == build + "Collecting numpy==2.0\n"
    clock = iter(range(0, 1000, 30))
    quiet = list(lines_for(io.StringIO("linking llama-server\n"), "x", io.StringIO(), now=lambda: next(clock)))
    assert quiet == ["x: still working (linking llama-server)"]
