"""Per-tenant webhook endpoints: managed through the admin API and the CLI, and fed OpenAI events by
the `notify_tenant` activity, whose signed deliveries the official SDK's `webhooks.unwrap` accepts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import httpx
import nats
import openai
import pytest
from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from orchestration.streams import ensure_secrets_bucket
from orchestration.tenant_events import TenantEvents, WebhookEndpoints, event_id
from orchestration.webhooks import parse_allow_list
from schemas.tenant_webhooks import TenantEventInput, WebhookEndpointCreate
from switchyard.processes import ROOT
from tests.conftest import OTHER_KEY, Stack
from tests.eventually import eventually_async
from tests.fakes.receiver import Receiver


def admin(stack: Stack, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {key or stack.key}"}, timeout=30)


def new_tenant(stack: Stack) -> str:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with admin(stack) as a:
        assert a.post("/admin/tenants", json={"id": tenant}).status_code == 201
    return tenant


def test_operators_manage_a_tenants_endpoints(stack: Stack, receiver: Receiver):
    tenant = new_tenant(stack)
    path = f"/admin/tenants/{tenant}/webhooks"
    with admin(stack) as a:
        r = a.post(path, json={"url": f"{receiver.base}/ok", "event_types": ["batch.completed"], "name": "ops"})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["object"] == "webhook_endpoint" and created["id"].startswith("whep_")
        assert created["signing_secret"].startswith("whsec_")
        assert created["signing_secret_hint"] == "whsec_..." + created["signing_secret"][-4:]
        listed = a.get(path).json()["data"]
        assert [e["id"] for e in listed] == [created["id"]] and "signing_secret" not in listed[0]
        for body, param in [({"url": f"{receiver.base}/ok", "event_types": ["nope"]}, "event_types"),
                            ({"url": f"{receiver.base}/ok", "event_types": []}, "event_types"),
                            ({"url": "http://10.1.2.3/hook", "event_types": ["batch.failed"]}, "url")]:
            r = a.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert a.post("/admin/tenants/no-such-tenant/webhooks",
                      json={"url": f"{receiver.base}/ok", "event_types": ["batch.failed"]}).status_code == 404
        deleted = a.delete(f"{path}/{created['id']}")
        assert deleted.json() == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
        assert a.delete(f"{path}/{created['id']}").status_code == 404
        assert a.get(path).json()["data"] == []
    with admin(stack, OTHER_KEY) as user:  # a user key of another tenant
        assert user.get(path).status_code == 403


async def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWITCHYARD_NATS_URL": stack.nats_url, "SWITCHYARD_WEBHOOK_ALLOW": "127.0.0.1/32"}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "switchyard.cli", "webhooks", *args],
                                   capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60)


async def test_the_cli_adds_lists_and_removes(stack: Stack, receiver: Receiver):
    tenant = new_tenant(stack)
    r = await cli(stack, "add", tenant, f"{receiver.base}/ok", "--events", "response.completed,batch.failed",
                  "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["event_types"] == ["response.completed", "batch.failed"]
    assert created["signing_secret"].startswith("whsec_")
    r = await cli(stack, "list", tenant)
    assert r.returncode == 0 and created["id"] in r.stdout and created["signing_secret"] not in r.stdout
    r = await cli(stack, "add", tenant, f"{receiver.base}/ok", "--events", "video.completed")
    assert r.returncode == 1 and "event_types" in r.stderr
    r = await cli(stack, "add", "no-such-tenant", f"{receiver.base}/ok", "--events", "batch.failed")
    assert r.returncode == 1 and "no tenant" in r.stderr
    r = await cli(stack, "rm", tenant, created["id"])
    assert r.returncode == 0, r.stderr
    assert json.loads((await cli(stack, "list", tenant, "--json")).stdout) == []


@pytest.fixture
async def events(stack: Stack, temporal):
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    endpoints = await WebhookEndpoints.open(js)
    yield endpoints, TenantEvents(endpoints, temporal, await ensure_secrets_bucket(js), "cpu")
    await nc.close()


async def test_an_event_reaches_the_subscribed_endpoints_signed(stack: Stack, receiver: Receiver, temporal,
                                                                events):
    endpoints, notifier = events
    tenant = new_tenant(stack)
    hook = f"/tenant/{uuid.uuid4().hex}"
    other_hook = f"/tenant/{uuid.uuid4().hex}"
    allow = parse_allow_list("127.0.0.1/32")  # as the stack's SWITCHYARD_WEBHOOK_ALLOW
    subscribed = await endpoints.add(tenant, WebhookEndpointCreate(
        url=receiver.base + hook, event_types=["batch.completed", "batch.failed"]), allow)
    await endpoints.add(tenant, WebhookEndpointCreate(url=receiver.base + other_hook,
                                                      event_types=["response.completed"]), allow)
    event = TenantEventInput(tenant=tenant, type="batch.completed", data_id="batch_" + uuid.uuid4().hex,
                             created_at=int(time.time()))
    assert await notifier.notify_tenant(event) == 1
    assert await notifier.notify_tenant(event) == 1  # a retried activity: the same delivery, not a second
    delivery_id = f"{event_id(event)[4:]}_{subscribed.id[5:]}"
    assert await temporal.get_workflow_handle(f"{delivery_id}-webhook").result() == 200
    [(_, headers, body, _)] = receiver.for_path(hook)
    unwrapped = openai.OpenAI(api_key="unused", webhook_secret=subscribed.signing_secret).webhooks.unwrap(
        body, headers)
    assert unwrapped.type == "batch.completed" and unwrapped.data.id == event.data_id
    assert unwrapped.created_at == event.created_at and unwrapped.id.startswith("evt_")
    assert json.loads(body)["object"] == "event"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="unused", webhook_secret="whsec_" + "A" * 44).webhooks.unwrap(body, headers)
    assert receiver.for_path(other_hook) == []  # not subscribed to batch.completed


async def test_an_unknown_event_type_is_refused(events):
    _, notifier = events
    with pytest.raises(ApplicationError) as err:
        await notifier.notify_tenant(TenantEventInput(tenant="t", type="video.completed", data_id="v", created_at=1))
    assert err.value.non_retryable


@workflow.defn(name="NotifyTenantOnce")
class NotifyTenantOnce:
    """What the Batches, Responses and fine-tuning workflows do: the activity by name on the cpu queue."""

    @workflow.run
    async def run(self, event: TenantEventInput) -> int:
        return await workflow.execute_activity("notify_tenant", event, task_queue="cpu", result_type=int,
                                               start_to_close_timeout=timedelta(seconds=30))


async def test_the_worker_serves_notify_tenant_to_workflows(stack: Stack, receiver: Receiver, temporal):
    tenant = new_tenant(stack)
    hook = f"/tenant/{uuid.uuid4().hex}"
    with admin(stack) as a:
        r = a.post(f"/admin/tenants/{tenant}/webhooks", json={"url": receiver.base + hook,
                                                               "event_types": ["fine_tuning.job.succeeded"]})
        secret = r.json()["signing_secret"]
    event = TenantEventInput(tenant=tenant, type="fine_tuning.job.succeeded", data_id="ftjob-" + uuid.uuid4().hex,
                             created_at=int(time.time()))
    queue = f"test-notify-{uuid.uuid4().hex[:8]}"
    async with Worker(temporal, task_queue=queue, workflows=[NotifyTenantOnce],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        started = await temporal.execute_workflow(NotifyTenantOnce.run, event, id=f"notify-{uuid.uuid4().hex}",
                                                  task_queue=queue)
    assert started == 1
    [(_, headers, body, _)] = await eventually_async(lambda: receiver.for_path(hook), what="the delivery")
    unwrapped = openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(body, headers)
    assert unwrapped.type == "fine_tuning.job.succeeded" and unwrapped.data.id == event.data_id


async def test_concurrent_changes_to_a_tenants_endpoints_are_all_kept(stack: Stack, receiver: Receiver, events):
    """A tenant's endpoints are one KV value changed by compare-and-set: racing adds and removes lose
    nothing, and one lookup sees every endpoint at once."""
    endpoints, _ = events
    tenant = new_tenant(stack)
    allow = parse_allow_list("127.0.0.1/32")
    added = await asyncio.gather(*(endpoints.add(tenant, WebhookEndpointCreate(
        url=f"{receiver.base}/race/{i}", event_types=["batch.completed"]), allow) for i in range(6)))
    assert sorted(e.id for e in await endpoints.list(tenant)) == sorted(a.id for a in added)
    await asyncio.gather(*(endpoints.remove(tenant, a.id) for a in added[:3]))
    assert sorted(e.id for e in await endpoints.list(tenant)) == sorted(a.id for a in added[3:])
    assert len(await endpoints.subscribed(tenant, "batch.completed")) == 3
