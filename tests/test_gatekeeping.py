"""Gatekeeping on the real stack: tenants and keys from the admin API, limits across two proxy
processes, 429s the SDK retries through, revocation, scopes, PII masking before the engine."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import httpx
import openai
import pytest

from switchyard.processes import free_port, start_python, wait_http
from tests.conftest import Stack, scenario
from tests.eventually import eventually
from tests.jobclient import wait_finished

CHAT = "/v1/chat/completions"


def admin(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}, timeout=30)


def new_tenant(stack: Stack, **fields) -> tuple[str, str]:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with admin(stack) as a:
        assert a.post("/admin/tenants", json={"id": tenant, **fields}).status_code == 201
        r = a.post("/admin/keys", json={"tenant": tenant})
        assert r.status_code == 201
        return tenant, r.json()["key"]


def chat(base: str, key: str, **kw) -> httpx.Response:
    return httpx.post(base + CHAT, headers={"authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "fake-vllm", "messages": scenario("ok"), **kw})


@pytest.fixture
def second_proxy(stack: Stack):
    port = free_port()
    proxy = start_python("proxy2", ["proxy"], stack.base / "log", None, {**stack.env, "SWITCHYARD_PORT": str(port)})
    try:
        wait_http(proxy, f"http://127.0.0.1:{port}/healthz", 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.stop()


def test_rpm_holds_across_two_proxy_processes(stack: Stack, second_proxy: str):
    _, key = new_tenant(stack, limits={"rpm": 10})
    targets = [stack.proxy_url, second_proxy] * 15  # a 3x burst split across two replicas
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda base: chat(base, key).status_code, targets))
    assert codes.count(200) == 10 and codes.count(429) == 20


def test_429_has_openai_headers_and_the_sdk_retry_succeeds(stack: Stack):
    _, key = new_tenant(stack, limits={"rpm": 12})  # refills one request every 5 s
    for _ in range(12):
        ok = chat(stack.proxy_url, key)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "12"
    for name in ("remaining-requests", "reset-requests"):
        assert f"x-ratelimit-{name}" in ok.headers
    refused = chat(stack.proxy_url, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 0 < float(refused.headers["retry-after"]) <= 6
    client = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=key, max_retries=3)
    done = client.chat.completions.create(model="fake-vllm", messages=scenario("ok"))
    assert done.choices[0].message.content


def test_token_quota_and_settlement(stack: Stack, http: httpx.Client):
    _, key = new_tenant(stack, limits={"tpm": 3000})
    # Reserved at admission: prompt estimate + max_tokens; settled with the real usage at the end.
    r = chat(stack.proxy_url, key, max_tokens=2000)
    assert r.status_code == 200
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 1000  # the reservation is held

    def admitted_again() -> httpx.Response:
        r2 = chat(stack.proxy_url, key, max_tokens=2000)
        assert r2.status_code == 200  # would be refused had the unused reservation not come back
        return r2

    eventually(admitted_again, timeout=15, interval=0.2)  # the settlement travels through JetStream to a proxy
    huge = chat(stack.proxy_url, key, max_tokens=4000)
    assert huge.status_code == 429


def test_revoked_key_is_refused_on_every_replica_within_a_second(stack: Stack, second_proxy: str):
    tenant, key = new_tenant(stack)
    assert chat(second_proxy, key).status_code == 200
    with admin(stack) as a:
        key_id = a.get("/admin/keys", params={"tenant": tenant}).json()["data"][0]["key_id"]
        assert a.post(f"/admin/keys/{key_id}/revoke").status_code == 200
    eventually(lambda: chat(second_proxy, key).status_code == 401, timeout=1.0, interval=0.05,
               what="a 401 for the revoked key")


def test_scopes_and_admin_routes(stack: Stack):
    tenant, key = new_tenant(stack)
    with admin(stack) as a:
        limited = a.post("/admin/keys", json={"tenant": tenant, "models": ["smollm2-*"]}).json()["key"]
    r = chat(stack.proxy_url, limited)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.get(stack.proxy_url + "/admin/tenants", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 403


def test_pii_is_masked_before_the_engine_sees_it(stack: Stack):
    tenant, key = new_tenant(stack, pii="mask")
    secret_mail, card = "jane.doe@example.com", "4111 1111 1111 1111"
    content = f"scenario=ok;nonce={uuid.uuid4().hex}; mail {secret_mail}, card {card}, again {secret_mail}"
    r = httpx.post(stack.proxy_url + "/v1/jobs", headers={"authorization": f"Bearer {key}"},
                   json={"endpoint": CHAT, "body": {"model": "fake-vllm",
                                                    "messages": [{"role": "user", "content": content}]}})
    job_id = r.json()["id"]
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {key}"}) as h:
        job = wait_finished(h, job_id)
    assert job["pii"] == {"EMAIL": 2, "CARD": 1}
    assert any("mail [EMAIL_1], card [CARD_1], again [EMAIL_1]" in t for t in stack.fake.seen)
    assert not any(secret_mail in t or card in t for t in stack.fake.seen)


def test_pii_reject_policy_is_400_naming_the_kind(stack: Stack):
    _, key = new_tenant(stack, pii="reject")
    r = httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {key}"},
                   json={"model": "fake-vllm", "messages": [{"role": "user", "content": "call +82 10 1234 5678"}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "pii_detected" and "phone" in r.json()["error"]["message"].lower()


def test_high_priority_job_overtakes_queued_low_priority_jobs(stack: Stack):
    _, urgent_key = new_tenant(stack, tier=1)
    low = {"authorization": f"Bearer {stack.key}"}

    def submit(headers: dict, priority: int) -> str:
        body = {"model": "single-slot", "messages": scenario("slow"), "priority": priority}
        r = httpx.post(stack.proxy_url + "/v1/jobs", headers=headers, json={"endpoint": CHAT, "body": body})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    first = submit(low, 5)  # takes the engine's only slot for ~2.7 s
    with httpx.Client(base_url=stack.proxy_url, headers=low) as h:
        eventually(lambda: h.get(f"/v1/jobs/{first}").json()["status"] == "running", interval=0.05,
                   what=f"job {first} running")
    queued = [submit(low, 5) for _ in range(2)]
    # The pauses order the arrivals in Temporal's queue, which the jobs API does not show.
    time.sleep(0.3)
    urgent = submit({"authorization": f"Bearer {urgent_key}"}, 1)
    time.sleep(0.3)
    queued += [submit(low, 5) for _ in range(2)]  # neither FIFO nor LIFO would put `urgent` second
    jobs = {}
    with httpx.Client(base_url=stack.proxy_url, headers=low) as h, \
            httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {urgent_key}"}) as u:
        for job_id in [first, *queued]:
            jobs[job_id] = wait_finished(h, job_id, timeout=120)
        jobs[urgent] = wait_finished(u, urgent, timeout=120)
    order = sorted(jobs, key=lambda j: (jobs[j]["finished_at"], jobs[j]["started_at"]))
    assert order[0] == first
    assert order[1] == urgent, order  # started before the low-priority jobs queued earlier


def test_no_prompt_or_key_in_logs_across_success_error_and_refusal(stack: Stack):
    _, key = new_tenant(stack, limits={"rpm": 1})
    marker = f"orchid-{uuid.uuid4().hex[:8]}"
    body = {"model": "fake-vllm", "messages": [{"role": "user", "content": f"scenario=ok;nonce=1 {marker}"}]}
    headers = {"authorization": f"Bearer {key}"}
    assert httpx.post(stack.proxy_url + CHAT, headers=headers, json=body).status_code == 200
    assert httpx.post(stack.proxy_url + CHAT, headers=headers, json=body).status_code == 429
    bad = {**body, "temperature": 9, "messages": [{"role": "user", "content": marker}]}
    last_request = f"req-{uuid.uuid4().hex}"
    assert httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {stack.key}",
                                                       "x-request-id": last_request},
                      json=bad).status_code == 400

    def logs_through_the_last_request() -> str | None:
        logs = stack.logs()
        return logs if last_request in logs else None

    logs = eventually(logs_through_the_last_request)
    assert '"status": 429' in logs
    for needle in (marker, key, key[6:20], stack.key):
        assert needle not in logs
