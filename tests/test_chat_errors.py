"""Errors in OpenAI's envelope with OpenAI's status codes, before and after a stream begins."""

from __future__ import annotations

import asyncio

import os
import signal
import uuid

import httpx
import openai
import pytest

from switchyard.processes import start_engine
from tests.jobclient import read_events
from tests.conftest import MODEL, Stack, scenario

HELLO = [{"role": "user", "content": "hi"}]


def assert_envelope(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error


def test_bad_key_is_401(stack: Stack):
    bad = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    r = httpx.post(stack.proxy_url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert assert_envelope(r, 401)["code"] == "invalid_api_key"


def test_unknown_model_is_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-99", messages=HELLO)
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "messages": HELLO, "temperature": 7}, "temperature"),
    ({"model": MODEL, "messages": HELLO, "max_tokens": "lots"}, "max_tokens"),
    ({"model": MODEL, "messages": HELLO, "max_tokens": 100000}, "max_tokens"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL}, "messages"),
    ({"messages": HELLO}, "model"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": HELLO, "n": 3}, "n"),
])
def test_invalid_parameter_is_400_naming_it(http: httpx.Client, body: dict, param: str):
    assert_envelope(http.post("/v1/chat/completions", json=body), 400, param)


def test_sdk_sees_bad_request_with_param(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, top_p=3)
    assert info.value.param == "top_p"


def test_unknown_fields_are_400_and_catalog_extras_pass(client: openai.OpenAI):
    done = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, extra_body={"top_k": 5})
    assert done.choices[0].message.content is not None  # top_k: in the model's extra_params
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4,
                                       extra_body={"top_k": 5, "some_future_field": {"x": 1}})
    assert info.value.param == "some_future_field" and info.value.code == "unknown_parameter"


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"null"])
def test_malformed_body_is_400(http: httpx.Client, content: bytes):
    r = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert assert_envelope(r, 400)["code"] == "invalid_json"


def test_oversized_body_is_413(http: httpx.Client):
    huge = "x" * (33 * 1024 * 1024)  # over the 32 MiB default
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": huge}]})
    assert_envelope(r, 413)


def test_unknown_route_is_404_envelope(http: httpx.Client):
    assert_envelope(http.get("/v1/nothing-here"), 404)


def test_engine_unreachable_is_503_after_retries(client: openai.OpenAI, stack: Stack):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="unreachable", messages=HELLO)
    assert info.value.status_code == 503
    assert info.value.code == "engine_unavailable"
    with pytest.raises(openai.InternalServerError) as info:
        list(client.chat.completions.create(model="unreachable", messages=HELLO, stream=True))
    assert info.value.status_code == 503


async def test_engine_503_twice_is_retried_into_one_clean_stream(client: openai.OpenAI, js, temporal, stack: Stack):
    messages = scenario("503x2")
    raw = client.chat.completions.with_raw_response.create(model="fake-vllm", stream=True, messages=messages)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    from tests.fakes.vllm import REPLY

    assert text == REPLY
    handle = temporal.get_workflow_handle(raw.headers["x-job-id"])
    await handle.result()  # the stream ends before the workflow records the activity's completion
    history = await handle.fetch_history()
    # The dispatched run met the first 503; the takeover on the model's queue met the second, and
    # its retry the answer.
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    started = [e.activity_task_started_event_attributes.attempt for e in history.events
               if e.HasField("activity_task_started_event_attributes")]
    assert scheduled == ["adopt", "inference"] and started == [1, 2]
    assert stack.fake.calls[messages[0]["content"].split("nonce=")[1]] == 3


def test_non_retryable_engine_error_is_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-vllm", messages=scenario("bad-request"))
    assert "maximum context length" in info.value.message


def test_engine_killed_mid_stream_gives_in_band_error(stack: Stack, tmp_path):
    victim = start_engine(stack.victim_port, tmp_path)
    try:
        with httpx.Client(timeout=60) as h, h.stream(
                "POST", stack.proxy_url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {stack.key}"},
                json={"model": "victim", "stream": True, "max_tokens": 1000, "temperature": 1.0,
                      "messages": [{"role": "user", "content": "Write a very long story about ships."}]}) as r:
            assert r.status_code == 200
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        os.kill(victim.proc.pid, signal.SIGKILL)
    finally:
        victim.kill()
    assert events[-1] == "[DONE]"
    import json

    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "engine_unavailable"  # retried (continuing the text), then given up
    assert all("choices" in json.loads(e) for e in events[:3])


def test_every_response_has_a_request_id(stack: Stack, http: httpx.Client):
    mine = f"trace-{uuid.uuid4().hex[:8]}"
    assert http.get("/v1/models", headers={"x-request-id": mine}).headers["x-request-id"] == mine
    assert httpx.get(stack.proxy_url + "/v1/models").headers["x-request-id"].startswith("req_")
    assert httpx.get(stack.proxy_url + "/healthz").headers["x-request-id"]
    bad = http.get("/v1/models", headers={"x-request-id": "bad id\twith spaces"})
    assert bad.headers["x-request-id"].startswith("req_")


async def test_no_worker_for_the_queue_is_503_not_a_hang(client: openai.OpenAI, temporal, http):
    from temporalio.client import WorkflowExecutionStatus

    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.with_raw_response.create(model="orphan", messages=HELLO)
    assert info.value.status_code == 503 and info.value.code == "no_capacity"
    assert info.value.response.headers.get("retry-after"), (dict(info.value.response.headers), info.value.message)
    job_id = info.value.response.headers["x-job-id"]
    # The job ended itself: closed (no ghost job runs after the client got 503), its stream ended.
    with pytest.raises(Exception):
        await asyncio.wait_for(temporal.get_workflow_handle(job_id).result(), 30)  # it settles, then ends
    desc = await temporal.get_workflow_handle(job_id).describe()
    assert desc.status == WorkflowExecutionStatus.FAILED
    events = read_events(http, job_id)
    assert events[-1]["event"] == "job.failed" and "no_capacity" in events[-1]["data"]


def test_stream_waiting_for_capacity_gets_keepalives_then_in_band_error(stack: Stack):
    with httpx.Client(timeout=30) as h, h.stream(
            "POST", stack.proxy_url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {stack.key}"},
            json={"model": "orphan", "stream": True, "messages": HELLO}) as r:
        assert r.status_code == 200  # committed after the header wait, before capacity was known
        lines = [line for line in r.iter_lines() if line]
    assert ": keep-alive" in lines
    import json

    data = [line[6:] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["code"] == "no_capacity"
