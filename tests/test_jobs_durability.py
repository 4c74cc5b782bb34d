"""Cancellation reaches the engine; a worker killed mid-stream is replaced and the text goes on once."""

from __future__ import annotations

import time

import httpx

from tests.conftest import MODEL, Stack
from tests.eventually import eventually
from tests.jobclient import assert_resumed_once, read_events, stream_through_a_worker_kill, wait_finished

CHAT = "/v1/chat/completions"


def engine_busy_slots(stack: Stack) -> int:
    base = stack.env["SWITCHYARD_ENGINE_URL"].removesuffix("/v1")
    return sum(1 for s in httpx.get(base + "/slots").json() if s.get("is_processing"))


def test_cancel_stops_the_engine_and_is_idempotent(stack: Stack, http: httpx.Client):
    body = {"model": MODEL, "max_tokens": 1000, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]}
    job_id = http.post("/v1/jobs", json={"endpoint": CHAT, "body": body}).json()["id"]
    eventually(lambda: http.get(f"/v1/jobs/{job_id}").json()["tokens"] > 5, interval=0.05)
    assert engine_busy_slots(stack) >= 1
    r = http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.headers["cancel-requested"] == "true"
    cancelled_at = time.monotonic()
    eventually(lambda: engine_busy_slots(stack) == 0, timeout=10, interval=0.05)
    engine_stopped_after = time.monotonic() - cancelled_at
    done = wait_finished(http, job_id)
    assert done["status"] == "cancelled" and done["tokens"] < 1000
    again = http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert again.headers["cancel-requested"] == "false"
    events = read_events(http, job_id)
    assert events[-1]["event"] == "job.cancelled"
    assert http.get(f"/v1/jobs/{job_id}/result").json()["error"]["code"] == "job_cancelled"
    print(f"engine slot free {engine_stopped_after * 1000:.0f} ms after cancel")


def test_cancel_of_a_finished_job_is_a_no_op(http: httpx.Client):
    body = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    job_id = http.post("/v1/jobs", json={"endpoint": CHAT, "body": body}).json()["id"]
    wait_finished(http, job_id)
    r = http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert http.get(f"/v1/jobs/{job_id}/result").status_code == 200


def test_worker_killed_mid_stream_is_replaced_and_the_text_goes_on_once(stack: Stack):
    body = {"model": "durable", "stream": True, "max_tokens": 160, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from 1 to 60, separated by commas."}]}
    job_id, before_crash, text = stream_through_a_worker_kill(stack, CHAT, body)
    assert text.startswith(before_crash) and len(text) > len(before_crash) + 10
    # Greedy decoding: the crashed-and-continued text equals an uninterrupted run's.
    baseline = httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {stack.key}"},
                          json={**body, "stream": False}, timeout=120).json()
    assert text == baseline["choices"][0]["message"]["content"]
    assert text.count(before_crash) == 1
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}) as http:
        assert_resumed_once(http, job_id)
        result = http.get(f"/v1/jobs/{job_id}/result").json()
        assert result["choices"][0]["message"]["content"] == text
