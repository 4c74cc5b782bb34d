"""Small helpers for reading the jobs API in tests (SSE parsing of the jobs event stream)."""

from __future__ import annotations

import json

import httpx

from tests.eventually import eventually


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
    def finished() -> dict | None:
        job = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return eventually(finished, timeout, interval=0.2, what=f"job {job_id} finishing")


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
    def answered() -> httpx.Response | None:
        r = http.get(f"/v1/jobs/{job_id}/result")
        return r if r.status_code != 409 else None

    return eventually(answered, timeout, interval=0.2, what=f"job {job_id} finishing")


def stream_through_a_worker_kill(stack, path: str, body: dict, kill_after: int = 12) -> tuple[str, str, str]:
    """Streams `body` to `path` (chat or completions) and SIGKILLs the worker, a fresh one taking its
    place, once `kill_after` pieces of text have arrived. Returns (job id, the text before the kill,
    the whole text); an error event fails the test."""
    headers = {"authorization": f"Bearer {stack.key}"}
    pieces: list[str] = []
    before_crash = ""
    with httpx.Client(timeout=120) as h, h.stream("POST", stack.proxy_url + path, headers=headers, json=body) as r:
        assert r.status_code == 200
        job_id = r.headers["x-job-id"]
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            assert "error" not in data, data
            if data["choices"]:
                choice = data["choices"][0]
                pieces.append(choice["text"] if "text" in choice else choice["delta"].get("content") or "")
            if len(pieces) == kill_after and not before_crash:
                before_crash = "".join(pieces)
                stack.restart_worker(kill=True)  # SIGKILL, then a fresh worker
    return job_id, before_crash, "".join(pieces)


def assert_resumed_once(http: httpx.Client, job_id: str) -> None:
    """The job succeeded at its second attempt, which resumed after events already delivered."""
    job = wait_finished(http, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    running = [json.loads(e["data"]) for e in read_events(http, job_id) if e.get("event") == "job.running"]
    assert [r["attempt"] for r in running] == [1, 2] and running[1]["resumed_from"] > 0
