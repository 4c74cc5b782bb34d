"""A key's endpoint and model scopes hold on every route, not only when a job is created: the jobs
API, the WebSocket and the model list answer a key only about what its globs allow."""

from __future__ import annotations

import json
import uuid

import httpx
import websockets

from tests.conftest import Stack, scenario
from tests.jobclient import wait_finished
from tests.test_websocket import recv, ws_url

CHAT = "/v1/chat/completions"


def _client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {key}"}, timeout=30)


def _tenant_keys(stack: Stack, **scoped: dict) -> dict[str, str]:
    """A new tenant with a full key ("full") and one key per `scoped` entry (its models/endpoints)."""
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with _client(stack, stack.key) as a:
        assert a.post("/admin/tenants", json={"id": tenant}).status_code == 201
        keys = {}
        for name, scopes in {"full": {}, **scoped}.items():
            r = a.post("/admin/keys", json={"tenant": tenant, **scopes})
            assert r.status_code == 201, r.text
            keys[name] = r.json()["key"]
    return keys


def test_jobs_outside_a_keys_scopes_are_hidden_everywhere(stack: Stack):
    keys = _tenant_keys(stack, chat={"endpoints": ["/v1/chat/*"]}, emb={"endpoints": ["/v1/embeddings"]},
                        other_model={"models": ["smollm2-*"]})
    with _client(stack, keys["full"]) as full:
        job_id = full.post("/v1/jobs", json={"endpoint": CHAT, "body": {
            "model": "fake-vllm", "messages": scenario("slow")}}).json()["id"]
        with _client(stack, keys["chat"]) as chat:
            assert job_id in [j["id"] for j in chat.get("/v1/jobs").json()["data"]]
            assert chat.get(f"/v1/jobs/{job_id}").status_code == 200
        for name in ("emb", "other_model"):
            with _client(stack, keys[name]) as h:
                assert job_id not in [j["id"] for j in h.get("/v1/jobs").json()["data"]], name
                for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("POST", "/cancel")]:
                    r = h.request(method, f"/v1/jobs/{job_id}{path}")
                    assert r.status_code == 404, (name, path, r.text)
                    assert r.json()["error"]["code"] == "job_not_found"
                assert h.get("/v1/jobs", params={"after": job_id}).status_code == 404
        assert wait_finished(full, job_id)["status"] == "succeeded"  # the refused cancel did nothing


async def test_websocket_needs_a_job_endpoint_and_resume_keeps_to_scopes(stack: Stack):
    keys = _tenant_keys(stack, models_only={"endpoints": ["/v1/models"]}, emb={"endpoints": ["/v1/embeddings"]})
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{keys['models_only']}"]) as ws:
        msg = await recv(ws)
        assert msg["status"] == 403 and msg["error"]["code"] == "forbidden"
        await ws.wait_closed()
        assert ws.close_code == 4403
    with _client(stack, keys["full"]) as full:
        job_id = full.post("/v1/jobs", json={"endpoint": CHAT, "body": {
            "model": "fake-vllm", "messages": scenario("ok")}}).json()["id"]
    async with websockets.connect(ws_url(stack), subprotocols=[f"bearer.{keys['emb']}"]) as ws:
        assert (await recv(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "resume", "id": "r1", "job_id": job_id}))
        msg = await recv(ws)
        assert msg["type"] == "error" and msg["status"] == 404, msg
        await ws.send(json.dumps({"type": "request", "id": "c1", "body": {
            "model": "fake-vllm", "messages": scenario("ok")}}))
        msg = await recv(ws)
        assert msg["type"] == "error" and msg["status"] == 403, msg  # each request is admitted per endpoint


def test_models_are_filtered_by_the_keys_model_globs(stack: Stack):
    keys = _tenant_keys(stack, fake={"models": ["fake-*"]})
    with _client(stack, keys["fake"]) as h:
        listed = [m["id"] for m in h.get("/v1/models").json()["data"]]
        assert listed and all(m.startswith("fake-") for m in listed)
        assert h.get("/v1/models/fake-vllm").status_code == 200
        r = h.get("/v1/models/smollm2-135m-instruct")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with _client(stack, keys["full"]) as h:
        assert "smollm2-135m-instruct" in [m["id"] for m in h.get("/v1/models").json()["data"]]
