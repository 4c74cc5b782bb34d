"""The OpenAI-protocol adapter's completions, embeddings and readiness against the real engine:
llama-server with SmolLM2-135M started with `--embeddings --pooling mean`. With that flag this
llama-server still serves chat and completions; without `--pooling mean` it refuses
/v1/embeddings (400: "Pooling type 'none' is not OAI compatible") since the GGUF sets no pooling.
It runs one slot (`--parallel 1`): with more, inputs of one request embedded in the same batch get
vectors that depend on their batch-mates (seen here; llama.cpp issue #26282)."""

from __future__ import annotations

import math

import msgspec
import pytest

from adapters.base import EngineError, UnsupportedCapability
from adapters.openai_protocol import OpenAIProtocolAdapter
from adapters.registry import build_adapter
from schemas.catalog import EngineSpec
from switchyard.processes import engine_binary, free_port, start_engine

MODEL = "smollm2-135m-instruct"


def spec(url: str, **extra) -> EngineSpec:
    return msgspec.convert({"kind": "openai", "url": url, "served_name": MODEL, "connect_timeout_s": 1,
                            **extra}, EngineSpec)


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory):
    try:
        engine_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    port = free_port()
    engine = start_engine(port, tmp_path_factory.mktemp("llama") / "log", parallel=1,
                          extra=["--embeddings", "--pooling", "mean"])
    yield f"http://127.0.0.1:{port}/v1"
    engine.stop()


@pytest.fixture
async def llama(engine_url):
    adapter = build_adapter(spec(engine_url))
    yield adapter
    await adapter.aclose()


def test_capabilities(engine_url):
    assert OpenAIProtocolAdapter(spec(engine_url)).capabilities == \
        {"chat", "completions", "embeddings", "asr", "tts", "prefix_continuation"}
    assert OpenAIProtocolAdapter(spec(engine_url, capabilities=["embeddings"])).capabilities == {"embeddings"}


async def test_completion_streams_text_finish_and_usage(llama):
    pieces = [p async for p in llama.stream_completion(
        {"model": "x", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0})]
    text = "".join(p.content for p in pieces)
    assert text.strip()
    assert [p.finish_reason for p in pieces if p.finish_reason] == ["length"]
    usage = [p.usage for p in pieces if p.usage is not None][-1]
    assert usage.completion_tokens == 6 and usage.prompt_tokens > 0


async def test_chat_still_works_with_embeddings_enabled(llama):
    pieces = [p async for p in llama.stream_chat(
        {"model": "x", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4})]
    assert "".join(p.content for p in pieces)
    assert [p.finish_reason for p in pieces if p.finish_reason]


async def test_embeddings_are_unit_vectors_in_input_order(llama):
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "The cat sat on the mat."]
    result = await llama.embed({"model": "x", "input": texts, "encoding_format": "base64"})
    assert len(result.vectors) == 3 and {len(v) for v in result.vectors} == {576}
    for v in result.vectors:
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-3)
    assert result.vectors[0] == pytest.approx(result.vectors[2], abs=1e-5)
    assert result.vectors[0] != pytest.approx(result.vectors[1], abs=1e-3)
    assert result.prompt_tokens > 0
    single = await llama.embed({"model": "x", "input": texts[1]})
    assert single.vectors[0] == pytest.approx(result.vectors[1], abs=1e-5)


async def test_an_engine_rejection_is_not_retryable(llama):
    with pytest.raises(EngineError) as info:
        await llama.embed({"model": "x", "input": []})
    assert info.value.status == 400 and not info.value.retryable


async def test_a_capability_the_catalog_withholds_is_a_clear_400(engine_url):
    adapter = build_adapter(spec(engine_url, capabilities=["chat"]))
    with pytest.raises(UnsupportedCapability) as info:
        await adapter.embed({"input": "x"})
    assert info.value.status == 400 and info.value.code == "unsupported_capability"
    await adapter.aclose()


async def test_readiness(llama):
    assert await llama.ready() is True
    dead = build_adapter(spec(f"http://127.0.0.1:{free_port()}/v1"))
    assert await dead.ready() is False
    with pytest.raises(EngineError) as info:
        await dead.embed({"input": "x"})
    assert info.value.retryable and info.value.status == 503
    await dead.aclose()
