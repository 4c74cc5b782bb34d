"""TGI and Triton through the whole durable path (proxy → Temporal → worker → adapter → engine →
JetStream → SSE), judged with the official SDK against the wire-faithful fakes (tests/fakes/)."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Stack, scenario
from tests.fakes import tgi as fake_tgi
from tests.fakes import triton as fake_triton

ENGINES = {"fake-tgi": fake_tgi.REPLY, "fake-triton": fake_triton.REPLY}
# Triton's generate extension reports no token counts unless the model has count tensors: usage is 0.
COUNTS = {"fake-tgi": True, "fake-triton": False}


def attempts(stack: Stack, model: str, messages: list[dict[str, str]]) -> int:
    """How many times the engine was called for this request (its nonce)."""
    nonce = messages[-1]["content"].split("nonce=")[1]
    fake = stack.tgi if model == "fake-tgi" else stack.triton
    return sum(nonce in str(body) for _, body in list(fake.requests))


@pytest.mark.parametrize("model", sorted(ENGINES))
def test_chat_streams_through_the_durable_path(client: openai.OpenAI, model: str):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=scenario("ok"), stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-job-id"].startswith("chatcmpl-")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ENGINES[model]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert {c.id for c in chunks} == {raw.headers["x-job-id"]}
    assert all(c.model == model for c in chunks)
    assert chunks[-1].usage is not None and (chunks[-1].usage.completion_tokens > 0) == COUNTS[model]


@pytest.mark.parametrize("model", sorted(ENGINES))
def test_chat_non_streaming(client: openai.OpenAI, model: str):
    done = client.chat.completions.create(model=model, messages=scenario("ok"))
    assert done.object == "chat.completion"
    assert done.model == model
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == ENGINES[model]
    assert done.choices[0].finish_reason == "stop"
    assert (done.usage.completion_tokens > 0) == COUNTS[model]


@pytest.mark.parametrize("model", sorted(ENGINES))
def test_length_finish_reason(client: openai.OpenAI, model: str):
    done = client.chat.completions.create(model=model, messages=scenario("length"))
    assert done.choices[0].finish_reason == "length"


def test_tgi_422_is_400_not_retried(client: openai.OpenAI, stack: Stack):
    messages = scenario("http-422")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-tgi", messages=messages)
    assert info.value.status_code == 400
    assert info.value.code == "engine_rejected"
    assert "fake error 422" in info.value.message
    assert attempts(stack, "fake-tgi", messages) == 1


def test_tgi_validation_event_is_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        list(client.chat.completions.create(model="fake-tgi", messages=scenario("validation"), stream=True))
    assert info.value.code == "engine_rejected"


@pytest.mark.parametrize("model, name", [("fake-tgi", "http-429"), ("fake-tgi", "overloaded"),
                                         ("fake-triton", "http-503")])
def test_overloaded_engine_is_retried_then_503(client: openai.OpenAI, stack: Stack, model: str, name: str):
    messages = scenario(name)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=model, messages=messages)
    assert info.value.status_code == 503
    body = info.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert info.value.code in ("engine_unavailable", "engine_overloaded")
    assert attempts(stack, model, messages) == 3  # the catalog's maximum_attempts


@pytest.mark.parametrize("model, code", [
    ("fake-tgi", "stream_restarted"),       # TGI cannot continue a prefix: the retry starts over
    ("fake-triton", "engine_generation_error"),  # continued from the delivered text, failed again, given up
])
def test_error_after_output_is_in_band(client: openai.OpenAI, model: str, code: str):
    stream = client.chat.completions.create(model=model, messages=scenario("midstream"), stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text and ENGINES[model].startswith(text)
    assert info.value.code == code
