"""POST /v1/completions (legacy text completions) judged by the official SDK and curl against the
real stack and the real model."""

from __future__ import annotations

import json
import subprocess

import httpx
import openai
import pytest

from orchestration.continuation import completion_continuation_body
from tests.conftest import MODEL, Stack
from tests.jobclient import assert_resumed_once, stream_through_a_worker_kill, wait_result

EMBED_MODEL = "smollm2-135m-embed"
PROMPT = "The capital of France is"


def test_non_stream_returns_a_text_completion(client: openai.OpenAI):
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    completion = raw.parse()
    assert isinstance(completion, openai.types.Completion)
    assert completion.id == raw.headers["x-job-id"] and completion.id.startswith("cmpl-")
    assert completion.object == "text_completion" and completion.model == MODEL
    assert len(completion.choices) == 1 and completion.choices[0].index == 0
    assert completion.choices[0].text.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    u = completion.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_stream_gives_the_same_text_and_a_usage_chunk(client: openai.OpenAI):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    job_id = raw.headers["x-job-id"]
    chunks = list(raw.parse())
    assert all(c.object == "text_completion" and c.id == job_id and c.model == MODEL for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text  # greedy: the stream and the whole response agree
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason


def test_default_max_tokens_is_openais_16(client: openai.OpenAI):
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0)
    assert 0 < completion.usage.completion_tokens <= 16


def test_token_id_prompts(client: openai.OpenAI):
    for prompt in ([504, 3458, 282], [[504, 3458, 282]]):
        completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
        assert completion.usage.prompt_tokens >= 3 and completion.choices[0].text


def test_curl_streams_text_completion_chunks(stack: Stack):
    body = json.dumps({"model": MODEL, "prompt": "Count: one, two,", "max_tokens": 16, "stream": True,
                       "temperature": 0})
    out = subprocess.run(["curl", "-sN", stack.proxy_url + "/v1/completions",
                          "-H", f"Authorization: Bearer {stack.key}", "-H", "Content-Type: application/json",
                          "-d", body, "-D", "-"], capture_output=True, timeout=60, check=True).stdout.decode()
    head, _, sse = out.partition("\r\n\r\n")
    assert "content-type: text/event-stream" in head.lower() and "x-job-id: cmpl-" in head.lower()
    data = [line[6:] for line in sse.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) >= 3 and all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks).strip()
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert any(line.startswith("id: ") for line in sse.splitlines())


def test_prefer_respond_async_and_the_jobs_api(http: httpx.Client, client: openai.OpenAI):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    r = http.post("/v1/completions", json=body, headers={"prefer": "respond-async"})
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}" and r.json()["endpoint"] == "/v1/completions"
    result = wait_result(http, job_id)
    assert result.status_code == 200
    done = result.json()
    assert done["object"] == "text_completion" and done["id"] == job_id
    assert done["choices"][0]["text"] == client.completions.create(**body).choices[0].text

    r = http.post("/v1/jobs", json={"endpoint": "/v1/completions", "body": {**body, "stream": True}})
    assert r.status_code == 202
    job = r.json()
    assert job["endpoint"] == "/v1/completions" and job["model"] == MODEL
    assert wait_result(http, job["id"]).json()["choices"][0]["text"] == done["choices"][0]["text"]
    with http.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
        lines = [line for line in events.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line[6:]) for line in lines]
    assert any(c.get("object") == "text_completion" for c in chunks)


@pytest.mark.parametrize("body, param", [
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["text", [1, 2]]}, "prompt"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "logprobs": 2}, "logprobs"),
    ({"prompt": "x", "max_tokens": 100000}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({}, "prompt"),
])
def test_invalid_requests_name_the_field(http: httpx.Client, body: dict, param: str):
    r = http.post("/v1/completions", json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert "x-job-id" not in r.headers


def test_a_model_that_cannot_complete_is_refused_before_any_job(http: httpx.Client, client: openai.OpenAI):
    r = http.post("/v1/completions", json={"model": EMBED_MODEL, "prompt": "hi"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["code"], err["param"], err["type"]) == ("unsupported_capability", "model", "invalid_request_error")
    assert "x-job-id" not in r.headers  # no workflow was started
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBED_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "unsupported_capability"
    r = http.post("/v1/completions", json={"model": "no-such-model", "prompt": "hi"})
    assert r.status_code == 404


def test_continuation_appends_the_delivered_text_to_the_prompt():
    body = {"model": "m", "prompt": "Count: one,", "max_tokens": 10}
    assert completion_continuation_body(body, " two, three", 3) == {
        "model": "m", "prompt": "Count: one, two, three", "max_tokens": 7}
    assert completion_continuation_body({**body, "prompt": ["Count:"]}, " one", 1)["prompt"] == "Count: one"
    assert completion_continuation_body({**body, "max_tokens": 2}, "x y z", 5)["max_tokens"] == 1
    assert completion_continuation_body({**body, "prompt": [1, 2, 3]}, "x", 1) is None  # token ids
    assert completion_continuation_body({**body, "echo": True}, "x", 1) is None


def test_worker_killed_mid_stream_continues_the_completion_once(stack: Stack):
    """The retried attempt appends the delivered text to the prompt: the client sees one text."""
    body = {"model": "durable", "stream": True, "max_tokens": 120, "temperature": 0,
            "prompt": "Numbers from 1 to 60: 1, 2, 3,"}
    headers = {"authorization": f"Bearer {stack.key}"}
    job_id, before_crash, text = stream_through_a_worker_kill(stack, "/v1/completions", body)
    assert text.startswith(before_crash) and len(text) > len(before_crash) + 10
    assert text.count(before_crash) == 1
    baseline = httpx.post(stack.proxy_url + "/v1/completions", headers=headers,
                          json={**body, "stream": False}, timeout=120).json()
    assert text == baseline["choices"][0]["text"]  # greedy: as if nothing had happened
    with httpx.Client(base_url=stack.proxy_url, headers=headers) as http:
        assert_resumed_once(http, job_id)
        assert http.get(f"/v1/jobs/{job_id}/result").json()["choices"][0]["text"] == text


async def test_completions_and_embeddings_over_the_websocket(stack: Stack):
    import asyncio

    import websockets

    url = stack.proxy_url.replace("http://", "ws://") + "/v1/ws"
    async with websockets.connect(url, subprotocols=[f"bearer.{stack.key}"]) as ws:
        async def recv() -> dict:
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

        assert (await recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "request", "id": "c", "endpoint": "/v1/completions",
                                  "body": {"model": MODEL, "prompt": PROMPT, "max_tokens": 6}}))
        await ws.send(json.dumps({"type": "request", "id": "e", "endpoint": "/v1/embeddings",
                                  "body": {"model": EMBED_MODEL, "input": "hello"}}))
        chunks, done, events = [], set(), []
        while done != {"c", "e"}:
            msg = await recv()
            if msg["type"] == "done":
                done.add(msg["id"])
            elif msg["type"] == "event":
                events.append((msg["id"], msg["event"]))
                if msg["event"] == "chunk":
                    chunks.append(msg["data"])
            else:
                assert msg["type"] == "accepted", msg
    assert chunks and all(c["object"] == "text_completion" and c["id"].startswith("cmpl-") for c in chunks)
    assert ("c", "job.succeeded") in events and ("e", "job.succeeded") in events
