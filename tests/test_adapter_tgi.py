"""The TGI adapter against a fake that speaks TGI's and TEI's wire format (tests/fakes/tgi.py)."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from adapters.base import EngineError, UnsupportedCapability
from adapters.registry import build_adapter
from adapters.tgi import TGIAdapter
from schemas.catalog import EngineSpec
from switchyard.processes import free_port
from tests.fakes.tgi import PROMPT_TOKENS, REPLY, FakeTGI, vector


@pytest.fixture(scope="module")
def fake():
    server = FakeTGI()
    port = free_port()
    server.start(port)
    server.url = f"http://127.0.0.1:{port}"
    yield server
    server.stop()


def spec(url: str, **extra) -> EngineSpec:
    return msgspec.convert({"kind": "tgi", "url": url, "connect_timeout_s": 1, "read_timeout_s": 10, **extra},
                           EngineSpec)


@pytest.fixture
async def tgi(fake):
    adapter = build_adapter(spec(fake.url))
    yield adapter
    await adapter.aclose()


def prompt(scenario: str) -> tuple[str, str]:
    nonce = uuid.uuid4().hex
    return f"scenario={scenario};nonce={nonce}", nonce


def chat(text: str, **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


async def collect(stream):
    pieces = [p async for p in stream]
    text = "".join(p.content for p in pieces)
    finish = [p.finish_reason for p in pieces if p.finish_reason]
    usage = [p.usage for p in pieces if p.usage is not None]
    return text, finish, usage


async def failure(stream) -> tuple[str, EngineError]:
    text = ""
    with pytest.raises(EngineError) as info:
        async for piece in stream:
            text += piece.content
    return text, info.value


def test_capabilities_are_declared_and_narrowed(fake):
    assert TGIAdapter(spec(fake.url)).capabilities == {"chat", "completions", "embeddings"}
    tei = TGIAdapter(spec(fake.url, capabilities=["embeddings"]))
    assert tei.capabilities == {"embeddings"}
    with pytest.raises(msgspec.ValidationError, match="prefix_continuation"):  # caught by catalog checks
        spec(fake.url, capabilities=["chat", "prefix_continuation"])


async def test_a_capability_the_deployment_lacks_is_a_clear_400(fake):
    tei = TGIAdapter(spec(fake.url, capabilities=["embeddings"]))
    with pytest.raises(UnsupportedCapability) as info:
        async for _ in tei.stream_chat(chat("hi")):
            pass
    assert info.value.status == 400 and not info.value.retryable and "chat" in info.value.message
    await tei.aclose()


async def test_chat_streams_text_finish_and_usage(fake, tgi):
    text, finish, usage = await collect(tgi.stream_chat(chat(prompt("ok")[0], max_tokens=50)))
    assert text == REPLY
    assert finish == ["stop"]
    n = len(REPLY.split(" ")) + 1
    assert usage and usage[-1].prompt_tokens == PROMPT_TOKENS and usage[-1].completion_tokens == n
    path, sent = fake.requests[-1]
    assert path == "/v1/chat/completions" and sent["model"] == "tgi"  # not read as a LoRA adapter id
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_chat_sends_the_served_name_when_set(fake):
    adapter = build_adapter(spec(fake.url, served_name="my-lora"))
    await collect(adapter.stream_chat(chat(prompt("ok")[0])))
    assert fake.requests[-1][1]["model"] == "my-lora"
    await adapter.aclose()


async def test_completion_streams_tokens_from_generate_stream(fake, tgi):
    body = {"model": "m", "prompt": prompt("ok")[0], "max_tokens": 20, "temperature": 0,
            "top_p": 0.9, "stop": "\n\n", "seed": 7}
    text, finish, usage = await collect(tgi.stream_completion(body))
    assert text == REPLY  # the EOS token is special and not shown
    assert finish == ["stop"]
    n = len(REPLY.split(" ")) + 1
    assert (usage[-1].prompt_tokens, usage[-1].completion_tokens, usage[-1].total_tokens) == \
        (PROMPT_TOKENS, n, PROMPT_TOKENS + n)
    path, sent = fake.requests[-1]
    assert path == "/generate_stream"
    assert sent["inputs"] == body["prompt"]
    assert sent["parameters"] == {"details": True, "max_new_tokens": 20, "do_sample": False,
                                  "top_p": 0.9, "stop": ["\n\n"], "seed": 7}


@pytest.mark.parametrize("scenario, expected", [("length", "length"), ("stop_sequence", "stop")])
async def test_completion_maps_finish_reasons(tgi, scenario, expected):
    _, finish, _ = await collect(tgi.stream_completion({"prompt": prompt(scenario)[0]}))
    assert finish == [expected]


async def test_completion_prompt_tokens_are_zero_when_tgi_does_not_say(tgi):
    _, _, usage = await collect(tgi.stream_completion({"prompt": [prompt("old")[0]], "temperature": 0.7}))
    assert usage[-1].prompt_tokens == 0 and usage[-1].completion_tokens > 0


async def test_completion_refuses_what_tgi_cannot_do(tgi):
    _, err = await failure(tgi.stream_completion({"prompt": ["a", "b"]}))
    assert err.status == 400 and err.param == "prompt"
    _, err = await failure(tgi.stream_completion({"prompt": "a", "echo": True}))
    assert err.status == 400 and err.param == "echo" and not err.retryable


async def test_chat_max_completion_tokens_becomes_max_tokens(fake, tgi):
    await collect(tgi.stream_chat(chat(prompt("ok")[0], max_completion_tokens=12)))
    sent = fake.requests[-1][1]
    assert sent["max_tokens"] == 12 and "max_completion_tokens" not in sent


@pytest.mark.parametrize("status, retryable, client_status", [
    (422, False, 400), (413, False, 400), (424, True, 503), (429, True, 503), (500, True, 503),
])
async def test_http_errors_are_classified(tgi, status, retryable, client_status):
    for stream in (tgi.stream_completion({"prompt": prompt(f"http-{status}")[0]}),
                   tgi.stream_chat(chat(prompt(f"http-{status}")[0]))):
        text, err = await failure(stream)
        assert text == ""
        assert (err.retryable, err.status) == (retryable, client_status)
        assert f"fake error {status}" in err.message


@pytest.mark.parametrize("scenario, retryable, client_status", [
    ("overloaded", True, 503), ("validation", False, 400), ("generation", True, 503),
])
async def test_error_events_on_a_200_stream_are_classified_by_error_type(tgi, scenario, retryable, client_status):
    for stream in (tgi.stream_completion({"prompt": prompt(scenario)[0]}),
                   tgi.stream_chat(chat(prompt(scenario)[0]))):
        text, err = await failure(stream)
        assert text == "" and (err.retryable, err.status) == (retryable, client_status)


async def test_an_error_after_tokens_ends_the_stream_with_an_engine_error(tgi):
    for stream in (tgi.stream_completion({"prompt": prompt("midstream")[0]}),
                   tgi.stream_chat(chat(prompt("midstream")[0]))):
        text, err = await failure(stream)
        assert text == "Hello from"
        assert err.retryable and "CUDA out of memory" in err.message


async def test_a_stream_cut_before_the_final_event_is_retryable(tgi):
    text, err = await failure(tgi.stream_completion({"prompt": prompt("cut")[0]}))
    assert text == "Hello from" and err.retryable and err.code == "engine_connection_lost"


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_closing_the_stream_closes_the_engine_request(fake, tgi, kind):
    text, nonce = prompt("slow")
    stream = tgi.stream_chat(chat(text)) if kind == "chat" else tgi.stream_completion({"prompt": text})
    got = [await stream.__anext__() for _ in range(2)]
    assert "".join(p.content for p in got) == "Hello from"
    await stream.aclose()
    for _ in range(50):
        if fake.outcome.get(nonce) == "disconnected":
            break
        await asyncio.sleep(0.1)
    assert fake.outcome.get(nonce) == "disconnected"


async def test_embeddings_come_from_tei_embed(fake, tgi):
    texts = ["the cat sat", "a dog ran far"]
    result = await tgi.embed({"model": "m", "input": texts, "encoding_format": "base64"})
    assert len(result.vectors) == 2 and all(len(v) == 8 for v in result.vectors)
    for got, text in zip(result.vectors, texts, strict=True):
        assert got == pytest.approx(vector(text))
    assert result.prompt_tokens == 7  # TEI's x-compute-tokens header
    assert fake.requests[-1] == ("/embed", {"inputs": texts, "normalize": True, "truncate": False})
    single = await tgi.embed({"input": "the cat sat"})
    assert single.vectors == [pytest.approx(vector("the cat sat"))]


async def test_embeddings_follow_the_catalog_options_and_take_token_ids(fake):
    adapter = build_adapter(spec(fake.url, tei_normalize=False, tei_truncate=True))
    result = await adapter.embed({"input": [1, 2, 3]})
    assert len(result.vectors) == 1
    assert fake.requests[-1][1] == {"inputs": [[1, 2, 3]], "normalize": False, "truncate": True}
    await adapter.aclose()


@pytest.mark.parametrize("status, retryable, client_status", [
    (413, False, 400), (422, False, 400), (424, True, 503), (429, True, 503),
])
async def test_embedding_errors_are_classified(tgi, status, retryable, client_status):
    with pytest.raises(EngineError) as info:
        await tgi.embed({"input": [prompt(f"http-{status}")[0], "x"]})
    assert (info.value.retryable, info.value.status) == (retryable, client_status)


async def test_dimensions_are_refused(tgi):
    with pytest.raises(EngineError) as info:
        await tgi.embed({"input": "x", "dimensions": 4})
    assert info.value.status == 400 and info.value.param == "dimensions"


async def test_readiness(fake, tgi):
    assert await tgi.ready() is True
    fake.healthy = False
    try:
        assert await tgi.ready() is False
    finally:
        fake.healthy = True
    dead = build_adapter(spec(f"http://127.0.0.1:{free_port()}"))
    assert await dead.ready() is False
    _, err = await failure(dead.stream_completion({"prompt": "x"}))
    assert err.retryable and err.status == 503
    await dead.aclose()
