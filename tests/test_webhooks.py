"""Signed webhooks when a job ends: verified by the OpenAI SDK, retried durably, SSRF-checked."""

from __future__ import annotations

import base64
import json
import os
import time

import httpx
import openai
import pytest

from tests.conftest import MODEL
from tests.eventually import eventually
from tests.fakes.receiver import Receiver
from tests.jobclient import wait_finished

CHAT = "/v1/chat/completions"
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def create(http: httpx.Client, url: str, secret: str = SECRET) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    return http.post("/v1/jobs", json={"endpoint": CHAT, "body": body, "webhook": {"url": url, "secret": secret}})


def wait_deliveries(receiver: Receiver, path: str, n: int, timeout: float = 30) -> list:
    def delivered() -> list:
        got = receiver.for_path(path)
        assert len(got) >= n, f"{len(got)} deliveries to {path}, wanted {n}"
        return got

    return eventually(delivered, timeout, interval=0.05)


def test_webhook_is_signed_and_verifiable_with_the_openai_sdk(http: httpx.Client, receiver: Receiver):
    job_id = create(http, receiver.base + "/ok").json()["id"]
    wait_finished(http, job_id)
    (_, headers, body, _), = wait_deliveries(receiver, "/ok", 1)
    client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    client.webhooks.verify_signature(body, headers)  # raises if the signature is wrong
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body + b" ", headers)
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id
    assert event["data"]["usage"]["completion_tokens"] > 0
    assert headers["webhook-id"] and headers["webhook-signature"].startswith("v1,")


def test_failing_receiver_gets_it_on_the_third_try(http: httpx.Client, receiver: Receiver):
    job_id = create(http, receiver.base + "/flaky/2").json()["id"]
    deliveries = wait_deliveries(receiver, "/flaky/2", 3)
    assert len({d[1]["webhook-id"] for d in deliveries}) == 1  # one message, three tries
    gaps = [b[3] - a[3] for a, b in zip(deliveries, deliveries[1:])]
    assert all(g > 0.05 for g in gaps)  # backed off, not hammered
    assert json.loads(deliveries[-1][2])["data"]["id"] == job_id
    time.sleep(1.0)
    assert len(receiver.for_path("/flaky/2")) == 3  # success stops the retries


def test_410_stops_delivery(http: httpx.Client, receiver: Receiver):
    create(http, receiver.base + "/gone")
    wait_deliveries(receiver, "/gone", 1)
    time.sleep(1.5)
    assert len(receiver.for_path("/gone")) == 1


@pytest.mark.parametrize("url", ["http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data",
                                 "http://192.168.0.10/x", "http://[::1]:8080/x", "ftp://example.com/x",
                                 "http://0.0.0.0:1/x", "http://user:pw@example.com/x"])
def test_private_targets_are_refused_at_creation(http: httpx.Client, url: str):
    r = create(http, url)
    assert r.status_code == 400 and r.json()["error"]["param"] == "webhook.url"


def test_bad_secret_is_400(http: httpx.Client, receiver: Receiver):
    r = create(http, receiver.base + "/ok", secret="hunter2")
    assert r.status_code == 400 and r.json()["error"]["param"] == "webhook.secret"
