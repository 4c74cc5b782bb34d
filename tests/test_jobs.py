"""The jobs API: async creation, status with ETag, resumable events, results, isolation, idempotency."""

from __future__ import annotations

import random
import time
import uuid

import httpx

from tests.conftest import MODEL, OTHER_KEY, Stack, scenario
from tests.eventually import eventually
from tests.jobclient import chunk_text, read_events, sse_events, wait_finished

CHAT = "/v1/chat/completions"


def chat_body(**kw) -> dict:
    return {"model": MODEL, "max_tokens": 40, "temperature": 0,
            "messages": [{"role": "user", "content": "List five colours."}], **kw}


def test_prefer_respond_async_gives_202_job(http: httpx.Client):
    r = http.post(CHAT, json=chat_body(), headers={"prefer": "respond-async"})
    assert r.status_code == 202
    assert r.headers["preference-applied"] == "respond-async"
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["object"] == "job" and job["status"] in ("queued", "running")
    assert wait_finished(http, job["id"])["status"] == "succeeded"


def test_job_lifecycle_status_etag_result(http: httpx.Client):
    r = http.post("/v1/jobs", json={"endpoint": CHAT, "body": {"model": "fake-vllm", "messages": scenario("slow")},
                                    "metadata": {"team": "search"}})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert r.json()["metadata"] == {"team": "search"}
    early = http.get(f"/v1/jobs/{job_id}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"
    status = http.get(f"/v1/jobs/{job_id}")
    assert status.headers["retry-after"] == "1" and status.headers["etag"]
    done = wait_finished(http, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["usage"]["completion_tokens"] > 0
    final = http.get(f"/v1/jobs/{job_id}")
    assert "retry-after" not in final.headers
    again = http.get(f"/v1/jobs/{job_id}", headers={"if-none-match": final.headers["etag"]})
    assert again.status_code == 304 and not again.content
    result = http.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    from tests.fakes.vllm import REPLY

    body = result.json()
    assert body["object"] == "chat.completion" and body["id"] == job_id
    assert body["choices"][0]["message"]["content"] == REPLY


def test_events_resume_exactly_after_any_event(stack: Stack, http: httpx.Client):
    job_id = http.post("/v1/jobs", json={"endpoint": CHAT, "body": chat_body()}).json()["id"]
    full = read_events(http, job_id)
    assert full[0]["event"] == "job.running" and full[-1]["event"] == "job.succeeded"
    ids = [int(e["id"]) for e in full]
    assert ids == sorted(ids) and chunk_text(full)
    assert all("event" not in e for e in full if e["data"].startswith('{"id"'))  # chunks are unnamed
    rng = random.Random(job_id)
    cuts = rng.sample(range(len(full) - 1), min(6, len(full) - 1))
    for cut in cuts:
        after = full[cut]["id"]
        tail = [e for e in full if int(e["id"]) > int(after)]
        assert read_events(http, job_id, after) == tail
        assert read_events(http, job_id, after, header=False) == tail
    stack.restart_proxy()  # a different proxy process serves the second half
    cut = cuts[0]
    assert read_events(http, job_id, full[cut]["id"]) == [e for e in full if int(e["id"]) > int(full[cut]["id"])]
    assert read_events(http, job_id) == full


def test_every_chat_frame_has_its_own_id_and_resume_after_any_is_exact(http: httpx.Client):
    """The finish and usage chunks and [DONE] of a chat stream each have their own id; resuming the
    job after any id of the stream, the closing ones included, gives exactly what follows."""
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with http.stream("POST", CHAT, json=body) as r:
        frames, job_id = sse_events(r), r.headers["x-job-id"]
    ids = [int(f["id"]) for f in frames]
    assert len(ids) == len(frames) and ids == sorted(set(ids))
    assert frames[-1]["data"] == "[DONE]" and '"usage"' in frames[-2]["data"]
    full = read_events(http, job_id)
    assert full[-1]["event"] == "job.succeeded"
    for cut in ids:
        assert read_events(http, job_id, str(cut)) == [e for e in full if int(e["id"]) > cut], cut


def test_other_tenant_gets_404_everywhere(stack: Stack, http: httpx.Client):
    job_id = http.post("/v1/jobs", json={"endpoint": CHAT, "body": chat_body(max_tokens=2)}).json()["id"]
    wait_finished(http, job_id)
    other = httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {OTHER_KEY}"})
    for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("POST", "/cancel")]:
        r = other.request(method, f"/v1/jobs/{job_id}{path}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert job_id not in [j["id"] for j in other.get("/v1/jobs").json()["data"]]
    assert http.get("/v1/jobs/chatcmpl-doesnotexist").status_code == 404


def test_job_list_is_paginated_newest_first(http: httpx.Client):
    made = [http.post("/v1/jobs", json={"endpoint": CHAT, "body": chat_body(max_tokens=2)}).json()["id"]
            for _ in range(3)]
    for job_id in made:
        wait_finished(http, job_id)
    page1 = http.get("/v1/jobs", params={"limit": 2}).json()
    assert page1["object"] == "list" and len(page1["data"]) == 2 and page1["has_more"] is True
    page2 = http.get("/v1/jobs", params={"limit": 2, "after": page1["last_id"]}).json()
    seen = [j["id"] for j in page1["data"] + page2["data"]]
    assert seen[:3] == list(reversed(made))
    assert len(set(seen)) == len(seen)
    created = [j["created_at"] for j in page1["data"] + page2["data"]]
    assert created == sorted(created, reverse=True)
    assert http.get("/v1/jobs", params={"limit": 0}).status_code == 400


def test_idempotency_key_gives_one_generation(http: httpx.Client):
    key = f"idem-{uuid.uuid4().hex}"
    body = {"model": "fake-vllm", "messages": scenario("ok")}
    a = http.post(CHAT, json=body, headers={"idempotency-key": key})
    # a repeat in a later second still answers with the first object (its `created`)
    eventually(lambda: time.time() >= a.json()["created"] + 1, interval=0.05, what="the next second")
    b = http.post(CHAT, json=body, headers={"idempotency-key": key})
    assert a.status_code == b.status_code == 200
    assert a.headers["x-job-id"] == b.headers["x-job-id"]
    assert a.json() == b.json()
    changed = http.post(CHAT, json={**body, "temperature": 0.5}, headers={"idempotency-key": key})
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "idempotency_key_reused"
    job = http.post("/v1/jobs", json={"endpoint": CHAT, "body": body}, headers={"idempotency-key": key + "x"})
    job2 = http.post("/v1/jobs", json={"endpoint": CHAT, "body": body}, headers={"idempotency-key": key + "x"})
    assert job.json()["id"] == job2.json()["id"]


def test_bad_job_requests_are_400(http: httpx.Client):
    r = http.post("/v1/jobs", json={"endpoint": "/v1/nope", "body": {}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "endpoint"
    r = http.post("/v1/jobs", json={"endpoint": CHAT, "body": {"model": MODEL, "messages": [], }})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = http.post("/v1/jobs", json={"body": {}})
    assert r.status_code == 400
    r = http.get("/v1/jobs/x/events", headers={"last-event-id": "abc"})
    assert r.status_code == 404  # the job is checked first
