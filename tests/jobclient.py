"""Small helpers for reading the jobs API in tests (SSE parsing of the jobs event stream)."""

from __future__ import annotations

import json
import time

import httpx


def sse_events(response: httpx.Response) -> list[dict]:
    """Parses an SSE body into [{'id', 'event', 'data'}], comments dropped."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
                current = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field in ("id", "event", "data"):
            current[field] = value
    if current:
        events.append(current)
    return events


def read_events(http: httpx.Client, job_id: str, after: str | None = None, header: bool = True) -> list[dict]:
    headers, params = {}, {}
    if after is not None:
        if header:
            headers["last-event-id"] = after
        else:
            params["after"] = after
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, params=params) as r:
        assert r.status_code == 200
        return sse_events(r)


def wait_finished(http: httpx.Client, job_id: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def chunk_text(events: list[dict]) -> str:
    out = []
    for e in events:
        if "event" not in e and e.get("data", "").startswith("{"):
            data = json.loads(e["data"])
            for choice in data.get("choices", []):
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


def wait_result(http: httpx.Client, job_id: str, timeout: float = 60) -> httpx.Response:
    """GET /v1/jobs/{id}/result once the job has finished (it answers 409 before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = http.get(f"/v1/jobs/{job_id}/result")
        if r.status_code != 409:
            return r
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")
