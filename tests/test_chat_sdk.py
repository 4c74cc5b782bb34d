"""The chat path judged by the official OpenAI SDK against the real stack and the real model."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import MODEL


def test_stream_yields_text_from_the_real_model(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, stream=True, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "Say hello in one short sentence."}])
    job_id = raw.headers["x-job-id"]
    assert raw.headers["x-request-id"]
    chunks = list(raw.parse())
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" and c.id == job_id and c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_non_stream_returns_a_chat_completion(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "What is two plus two?"}])
    completion = raw.parse()
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.id == raw.headers["x-job-id"]
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    u = completion.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_include_usage_sends_a_final_usage_chunk(client: openai.OpenAI):
    chunks = list(client.chat.completions.create(
        model=MODEL, stream=True, max_tokens=8, temperature=0,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count from one to ten."}]))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == 8  # max_tokens reached: the engine's real count
    assert last.usage.total_tokens == last.usage.prompt_tokens + 8
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"


def test_models_list_shows_the_catalog(client: openai.OpenAI):
    ids = {m.id for m in client.models.list()}
    assert {MODEL, "fake-vllm", "unreachable", "victim"} <= ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_tool_call_deltas_pass_through_intact(client: openai.OpenAI):
    from tests.conftest import scenario

    chunks = list(client.chat.completions.create(model="fake-vllm", stream=True, messages=scenario("tools")))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "call_1" and calls[0].function.name == "get_weather"
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city": "Seoul"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    done = client.chat.completions.create(model="fake-vllm", messages=scenario("tools"))
    call = done.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "get_weather", '{"city": "Seoul"}')
    assert done.choices[0].finish_reason == "tool_calls"
