"""The Triton adapter against a fake that speaks KServe v2 and the generate extension
(tests/fakes/triton.py), and its chat rendering and stop handling."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import msgspec
import pytest

from adapters.base import EngineError, UnsupportedCapability
from adapters.registry import build_adapter
from adapters.triton import StopMatcher, TritonAdapter, render_chat
from schemas.catalog import EngineSpec
from switchyard.processes import ROOT, free_port, spawn, wait_http
from tests.triton_server import stop_triton
from tests.fakes.triton import REPLY, FakeTriton, vector


@pytest.fixture(scope="module")
def fake():
    server = FakeTriton()
    port = free_port()
    server.start(port)
    server.url = f"http://127.0.0.1:{port}"
    yield server
    server.stop()


def spec(url: str, model: str = "gen", **extra) -> EngineSpec:
    return msgspec.convert({"kind": "triton", "url": url, "served_name": model, "connect_timeout_s": 1,
                            "read_timeout_s": 10, **extra}, EngineSpec)


@pytest.fixture
async def triton(fake):
    adapter = build_adapter(spec(fake.url))
    yield adapter
    await adapter.aclose()


@pytest.fixture
async def embedder(fake):
    adapter = build_adapter(spec(fake.url, "embedder", capabilities=["embeddings"]))
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
    return pieces, text, finish, usage


async def failure(stream) -> tuple[str, EngineError]:
    text = ""
    with pytest.raises(EngineError) as info:
        async for piece in stream:
            text += piece.content
    return text, info.value


def test_capabilities_are_declared(fake):
    assert TritonAdapter(spec(fake.url)).capabilities == \
        {"chat", "completions", "embeddings", "asr", "tts", "prefix_continuation"}
    assert "prefix_continuation" not in TritonAdapter(spec(fake.url, triton_chat_mode="last_user")).capabilities
    with pytest.raises(msgspec.ValidationError, match="served_name"):
        msgspec.convert({"kind": "triton", "url": fake.url}, EngineSpec)


async def test_chat_streams_text_with_the_rendered_prompt(fake, triton):
    body = chat(prompt("ok")[0], max_tokens=32, temperature=0.5)
    body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    pieces, text, finish, usage = await collect(triton.stream_chat(body))
    assert text == REPLY and finish == ["stop"]
    assert pieces[0].role == "assistant"
    assert usage == [usage[0]] and usage[0].total_tokens == 0  # generate reports no token counts
    model, sent = fake.requests[-1]
    assert model == "gen"
    assert sent["text_input"] == f"system: Be brief.\nuser: {body['messages'][1]['content']}\nassistant:"
    assert sent["parameters"] == {"stream": True, "max_tokens": 32, "temperature": 0.5}


async def test_completion_streams_and_reads_a_finish_reason_output(fake, triton):
    _, text, finish, _ = await collect(triton.stream_completion({"prompt": prompt("ok")[0], "seed": 3}))
    assert text == REPLY and finish == ["stop"]
    assert fake.requests[-1][1]["parameters"] == {"stream": True, "seed": 3}
    _, _, finish, _ = await collect(triton.stream_completion({"prompt": [prompt("length")[0]]}))
    assert finish == ["length"]


async def test_stop_sequences_are_applied_and_end_the_request(fake, triton):
    text, nonce = prompt("slow")
    _, out, finish, _ = await collect(triton.stream_completion({"prompt": text, "stop": [" four", "zzz"]}))
    assert out == "Triton says hello in" and finish == ["stop"]
    for _ in range(50):
        if fake.outcome.get(nonce) == "disconnected":
            break
        await asyncio.sleep(0.1)
    assert fake.outcome.get(nonce) == "disconnected"


async def test_custom_tensor_names_and_parameters_as_inputs(fake):
    adapter = build_adapter(spec(fake.url, "gen-custom", triton_text_input="prompt",
                                 triton_text_output="completion", triton_params_as_inputs=True))
    _, text, _, _ = await collect(adapter.stream_completion({"prompt": prompt("ok")[0], "max_tokens": 9}))
    assert text == REPLY
    sent = fake.requests[-1][1]
    assert "parameters" not in sent and sent["max_tokens"] == 9 and sent["stream"] is True
    await adapter.aclose()


async def test_cumulative_output_is_turned_into_deltas(fake):
    adapter = build_adapter(spec(fake.url, "gen-cumulative", triton_cumulative_output=True))
    pieces, text, _, _ = await collect(adapter.stream_completion({"prompt": prompt("ok")[0]}))
    assert text == REPLY and len([p for p in pieces if p.content]) == len(REPLY.split(" "))
    await adapter.aclose()


@pytest.mark.parametrize("status, retryable, client_status", [
    (400, False, 400), (500, True, 503), (503, True, 503),
])
async def test_http_errors_are_classified(triton, status, retryable, client_status):
    for stream in (triton.stream_completion({"prompt": prompt(f"http-{status}")[0]}),
                   triton.stream_chat(chat(prompt(f"http-{status}")[0]))):
        text, err = await failure(stream)
        assert text == "" and (err.retryable, err.status) == (retryable, client_status)
        assert f"fake error {status}" in err.message


async def test_tools_are_refused(triton):
    _, err = await failure(triton.stream_chat(chat("hi", tools=[{"type": "function"}])))
    assert err.status == 400 and err.param == "tools"


async def test_an_unknown_model_is_not_retried(fake):
    adapter = build_adapter(spec(fake.url, "nope"))
    _, err = await failure(adapter.stream_completion({"prompt": "x"}))
    assert not err.retryable and "unknown model" in err.message
    await adapter.aclose()


async def test_an_error_event_after_output_ends_the_stream(triton):
    text, err = await failure(triton.stream_chat(chat(prompt("midstream")[0])))
    assert text == "Triton says" and err.retryable and "generation failed" in err.message


async def test_closing_the_stream_closes_the_engine_request(fake, triton):
    text, nonce = prompt("slow")
    stream = triton.stream_chat(chat(text))
    got = [await stream.__anext__() for _ in range(2)]
    assert "".join(p.content for p in got) == "Triton says"
    await stream.aclose()
    for _ in range(50):
        if fake.outcome.get(nonce) == "disconnected":
            break
        await asyncio.sleep(0.1)
    assert fake.outcome.get(nonce) == "disconnected"


async def test_embeddings_reshape_the_output_tensor(fake, embedder):
    texts = ["first text", "second one", "third"]
    result = await embedder.embed({"model": "m", "input": texts})
    assert result.vectors == [vector(t) for t in texts]
    assert all(len(v) == 4 for v in result.vectors)
    sent = fake.requests[-1][1]
    assert sent["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [3, 1], "data": texts}]
    assert sent["outputs"] == [{"name": "embedding"}]
    assert (await embedder.embed({"input": "solo"})).vectors == [vector("solo")]


async def test_embedding_errors_and_refusals(embedder):
    for status, retryable, client_status in ((400, False, 400), (500, True, 503)):
        with pytest.raises(EngineError) as info:
            await embedder.embed({"input": [prompt(f"http-{status}")[0]]})
        assert (info.value.retryable, info.value.status) == (retryable, client_status)
    with pytest.raises(EngineError) as info:
        await embedder.embed({"input": [[1, 2, 3]]})
    assert info.value.status == 400 and info.value.param == "input"
    with pytest.raises(UnsupportedCapability):
        async for _ in embedder.stream_chat(chat("hi")):
            pass


async def test_a_wrong_output_shape_is_bad_engine_output(fake):
    adapter = build_adapter(spec(fake.url, "embedder", triton_embedding_output="missing"))
    with pytest.raises(EngineError) as info:
        await adapter.embed({"input": ["a"]})
    assert info.value.code == "engine_bad_output"
    await adapter.aclose()


async def test_readiness(fake, triton):
    assert await triton.ready() is True
    loading = build_adapter(spec(fake.url, "loading"))
    assert await loading.ready() is False
    dead = build_adapter(spec(f"http://127.0.0.1:{free_port()}"))
    assert await dead.ready() is False
    _, err = await failure(dead.stream_chat(chat("x")))
    assert err.retryable and err.status == 503
    for adapter in (loading, dead):
        await adapter.aclose()


def test_render_chat_templates():
    s = msgspec.convert({"kind": "triton", "url": "http://x", "served_name": "m",
                         "triton_message_format": "<|im_start|>{role}\n{content}<|im_end|>\n",
                         "triton_generation_prompt": "<|im_start|>assistant\n"}, EngineSpec)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Count {to} 3"}]}]
    assert render_chat(s, {"messages": messages}) == \
        "<|im_start|>user\nCount {to} 3<|im_end|>\n<|im_start|>assistant\n"
    continued = {"messages": [*messages, {"role": "assistant", "content": "1, 2"}],
                 "continue_final_message": True, "add_generation_prompt": False}
    assert render_chat(s, continued) == "<|im_start|>user\nCount {to} 3<|im_end|>\n<|im_start|>assistant\n1, 2"
    last = msgspec.structs.replace(s, triton_chat_mode="last_user")
    assert render_chat(last, {"messages": [{"role": "system", "content": "S"}, *messages]}) == "Count {to} 3"


def test_stop_matcher_holds_back_a_possible_start():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == ("abc ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("D more") == ("", True)
    m = StopMatcher(["END"])
    assert m.feed("xE") == ("x", False) and m.feed("y") == ("Ey", False)
    assert m.feed("EN") == ("", False) and m.flush() == "EN"
    assert StopMatcher([]).feed("anything") == ("anything", False)


# A real Triton: PyTriton's bundled tritonserver on CPU, from .cache/pytriton (scripts/setup_triton.sh,
# apart from the project's venv since it pins numpy and protobuf), serving a streaming echo model
# that can fail on purpose and a tiny embedder.
PYTRITON = ROOT / ".cache" / "pytriton" / "bin" / "python"
PYTRITON_SERVER = '''
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's `&` may have left SIGINT ignored
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

def gen(requests):  # decoupled: one response per word of "Echo <the prompt's last 3 words>"
    for request in requests:
        text = request.data["text_input"][0].decode()
        n = int((request.parameters or {}).get("max_tokens", 6))
        if "scenario=fail" in text:
            yield [{"text_output": np.array([b"partial"])}]
            raise ValueError("model failed on purpose")
        for i, w in enumerate(("Echo " + " ".join(text.split()[-3:])).split()[:n]):
            time.sleep(0.02)
            yield [{"text_output": np.array([(w if i == 0 else " " + w).encode()])}]

@batch
def embed(text_input):
    texts = [t[0].decode() for t in text_input]
    return {"embedding": np.array([[len(t), t.count(" "), 0.5, -1.0] for t in texts], dtype=np.float32)}

http, grpc, metrics = map(int, sys.argv[1:4])
with Triton(config=TritonConfig(http_port=http, grpc_port=grpc, metrics_port=metrics)) as triton:
    triton.bind(model_name="gen", infer_func=gen, inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="text_output", dtype=bytes, shape=(1,))],
                config=ModelConfig(decoupled=True, batching=False))
    triton.bind(model_name="embedder", infer_func=embed, inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="embedding", dtype=np.float32, shape=(4,))], config=ModelConfig(max_batch_size=8))
    triton.serve()
'''


@pytest.fixture(scope="module")
def real_triton(tmp_path_factory):
    base = tmp_path_factory.mktemp("pytriton")
    (base / "server.py").write_text(PYTRITON_SERVER)
    libdir = subprocess.check_output(  # its Python models fail to load without LD_LIBRARY_PATH
        [str(PYTRITON), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"], text=True).strip()
    ports = [free_port() for _ in range(3)]
    server = spawn("pytriton", [str(PYTRITON), str(base / "server.py"), *map(str, ports)], base / "log",
                   env={"LD_LIBRARY_PATH": libdir})
    try:
        wait_http(server, f"http://127.0.0.1:{ports[0]}/v2/models/embedder/ready", 120)
        yield f"http://127.0.0.1:{ports[0]}"
    finally:  # SIGINT lets PyTriton stop its tritonserver (which runs in a session of its own)
        stop_triton(server)


async def test_real_triton_streams_embeds_and_fails_cleanly(real_triton):
    gen, embedder, nope = (build_adapter(spec(real_triton, m)) for m in ("gen", "embedder", "nope"))
    assert await gen.ready() and await embedder.ready() and not await nope.ready()
    _, text, finish, _ = await collect(gen.stream_completion({"prompt": "tell me more", "max_tokens": 3}))
    assert (text, finish) == ("Echo tell me", ["stop"])
    _, text, _, _ = await collect(gen.stream_chat(chat("hi there", stop=[" there"])))
    assert text == "Echo hi"  # rendered "user: hi there\nassistant:", cut at the stop sequence
    assert (await embedder.embed({"input": ["a b", "ccc"]})).vectors == [[3, 1, 0.5, -1], [3, 0, 0.5, -1]]
    text, err = await failure(gen.stream_completion({"prompt": "scenario=fail"}))
    assert text == "partial" and err.retryable and "model failed on purpose" in err.message
    _, err = await failure(nope.stream_completion({"prompt": "x"}))
    assert not err.retryable and "unknown model" in err.message
    for adapter in (gen, embedder, nope):
        await adapter.aclose()
