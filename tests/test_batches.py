"""Batches (/v1/batches) with the official SDK against the real stack: files in, files out, in
OpenAI's line format; cancel; restarts midway; continue-as-new; priority; tenant isolation.

The module runs the stack's proxy with small windows (SWITCHYARD_BATCH_WINDOW=4) and an early
continue-as-new (SWITCHYARD_BATCH_LINES_PER_RUN=8), so a batch of a few dozen lines exercises both."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from temporalio.client import Client

from orchestration.converter import data_converter
from switchyard.processes import ROOT
from tests.conftest import OTHER_KEY, Stack
from tests.eventually import eventually
from tests.fakes.receiver import Receiver
from tests.fakes.vllm import REPLY
from tests.test_files import new_tenant

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
SMALL = {"SWITCHYARD_BATCH_WINDOW": "4", "SWITCHYARD_BATCH_LINES_PER_RUN": "8"}


def _proxy_with(stack: Stack, env: dict[str, str]) -> None:
    for name, value in env.items():
        if value:
            stack.env[name] = value
        else:
            stack.env.pop(name, None)
    stack.restart_proxy()


@pytest.fixture(scope="module")
def small_batches(stack: Stack):
    _proxy_with(stack, SMALL)
    yield stack
    _proxy_with(stack, {name: "" for name in SMALL})


def chat_line(custom_id: str, scenario: str = "ok", model: str = "fake-vllm", **params: Any) -> dict:
    extra = "".join(f";{k}={v}" for k, v in params.items())
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user",
                                                   "content": f"scenario={scenario};nonce={custom_id}{extra}"}]}}


def upload(client: openai.OpenAI, lines: list[Any]) -> str:
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return client.files.create(file=("input.jsonl", data), purpose="batch").id


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 120):
    def done():
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "cancelled", "expired") else None
    return eventually(done, timeout=timeout, interval=0.3, what=f"batch {batch_id} ended")


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).read().decode().splitlines()]


def by_custom_id(lines: list[dict]) -> dict[str, dict]:
    out = {line["custom_id"]: line for line in lines}
    assert len(out) == len(lines), "one line per custom_id"
    return out


def run_ids(stack: Stack, workflow_id: str) -> list[str]:
    async def runs() -> list[str]:
        temporal = await Client.connect(stack.temporal_address, data_converter=data_converter)
        return [w.run_id async for w in temporal.list_workflows(f"WorkflowId = '{workflow_id}'")]
    return asyncio.run(runs())


def history_sizes(stack: Stack, workflow_id: str) -> list[int]:
    """Events in each run of the workflow's continue-as-new chain."""
    async def sizes() -> list[int]:
        temporal = await Client.connect(stack.temporal_address, data_converter=data_converter)
        runs = [w.run_id async for w in temporal.list_workflows(f"WorkflowId = '{workflow_id}'")]
        return [len((await temporal.get_workflow_handle(workflow_id, run_id=r).fetch_history()).events)
                for r in runs]
    return asyncio.run(sizes())


def test_a_chat_batch_with_bad_lines_completes_with_both_files(small_batches: Stack):
    _, client = new_tenant(small_batches)
    tag = uuid.uuid4().hex[:8]
    good = [chat_line(f"{tag}-{i}", pad="x" * (6000 if i == 0 else 1)) for i in range(6)]  # one by reference
    lines = [*good[:3], "{not json", chat_line(f"{tag}-unknown", model="no-such-model"),
             {**good[1], "body": {**good[1]["body"]}}, *good[3:]]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h",
                                  metadata={"purpose": "test"})
    assert batch.object == "batch" and batch.id.startswith("batch_") and batch.status == "validating"
    assert batch.endpoint == CHAT and batch.metadata == {"purpose": "test"} and batch.completion_window == "24h"
    done = finished(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (9, 6, 3)
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.expires_at
    output = by_custom_id(read_lines(client, done.output_file_id))
    assert sorted(output) == sorted(line["custom_id"] for line in good)
    for custom_id, line in output.items():
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["choices"][0]["message"]["content"] == REPLY
        assert small_batches.fake is not None and small_batches.fake.calls[custom_id] == 1  # ran once
    errors = read_lines(client, done.error_file_id)
    assert len(errors) == 3
    malformed = next(e for e in errors if e["custom_id"] is None)
    assert malformed["response"] is None and malformed["error"]["code"] == "invalid_request"
    unknown = by_custom_id([e for e in errors if e["custom_id"] is not None])
    missing = unknown[f"{tag}-unknown"]["response"]
    assert missing["status_code"] == 404 and missing["body"]["error"]["code"] == "model_not_found"
    duplicate = unknown[f"{tag}-1"]
    assert duplicate["response"] is None and duplicate["error"]["code"] == "duplicate_custom_id"
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"


def test_the_tenants_webhook_endpoint_hears_batch_completed(small_batches: Stack, receiver: Receiver):
    tenant, client = new_tenant(small_batches)
    hook = f"/batches/{uuid.uuid4().hex}"
    with httpx.Client(base_url=small_batches.proxy_url, timeout=30,
                      headers={"authorization": f"Bearer {small_batches.key}"}) as admin:
        r = admin.post(f"/admin/tenants/{tenant}/webhooks", json={"url": receiver.base + hook,
                                                                   "event_types": ["batch.completed"]})
        assert r.status_code == 201, r.text
        secret = r.json()["signing_secret"]
    batch = client.batches.create(input_file_id=upload(client, [chat_line(uuid.uuid4().hex)]), endpoint=CHAT,
                                  completion_window="24h")
    assert finished(client, batch.id).status == "completed"
    [(_, headers, body, _)] = eventually(lambda: receiver.for_path(hook), what="the batch.completed delivery")
    event = openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(body, headers)
    assert event.type == "batch.completed" and event.data.id == batch.id


def test_an_embeddings_batch(small_batches: Stack):
    _, client = new_tenant(small_batches)
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": EMBED,
              "body": {"model": "smollm2-135m-embed", "input": f"sentence number {i}"}} for i in range(3)]
    done = finished(client, client.batches.create(input_file_id=upload(client, lines), endpoint=EMBED,
                                                  completion_window="24h").id)
    assert done.status == "completed" and done.request_counts.completed == 3 and done.error_file_id is None
    output = by_custom_id(read_lines(client, done.output_file_id))
    assert sorted(output) == ["e0", "e1", "e2"]
    body = output["e1"]["response"]["body"]
    assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 576


def test_a_responses_batch(small_batches: Stack):
    _, client = new_tenant(small_batches)
    tag = uuid.uuid4().hex[:8]
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
              "body": {"model": "fake-vllm", "input": f"scenario=ok;nonce={tag}-r{i}"}} for i in range(2)]
    done = finished(client, client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/responses",
                                                  completion_window="24h").id)
    assert done.status == "completed" and done.request_counts.completed == 2, done
    for line in by_custom_id(read_lines(client, done.output_file_id)).values():
        body = line["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"] == REPLY


def test_refusals_at_create(small_batches: Stack):
    _, client = new_tenant(small_batches)
    file_id = upload(client, [chat_line("x")])
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=file_id, endpoint="/v1/audio/speech", completion_window="24h")  # type: ignore[arg-type]
    assert err.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
    assert err.value.body["param"] == "completion_window"
    tune = client.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=tune, endpoint=CHAT, completion_window="24h")
    assert err.value.body["param"] == "input_file_id"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-" + "0" * 32, endpoint=CHAT, completion_window="24h")


def test_a_file_with_nothing_valid_fails_the_batch(small_batches: Stack):
    _, client = new_tenant(small_batches)
    done = finished(client, client.batches.create(input_file_id=upload(client, ["[1, 2]", chat_line("m", model="nope")]),
                                                  endpoint=CHAT, completion_window="24h").id)
    assert done.status == "failed" and done.failed_at and done.errors is not None
    assert [(e.code, e.line) for e in done.errors.data] == [("invalid_request", 1), ("model_not_found", 2)]
    assert done.output_file_id is None


def test_the_tenants_limits_and_quotas_apply(small_batches: Stack):
    """Two requests at once for a key: a window of 4 waits for its turns and completes. A key
    without token quota left: every line is an error line with the 429 the endpoint would give."""
    _, client = new_tenant(small_batches, limits={"concurrency": 2})
    tag = uuid.uuid4().hex[:8]
    lines = [chat_line(f"{tag}-{i}", "slow", delay="0.05") for i in range(6)]
    done = finished(client, client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT,
                                                  completion_window="24h").id)
    assert done.status == "completed" and done.request_counts.completed == 6, done
    _, broke = new_tenant(small_batches, limits={"daily_tokens": 1})
    done = finished(broke, broke.batches.create(input_file_id=upload(broke, [chat_line(f"{tag}-q{i}") for i in range(2)]),
                                                endpoint=CHAT, completion_window="24h").id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (0, 2)
    for line in read_lines(broke, done.error_file_id):
        assert line["response"]["status_code"] == 429
        assert line["response"]["body"]["error"]["code"] == "insufficient_quota"


def test_another_tenant_gets_404(small_batches: Stack):
    _, client = new_tenant(small_batches)
    file_id = upload(client, [chat_line(uuid.uuid4().hex)])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    other = openai.OpenAI(base_url=small_batches.proxy_url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert batch.id not in [b.id for b in other.batches.list()]
    assert finished(client, batch.id).status == "completed"
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_cancel_midway_keeps_the_finished_lines(small_batches: Stack):
    _, client = new_tenant(small_batches)
    tag = uuid.uuid4().hex[:8]
    lines = [chat_line(f"{tag}-{i}", "slow", delay="0.15") for i in range(16)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    eventually(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4, timeout=90,
               interval=0.2, what="the first window")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    output, errors = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert 4 <= len(output) < 16
    assert sorted(by_custom_id(output + errors)) == sorted(line["custom_id"] for line in lines)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (16, len(output), len(errors))
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: a no-op


def test_survives_proxy_and_worker_restarts_and_continues_as_new(small_batches: Stack):
    """24 lines in windows of 4, a new run every 8 lines; the proxy and the worker (SIGKILL) restart
    midway. Every custom_id answered exactly once, each whole (no line's text repeated)."""
    stack = small_batches
    assert stack.fake is not None
    _, client = new_tenant(stack)
    tag = uuid.uuid4().hex[:8]
    lines = [chat_line(f"{tag}-{i}", "slow", delay="0.05") for i in range(24)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    eventually(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4, timeout=90,
               interval=0.2, what="the first window")
    stack.restart_proxy()
    stack.restart_worker(kill=True)
    done = finished(client, batch.id, timeout=240)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (24, 0)
    output = by_custom_id(read_lines(client, done.output_file_id))
    assert sorted(output) == sorted(line["custom_id"] for line in lines)
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] == REPLY for line in output.values())
    calls = [stack.fake.calls[line["custom_id"]] for line in lines]
    assert sum(calls) <= 24 + 6, calls  # only lines in flight at the kill (1.5 windows at most) ran again
    assert len(run_ids(stack, batch.id)) >= 3  # continue-as-new every 8 lines


def test_interactive_requests_overtake_a_running_batch(small_batches: Stack):
    """A batch on a one-slot engine: a chat sent while batch lines wait in its queue is served next,
    before them (batch lines run at Temporal's least urgent priority)."""
    stack = small_batches
    assert stack.fake is not None
    _, client = new_tenant(stack)
    tag = uuid.uuid4().hex[:8]
    lines = [chat_line(f"{tag}-{i}", "slow", model="single-slot", delay="0.2") for i in range(8)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    seen = stack.fake.seen
    eventually(lambda: sum(f"nonce={tag}-" in s for s in seen) >= 2, timeout=60, what="the batch running")
    started = len(seen)
    nonce = f"interactive-{tag}"
    chat = client.chat.completions.create(
        model="single-slot", messages=[{"role": "user", "content": f"scenario=ok;nonce={nonce}"}])
    assert chat.choices[0].message.content == REPLY
    order = [s for s in seen[started:] if f"nonce={tag}-" in s or nonce in s]
    assert order.index(next(s for s in order if nonce in s)) <= 1, order  # at most the line taking the slot
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert finished(client, batch.id).status == "completed"


def test_a_larger_batch(small_batches: Stack):
    """2,000 chat lines (SWITCHYARD_BATCH_BENCH_LINES) on the fake engine with the default window (32)
    and continue-as-new every 1,024 lines; interactive chats meanwhile. The numbers go to
    benchmarks/results/batches.json."""
    stack = small_batches
    _proxy_with(stack, {name: "" for name in SMALL})
    try:
        _measure(stack, int(os.environ.get("SWITCHYARD_BATCH_BENCH_LINES", "2000")))
    finally:
        _proxy_with(stack, SMALL)


def _measure(stack: Stack, n: int) -> None:
    _, client = new_tenant(stack)
    tag = uuid.uuid4().hex[:8]
    file_id = upload(client, [chat_line(f"{tag}-{i}") for i in range(n)])
    started = time.perf_counter()
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    eventually(lambda: client.batches.retrieve(batch.id).request_counts.completed >= n // 10, timeout=600,
               interval=0.5, what="a tenth of the batch")
    interactive = []
    for i in range(5):  # while the batch runs: what an interactive request waits
        t0 = time.perf_counter()
        chat = client.chat.completions.create(model="fake-vllm", messages=[
            {"role": "user", "content": f"scenario=ok;nonce=interactive-{tag}-{i}"}])
        interactive.append(round(time.perf_counter() - t0, 3))
        assert chat.choices[0].message.content == REPLY
    running = client.batches.retrieve(batch.id).status
    done = finished(client, batch.id, timeout=3600)
    took = time.perf_counter() - started
    assert done.status == "completed" and done.request_counts.completed == n, done
    assert len(by_custom_id(read_lines(client, done.output_file_id))) == n
    results = {"lines": n, "engine": "fake-vllm (no delay)", "window": 32, "lines_per_run": 1024,
               "seconds": round(took, 1), "lines_per_s": round(n / took, 1),
               "validating_s": (done.in_progress_at or 0) - done.created_at,
               "history_events_per_run": history_sizes(stack, batch.id),
               "interactive_chat_s_during_batch": interactive, "batch_status_meanwhile": running,
               "machine": "2 shared cores (6 agents), stack of the test session",
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (ROOT / "benchmarks" / "results" / "batches.json").write_text(json.dumps(results, indent=2) + "\n")
