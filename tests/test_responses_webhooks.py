"""A response's end reaches its tenant's webhook endpoints as OpenAI's `response.*` events, signed so
the official SDK's `webhooks.unwrap` accepts them: completed, incomplete, cancelled and failed."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.conftest import MODEL, Stack
from tests.eventually import eventually
from tests.fakes.receiver import Receiver

EVENTS = ["response.completed", "response.incomplete", "response.cancelled", "response.failed"]


@pytest.fixture(scope="module")
def tenant(stack: Stack, receiver: Receiver):
    """A fresh tenant with one endpoint for every response event, and an SDK client on its key."""
    tenant, hook = f"t-{uuid.uuid4().hex[:10]}", f"/responses/{uuid.uuid4().hex}"
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}, timeout=30) as a:
        assert a.post("/admin/tenants", json={"id": tenant}).status_code == 201
        r = a.post(f"/admin/tenants/{tenant}/webhooks", json={"url": receiver.base + hook, "event_types": EVENTS})
        assert r.status_code == 201, r.text
        secret = r.json()["signing_secret"]
        key = a.post("/admin/keys", json={"tenant": tenant}).json()["key"]
    client = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=key, max_retries=0, timeout=60)
    return client, hook, openai.OpenAI(api_key="unused", webhook_secret=secret)


def delivered(receiver: Receiver, hook: str, verifier: openai.OpenAI, response_id: str):
    """The verified event about `response_id`, once it arrived."""
    def find():
        for _, headers, body, _ in receiver.for_path(hook):
            event = verifier.webhooks.unwrap(body, headers)  # raises on a bad signature
            if event.data.id == response_id:
                return event
        return None
    return eventually(find, 60, what=f"the webhook about {response_id}")


def said(text: str) -> str:
    return f"scenario={text};nonce={uuid.uuid4().hex}"


def test_completed_and_incomplete_responses_are_announced(tenant, receiver: Receiver):
    client, hook, verifier = tenant
    done = client.responses.create(model="fake-vllm", input=said("ok"))
    assert delivered(receiver, hook, verifier, done.id).type == "response.completed"
    cut = client.responses.create(model=MODEL, input="Write a long story about the sea.", max_output_tokens=4)
    assert cut.status == "incomplete"
    assert delivered(receiver, hook, verifier, cut.id).type == "response.incomplete"


def test_a_cancelled_background_response_is_announced(tenant, receiver: Receiver):
    client, hook, verifier = tenant
    started = client.responses.create(model="fake-vllm", input=said("slow"), background=True)
    client.responses.cancel(started.id)
    event = delivered(receiver, hook, verifier, started.id)
    assert event.type == "response.cancelled"
    assert client.responses.retrieve(started.id).status == "cancelled"


def test_a_failed_response_is_announced(tenant, receiver: Receiver):
    client, hook, verifier = tenant
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="fake-vllm", input=said("bad-request"))
    response_id = err.value.response.headers["x-job-id"]
    assert delivered(receiver, hook, verifier, response_id).type == "response.failed"
