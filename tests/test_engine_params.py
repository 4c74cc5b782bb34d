"""What of a request reaches the engine, on the real stack: OpenAI's fields and the catalog's
`extra_params` only; a default `max_tokens` the reservation matches; content parts the model's
engine was declared to take; bounds on what a body may hold; cheap refusals before the decode."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from gatekeeping.admission import estimate_prompt_tokens
from tests.conftest import MODEL, Stack, scenario
from tests.test_gatekeeping import admin, new_tenant

CHAT = "/v1/chat/completions"
TUNED = "fake-vllm-tuned"    # extra_params [top_k, repetition_penalty]; max_tokens 200, default 77; 8 messages
VISION = "fake-vllm-vision"  # capabilities [chat, vision]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def sent_to_engine(stack: Stack, messages: list[dict]) -> list[dict]:
    """The bodies the fake engine received for this request (its nonce is in the last message)."""
    last = messages[-1]["content"]
    nonce = (last if isinstance(last, str) else last[0]["text"]).split("nonce=")[1]
    return [b for b in stack.fake.bodies if nonce in str(b["messages"][-1]["content"])]


def error_of(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.mark.parametrize("extra", [{"n_predict": -1}, {"ignore_eos": True}, {"min_tokens": 100},
                                   {"max_new_tokens": 4000}])
def test_engine_length_options_are_refused_and_never_reach_the_engine(stack: Stack, http: httpx.Client,
                                                                       extra: dict):
    name = next(iter(extra))
    messages = scenario("ok")
    r = http.post(CHAT, json={"model": TUNED, "messages": messages, "max_tokens": 1, **extra})
    error = error_of(r)
    assert error["param"] == name and error["code"] == "unknown_parameter"
    assert error["message"].startswith(f"Unrecognized request argument supplied: {name}")
    job = http.post("/v1/jobs", json={"endpoint": CHAT, "body": {"model": TUNED, "messages": messages, **extra}})
    assert error_of(job)["param"] == name  # the jobs API prepares the same way
    assert sent_to_engine(stack, messages) == []


def test_completions_and_embeddings_refuse_unknown_fields(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="Once", max_tokens=1, extra_body={"n_predict": -1})
    assert info.value.param == "n_predict"
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2-135m-embed", input="hi", extra_body={"truncate_prompt_tokens": 1})
    assert info.value.param == "truncate_prompt_tokens"


def test_catalog_extras_and_openai_fields_pass_platform_fields_stay(stack: Stack, client: openai.OpenAI):
    messages = scenario("ok")
    done = client.chat.completions.create(
        model=TUNED, messages=messages, max_tokens=9, temperature=0.5, stop=["\n\n"], seed=7, user="u1",
        store=True, metadata={"k": "v"},
        extra_body={"top_k": 5, "repetition_penalty": 1.1, "priority": "normal"})
    assert done.choices[0].message.content
    [body] = sent_to_engine(stack, messages)
    assert body["top_k"] == 5 and body["repetition_penalty"] == 1.1
    assert body["max_tokens"] == 9 and body["temperature"] == 0.5 and body["stop"] == ["\n\n"]
    assert "store" not in body and "metadata" not in body  # OpenAI platform fields: accepted, not sent
    with pytest.raises(openai.BadRequestError) as info:  # not this model's extra
        client.chat.completions.create(model="fake-vllm", messages=scenario("ok"), extra_body={"top_k": 5})
    assert info.value.param == "top_k"


def test_catalog_default_params_fill_only_what_the_request_leaves_out(stack: Stack, client: openai.OpenAI):
    messages = scenario("ok")  # fake-vllm-tuned: default_params {stop: ["<END>"], top_k: 40}
    client.chat.completions.create(model=TUNED, messages=messages)
    [body] = sent_to_engine(stack, messages)
    assert body["stop"] == ["<END>"] and body["top_k"] == 40
    messages = scenario("ok")
    client.chat.completions.create(model=TUNED, messages=messages, stop="\n", extra_body={"top_k": 3})
    [body] = sent_to_engine(stack, messages)
    assert body["stop"] == "\n" and body["top_k"] == 3
    messages = scenario("ok")  # the Responses API translated to chat gets them too
    client.responses.create(model=TUNED, input=messages[-1]["content"])
    [body] = sent_to_engine(stack, messages)
    assert body["stop"] == ["<END>"] and body["top_k"] == 40
    messages = scenario("ok")
    client.chat.completions.create(model="fake-vllm", messages=messages)
    [body] = sent_to_engine(stack, messages)
    assert "stop" not in body and "top_k" not in body


def test_default_max_tokens_reaches_the_engine_and_the_reservation(stack: Stack):
    _, key = new_tenant(stack, limits={"tpm": 100_000})
    messages = scenario("ok")
    r = httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": TUNED, "messages": messages, "max_tokens": None})
    assert r.status_code == 200, r.text
    [body] = sent_to_engine(stack, messages)
    assert body["max_tokens"] == 77  # the catalog's default_max_tokens, not the engine's "until the context ends"
    reserved = 100_000 - int(r.headers["x-ratelimit-remaining-tokens"])
    assert abs(reserved - (estimate_prompt_tokens(messages) + 77)) <= 2

    messages = scenario("ok")  # max_completion_tokens is a limit too: no max_tokens is added
    r = httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": TUNED, "messages": messages, "max_completion_tokens": 5})
    assert r.status_code == 200, r.text
    [body] = sent_to_engine(stack, messages)
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body
    over = httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": TUNED, "messages": messages, "max_completion_tokens": 201})
    assert error_of(over)["param"] == "max_completion_tokens"


def parts(*extra: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": f"scenario=ok;nonce={uuid.uuid4().hex}"}, *extra]}]


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "audio_url", "audio_url": {"url": "http://10.0.0.1/a.wav"}},
    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
])
def test_media_parts_to_a_text_model_are_400(stack: Stack, http: httpx.Client, part: dict):
    messages = parts(part)
    error = error_of(http.post(CHAT, json={"model": "fake-vllm", "messages": messages}))
    assert error["param"] == "messages[0].content[1].type" and error["code"] == "unsupported_content_part"
    assert part["type"] in error["message"]
    assert sent_to_engine(stack, messages) == []


def test_vision_model_takes_data_and_https_images_only(stack: Stack, http: httpx.Client):
    messages = parts({"type": "image_url", "image_url": {"url": PNG}})
    assert http.post(CHAT, json={"model": VISION, "messages": messages}).status_code == 200
    [body] = sent_to_engine(stack, messages)
    assert body["messages"][0]["content"][1]["image_url"]["url"] == PNG
    for url in ("http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "ftp://10.0.0.1/x.png"):
        r = http.post(CHAT, json={"model": VISION, "messages": parts({"type": "image_url", "image_url": {"url": url}})})
        assert error_of(r)["param"] == "messages[0].content[1].image_url.url"
    audio = parts({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}})
    assert error_of(http.post(CHAT, json={"model": VISION, "messages": audio}))["code"] == "unsupported_content_part"


@pytest.mark.parametrize("extra, param", [
    ({"messages": [{"role": "user", "content": "x"}] * 9}, "messages"),  # the catalog's max_messages: 8
    ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
])
def test_bounds_on_what_a_body_holds(http: httpx.Client, extra: dict, param: str):
    r = http.post(CHAT, json={"model": TUNED, "messages": scenario("ok"), **extra})
    assert error_of(r)["param"] == param


def test_key_and_model_refusals_come_before_the_body_is_decoded(stack: Stack, http: httpx.Client):
    # Nested past the decoder's limit: the decode would refuse it (invalid_json), so a 404/403
    # shows the answer came from the partial parse of `model` alone, before any decode.
    deep = b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "pad": ' + \
        b"[" * 100 + b"]" * 100 + b"}"
    r = http.post(CHAT, content=deep, headers={"content-type": "application/json"})
    assert error_of(r, 404)["code"] == "model_not_found"
    tenant, _ = new_tenant(stack)
    with admin(stack) as a:
        embed_only = a.post("/admin/keys", json={"tenant": tenant, "endpoints": ["/v1/embeddings"]}).json()["key"]
        fake_only = a.post("/admin/keys", json={"tenant": tenant, "models": ["fake-*"]}).json()["key"]
    r = httpx.post(stack.proxy_url + CHAT, content=deep, headers={"authorization": f"Bearer {embed_only}"})
    assert error_of(r, 403)["code"] == "forbidden"
    ours = deep.replace(b"no-such-model", MODEL.encode())
    r = httpx.post(stack.proxy_url + CHAT, content=ours, headers={"authorization": f"Bearer {fake_only}"})
    assert error_of(r, 404)["code"] == "model_not_found"
    assert error_of(http.post(CHAT, content=ours))["code"] == "invalid_json"  # a model it may use: decoded
