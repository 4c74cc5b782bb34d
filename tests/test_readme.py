"""The README's quick-start snippet runs as written against the real stack."""

from __future__ import annotations

import re
import subprocess
import sys

from switchyard.processes import ROOT
from tests.conftest import Stack


def test_readme_python_quick_start_runs(stack: Stack):
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    snippet = snippet.replace("http://127.0.0.1:8000/v1", stack.proxy_url + "/v1")
    snippet = snippet.replace("<the printed key>", stack.key)
    r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].strip()  # the streamed text
    assert re.match(r"2 embeddings of \d+ dimensions", lines[-1])


def test_readme_curl_resume_and_status(stack: Stack, client):
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-135m-instruct", stream=True, max_tokens=12,
        messages=[{"role": "user", "content": "Hello!"}])
    list(raw.parse())
    job = raw.headers["x-job-id"]
    text = (ROOT / "README.md").read_text()
    commands = re.search(r"```sh\n(curl.*?)```", text, re.S).group(1)
    env = {"JOB": job, "KEY": stack.key, "PATH": "/usr/bin:/bin"}
    for line in commands.strip().splitlines():
        # Event 1 is the job's `job.running`; chunks follow it however the deltas were coalesced.
        cmd = line.split("  #")[0].replace("http://127.0.0.1:8000", stack.proxy_url)
        cmd = cmd.replace("Last-Event-ID: 5", "Last-Event-ID: 1")
        r = subprocess.run(["bash", "-c", cmd + " -s --fail-with-body"], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        assert job in r.stdout
