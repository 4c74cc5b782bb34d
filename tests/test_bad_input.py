"""Bad input gets a clean 4xx in OpenAI's error envelope, never a 5xx, a hang or a text/plain answer:
bodies that are not UTF-8 or nest too deeply, invalid tools, messages and content parts (400 naming
`param`), malformed webhook URLs, oversized request headers (431), unparseable request lines, and a
NATS outage behind `GET /v1/jobs/*` (503 `events_unavailable`).

The request-line and streamed-header checks live in uvicorn's protocol (proxy.http.protocol), which the
session's proxy runs with only once switchyard/cli.py passes it; they run here against an in-process
proxy that uses it. The NATS outage stops a private nats-server behind an in-process proxy, never the
session's shared one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from proxy.http.app import create_app
from proxy.config import ProxySettings
from proxy.http.protocol import EnvelopeHttpToolsProtocol
from schemas.jobs import CHAT_ENDPOINT
from switchyard.processes import free_port
from tests.inprocess import fake_vllm_catalog, serving
from tests.conftest import MODEL, Stack, scenario
from tests.eventually import eventually_async
from tests.nats_fixture import nats_server
from tests.test_chat_errors import assert_envelope

HELLO = [{"role": "user", "content": "hi"}]
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


def invalid(response: httpx.Response, status: int = 400, param: str | None = None) -> dict:
    error = assert_envelope(response, status, param)
    assert error["type"] == "invalid_request_error"
    return error


def nested(depth: int) -> bytes:
    """A chat body whose `metadata_blob` (an unknown field) nests arrays: the body is `depth` levels
    deep in all. An unknown `model` is refused before the decode (proxy/jobs/run.check_access)."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return (f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "hi"}}], '
            f'"metadata_blob": {inner}}}').encode()


# 1. A body that is not UTF-8.

@pytest.mark.parametrize("content", [
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # Latin-1
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # a surrogate
    b'{"model": "' + MODEL.encode() + b'", "\xff": 1, "messages": []}',  # in a key
])
def test_body_that_is_not_utf8_is_400(http: httpx.Client, content: bytes):
    r = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert invalid(r)["code"] == "invalid_json"


# 2. JSON nested too deeply.

@pytest.mark.parametrize("depth", [65, 200, 1000, 100_000])
def test_body_nested_too_deeply_is_400(http: httpx.Client, depth: int):
    r = http.post("/v1/chat/completions", content=nested(depth), headers={"content-type": "application/json"})
    error = invalid(r)
    assert error["code"] == "invalid_json" and "nested too deeply" in error["message"]


def test_nesting_within_the_limit_is_decoded(http: httpx.Client):  # a control: passes with or without the fix
    r = http.post("/v1/chat/completions", content=nested(64), headers={"content-type": "application/json"})
    assert assert_envelope(r, 400, "metadata_blob")["code"] == "unknown_parameter"  # got past decoding


def test_jobs_api_refuses_deep_nesting_too(http: httpx.Client):
    body = b'{"endpoint": "' + CHAT_ENDPOINT.encode() + b'", "body": ' + nested(500) + b"}"
    r = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert invalid(r)["code"] == "invalid_json"


# 3. Tools, messages and content parts, validated in the proxy before any workflow starts.

@pytest.mark.parametrize("tools, param", [
    ([{"type": "function", "function": {"description": "no name", "parameters": {"type": "object"}}}],
     "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "get weather"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": 7}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "not an object"}}],
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "description": ["no"]}}], "tools[0].function.description"),
    ([{"type": "retrieval", "function": {"name": "f"}}], "tools[0].type"),
    ([{"function": {"name": "f"}}], "tools[0].type"),
    ([WEATHER, {"type": "function"}], "tools[1].function"),
])
def test_invalid_tools_are_400_naming_the_field(http: httpx.Client, tools, param: str):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "tools": tools})
    invalid(r, 400, param)


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": [{"type": "hologram", "hologram": {}}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"text": "no type"}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "text"}]}],
     "messages[0].content[1].text"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
     "messages[0].content[0].image_url.url"),
    ([{"content": "no role"}], "messages[0].role"),
])
def test_invalid_messages_are_400_naming_the_field(http: httpx.Client, messages, param: str):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    invalid(r, 400, param)


def test_valid_tools_and_content_parts_still_pass(http: httpx.Client):  # a control: nothing valid refused
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        *scenario("ok"),
    ]
    r = http.post("/v1/chat/completions", json={"model": "fake-vllm", "messages": messages, "tools": [WEATHER],
                                               "tool_choice": "auto"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


# 4. Messages whose role needs `content`.

@pytest.mark.parametrize("messages, param", [
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": None}], "messages[0].content"),
    ([{"role": "system"}, {"role": "user", "content": "hi"}], "messages[0].content"),
    ([{"role": "developer", "content": None}, {"role": "user", "content": "hi"}], "messages[0].content"),
    ([{"role": "user", "content": "hi"},
      {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                            "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c"}], "messages[2].content"),
])
def test_message_without_content_is_400_naming_it(http: httpx.Client, messages, param: str):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert invalid(r, 400, param)["code"] == "missing_required_parameter"


def test_jobs_api_names_the_same_fields(http: httpx.Client):
    body = {"model": MODEL, "messages": HELLO, "tools": [{"type": "function", "function": {}}]}
    r = http.post("/v1/jobs", json={"endpoint": CHAT_ENDPOINT, "body": body})
    invalid(r, 400, "tools[0].function.name")


# 5. Malformed webhook URLs.

@pytest.mark.parametrize("url", [
    "https://example.com:99999/x",
    "https://example.com:-1/x",
    "https://example.com:port/x",
    "https://[::1/x",
    "https://[not-an-address]/x",
    "https://" + "a" * 64 + ".example.com/x",  # a DNS label over 63 characters
    "https://a..b/x",
])
def test_malformed_webhook_url_is_400_naming_it(http: httpx.Client, url: str):
    body = {"model": MODEL, "max_tokens": 3, "messages": HELLO}
    r = http.post("/v1/jobs", json={"endpoint": CHAT_ENDPOINT, "body": body,
                                    "webhook": {"url": url, "secret": SECRET}})
    assert invalid(r, 400, "webhook.url")["code"] == "webhook_target_refused"


# 6. Oversized request headers (the app's limit; the session's proxy runs uvicorn's plain protocol).

@pytest.mark.parametrize("headers", [
    {"x-junk": "a" * 300_000},
    {f"x-junk-{i}": "b" * 200 for i in range(200)},
])
def test_oversized_request_headers_are_431(stack: Stack, headers: dict[str, str]):
    r = httpx.get(stack.proxy_url + "/v1/models", timeout=30,
                  headers={"authorization": f"Bearer {stack.key}", **headers})
    error = invalid(r, 431)
    assert error["code"] == "request_header_fields_too_large"


def test_headers_under_the_limit_pass(http: httpx.Client):  # a control
    r = http.get("/v1/models", headers={"x-junk": "a" * 20_000})
    assert r.status_code == 200, r.text


# 6 and 7 in uvicorn's protocol: an in-process proxy run with proxy.http.protocol.

@contextlib.asynccontextmanager
async def inprocess_proxy(stack: Stack, nats_url: str):
    """The proxy app under uvicorn with EnvelopeHttpToolsProtocol, on the session's Temporal and
    the given NATS; yields (app, base url)."""
    port = free_port()
    catalog = fake_vllm_catalog(stack, "bad-input-catalog.yaml")
    settings = ProxySettings.from_env({**stack.env, "SWITCHYARD_NATS_URL": nats_url, "SWITCHYARD_PORT": str(port),
                                       "SWITCHYARD_CATALOG": str(catalog)})
    app = create_app(settings)
    async with serving(app, uvicorn.Config(app, host="127.0.0.1", port=port, http=EnvelopeHttpToolsProtocol,
                                           log_level="warning", lifespan="on")):
        yield app, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def protocol_proxy(stack: Stack, nats_url: str):
    async with inprocess_proxy(stack, nats_url) as (_, url):
        yield url


async def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `request` as is and reads the answer to EOF: (status, headers, body)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        data = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def raw_envelope(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    return error


@pytest.mark.parametrize("target", [
    b"/v1/models?a=b c",       # a space
    b"/v1/models?a=\x01\x7f",  # control characters
    b"/v1/models?a=\x00",      # NUL
    b"/v1/models?q=\xff\xfe",  # bytes that are not ASCII
    b"/v1/models?a=\tb",       # a tab
])
async def test_junk_in_the_request_line_is_a_json_400(protocol_proxy: str, stack: Stack, target: bytes):
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + stack.key.encode() + b"\r\n\r\n"
    status, headers, body = await raw_exchange(protocol_proxy, request)
    assert status == 400
    assert raw_envelope(status, headers, body)["code"] == "invalid_http_request"


@pytest.mark.parametrize("fields", [
    b"X-Junk: " + b"a" * 300_000 + b"\r\n",                                   # one endless header
    b"".join(b"X-Junk-%d: %s\r\n" % (i, b"b" * 200) for i in range(200)),     # many small ones
])
async def test_oversized_headers_are_refused_by_the_protocol(protocol_proxy: str, stack: Stack, fields: bytes):
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + stack.key.encode() + b"\r\n" + fields
    status, headers, body = await raw_exchange(protocol_proxy, request + b"\r\n")
    assert status == 431
    assert raw_envelope(status, headers, body)["code"] == "request_header_fields_too_large"


async def test_protocol_serves_good_requests(protocol_proxy: str, stack: Stack):
    async with httpx.AsyncClient(base_url=protocol_proxy, timeout=30,
                                 headers={"authorization": f"Bearer {stack.key}"}) as client:
        r = await client.get("/v1/models", params={"q": 'a "quoted" [value] {x}|^`'})
        assert r.status_code == 200, r.text
        r = await client.get("/v1/models", headers={"x-junk": "a" * 20_000})
        assert r.status_code == 200, r.text
        r = await client.post("/v1/chat/completions", json={"model": "fake-vllm", "messages": [{"role": "user"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"


async def test_session_proxy_answers_junk_request_line_in_json(stack: Stack):
    status, headers, body = await raw_exchange(stack.proxy_url, b"GET /v1/models?a=b c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    raw_envelope(status, headers, body)


# 8. A NATS outage behind the jobs API.

async def test_nats_outage_is_503_on_jobs_reads(stack: Stack, http: httpx.Client, tmp_path: Path):
    created = http.post("/v1/jobs", json={"endpoint": CHAT_ENDPOINT,
                                          "body": {"model": "fake-vllm", "messages": scenario("ok")}})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    with nats_server(tmp_path) as nats:  # its own: the outage stops it
        async with inprocess_proxy(stack, nats.url) as (app, url):
            async with httpx.AsyncClient(base_url=url, timeout=60,
                                         headers={"authorization": f"Bearer {stack.key}"}) as client:
                assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 200
                await asyncio.to_thread(nats.stop)  # the outage: this proxy's NATS only
                for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/result"):
                    started = time.monotonic()
                    r = await client.get(path)
                    assert time.monotonic() - started < 30
                    assert r.status_code == 503, (path, r.status_code, r.text)
                    assert r.headers["content-type"].startswith("application/json")
                    error = r.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"}
                    assert error["code"] == "events_unavailable" and error["type"] == "server_error"
                # NATS back: the proxy recovers (and shuts down cleanly)
                await asyncio.to_thread(nats.start)
                await eventually_async(lambda: app.state.runtime.nc.is_connected, timeout=30,
                                       what="the proxy reconnecting to NATS")
                assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 200
