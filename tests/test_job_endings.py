"""Every way a job ends gives a terminal event and a webhook: a cancel at any moment of its life
ends it cancelled, and a job nobody picks up ends itself as no_capacity."""

from __future__ import annotations

import json
import random
import time

import httpx

from tests.conftest import scenario
from tests.eventually import eventually
from tests.fakes.receiver import Receiver
from tests.test_webhooks import SECRET
from tests.jobclient import read_events, wait_finished

CHAT = "/v1/chat/completions"


def webhook_types(receiver: Receiver, path: str, timeout: float = 30) -> list[str]:
    got = eventually(lambda: receiver.for_path(path), timeout, what=f"a webhook to {path}")
    return [json.loads(body)["type"] for (_, _, body, _) in got]


def lifecycle(events: list[dict]) -> list[str]:
    return [e["event"] for e in events if e.get("event", "").startswith("job.")]


def test_a_cancel_at_any_moment_ends_the_job_cancelled(http: httpx.Client, receiver: Receiver):
    rng = random.Random(7)
    moments = sorted(rng.uniform(0, 1.5) for _ in range(20))
    moments[0] = 0.0  # while queued: the workflow may not have run yet
    for i, moment in enumerate(moments):
        body = {"model": "fake-vllm", "messages": scenario("slow"), "stream": True}
        hook = {"url": f"{receiver.base}/cancel-{i}", "secret": SECRET}
        job_id = http.post("/v1/jobs", json={"endpoint": CHAT, "body": body, "webhook": hook}).json()["id"]
        time.sleep(moment)
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
        job = wait_finished(http, job_id)
        assert job["status"] == "cancelled", (moment, job)
        assert lifecycle(read_events(http, job_id))[-1] == "job.cancelled", moment
        assert webhook_types(receiver, f"/cancel-{i}") == ["job.cancelled"], moment
        # A cancel after the end keeps the final status.
        http.post(f"/v1/jobs/{job_id}/cancel")
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_job_nobody_picks_up_ends_itself_with_its_webhook(http: httpx.Client, receiver: Receiver):
    body = {"model": "orphan", "messages": scenario("ok")}
    hook = {"url": f"{receiver.base}/orphan", "secret": SECRET}
    job_id = http.post("/v1/jobs", json={"endpoint": CHAT, "body": body, "webhook": hook}).json()["id"]
    job = wait_finished(http, job_id, timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "no_capacity"
    events = read_events(http, job_id)
    assert lifecycle(events) == ["job.failed"] and "no_capacity" in events[-1]["data"]
    assert webhook_types(receiver, "/orphan") == ["job.failed"]
