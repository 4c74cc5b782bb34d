"""Temporal payloads are AES-GCM encrypted: histories hold no prompt text, rotation and tampering are
handled, and operators (only) decode through the codec server on the admin surface."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import types
import uuid

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from orchestration.codec import (
    ENCODING,
    KEY_ID,
    EncryptionCodec,
    PayloadKeyError,
    PayloadTampered,
    new_key_entry,
)
from orchestration.converter import data_converter
from gatekeeping.auth import KeyRing
from proxy.config import ProxySettings
from proxy.http.app import create_app
from switchyard.processes import ROOT, tool
from tests.conftest import MODEL, Stack

PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'{"messages":[{"content":"hello kestrel"}]}')


async def test_round_trip_hides_the_data_and_restores_it_exactly():
    codec = EncryptionCodec(new_key_entry("k1"))
    [enc] = await codec.encode([PLAIN])
    assert enc.metadata["encoding"] == ENCODING and enc.metadata[KEY_ID] == b"k1"
    assert b"kestrel" not in enc.SerializeToString()
    [again] = await codec.encode([PLAIN])
    assert again.data[:12] != enc.data[:12]  # a fresh nonce per payload
    assert await codec.decode([enc]) == [PLAIN]


async def test_a_large_payload_round_trips():
    codec = EncryptionCodec(new_key_entry("k1"))
    big = Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom(1_000_000))
    [enc] = await codec.encode([big])
    assert await codec.decode([enc]) == [big]


async def test_rotation_old_key_still_decodes_new_key_encrypts():
    old, new = new_key_entry("k0"), new_key_entry("k1")
    before = EncryptionCodec(old)
    [enc_old] = await before.encode([PLAIN])
    after = EncryptionCodec(f"{new},{old}")
    assert await after.decode([enc_old]) == [PLAIN]
    [enc_new] = await after.encode([PLAIN])
    assert enc_new.metadata[KEY_ID] == b"k1"
    with pytest.raises(PayloadKeyError, match="key id 'k1'.*holds: k0"):
        await before.decode([enc_new])


async def test_tampering_is_detected():
    codec = EncryptionCodec(f"{new_key_entry('k1')},{new_key_entry('k0')}")
    [enc] = await codec.encode([PLAIN])
    flipped = Payload(metadata=dict(enc.metadata), data=enc.data[:-1] + bytes([enc.data[-1] ^ 1]))
    with pytest.raises(PayloadTampered, match="k1"):
        await codec.decode([flipped])
    relabelled = Payload(metadata={**enc.metadata, KEY_ID: b"k0"}, data=enc.data)
    with pytest.raises(PayloadTampered):
        await codec.decode([relabelled])
    with pytest.raises(PayloadTampered):
        await codec.decode([Payload(metadata=dict(enc.metadata), data=b"short")])


async def test_unencrypted_payloads_pass_through_decode():
    """Histories recorded before encryption (tests/histories) still replay."""
    assert await EncryptionCodec(new_key_entry("k1")).decode([PLAIN]) == [PLAIN]


async def test_no_key_refuses_to_encode_and_off_stores_plain_text():
    with pytest.raises(PayloadKeyError, match="SWITCHYARD_PAYLOAD_KEYS is not set"):
        await EncryptionCodec("").encode([PLAIN])
    off = EncryptionCodec("off")
    assert await off.encode([PLAIN]) == [PLAIN]
    [enc] = await EncryptionCodec(new_key_entry("k9")).encode([PLAIN])
    with pytest.raises(PayloadKeyError, match="'k9'"):
        await off.decode([enc])


@pytest.mark.parametrize("keys, problem", [
    ("k1", "KEY_ID:BASE64_KEY"),
    ("k1:not*base64", "not valid base64"),
    ("k1:" + base64.b64encode(b"short").decode(), "5 bytes"),
    (f"{new_key_entry('a')},{new_key_entry('a')}", "listed twice"),
])
def test_bad_key_configuration_is_named(keys: str, problem: str):
    with pytest.raises(PayloadKeyError, match=problem):
        EncryptionCodec(keys).keys()


@pytest.mark.parametrize("command", ["worker", "proxy"])
def test_a_process_without_a_key_refuses_to_start(command: str):
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_PAYLOAD_KEYS"}
    r = subprocess.run([sys.executable, "-m", "switchyard.cli", command], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "SWITCHYARD_PAYLOAD_KEYS is not set" in r.stderr


async def test_the_data_converter_encrypts_every_payload():
    [payload] = await data_converter.encode([{"prompt": "hello kestrel"}])
    assert payload.metadata["encoding"] == ENCODING and b"kestrel" not in payload.data
    assert await data_converter.decode([payload]) == [{"prompt": "hello kestrel"}]


# ---- the codec server ---------------------------------------------------------------------------
OPERATOR, TENANT_ADMIN, USER = (f"sk-sy-{role}-{uuid.uuid4().hex}" for role in ("op", "adm", "user"))


@pytest.fixture
async def admin():
    keys = KeyRing([f"ops:operator:{OPERATOR}", f"acme:admin:{TENANT_ADMIN}", f"acme:user:{USER}"])
    app = create_app(ProxySettings(), runtime=types.SimpleNamespace(keystore=keys))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as c:
        yield c


def _pb_json(p: Payload) -> dict:
    """A payload in protobuf JSON, as the Temporal CLI and UI send it: bytes in base64."""
    return {"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
            "data": base64.b64encode(p.data).decode()}


async def test_codec_server_round_trip_for_an_operator(admin: httpx.AsyncClient):
    auth = {"authorization": f"Bearer {OPERATOR}", "x-namespace": "default"}
    r = await admin.post("/admin/codec/encode", json={"payloads": [_pb_json(PLAIN)]}, headers=auth)
    assert r.status_code == 200, r.text
    [enc] = r.json()["payloads"]
    assert base64.b64decode(enc["metadata"]["encoding"]) == ENCODING
    assert "kestrel" not in base64.b64decode(enc["data"]).decode(errors="replace")
    r = await admin.post("/admin/codec/decode", json={"payloads": [enc, _pb_json(PLAIN)]}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"payloads": [_pb_json(PLAIN), _pb_json(PLAIN)]}


async def test_codec_server_refuses_everyone_but_an_operator(admin: httpx.AsyncClient):
    [enc] = await data_converter.payload_codec.encode([PLAIN])
    body = {"payloads": [_pb_json(enc)]}
    for key, status in ((None, 401), ("sk-sy-wrong", 401), (USER, 403), (TENANT_ADMIN, 403)):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        r = await admin.post("/admin/codec/decode", json=body, headers=headers)
        assert r.status_code == status, (key, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert "kestrel" not in r.text


async def test_codec_server_answers_400_for_a_bad_body_or_an_unknown_key(admin: httpx.AsyncClient):
    auth = {"authorization": f"Bearer {OPERATOR}"}
    r = await admin.post("/admin/codec/decode", json={"payloads": [{"meta": {}}]}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payloads", r.text
    [foreign] = await EncryptionCodec(new_key_entry("elsewhere")).encode([PLAIN])
    r = await admin.post("/admin/codec/decode", json={"payloads": [_pb_json(foreign)]}, headers=auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "payload_key_unknown"
    assert "'elsewhere'" in r.json()["error"]["message"]


# ---- the real stack ---------------------------------------------------------------------------
def _b64_forms(text: str) -> list[str]:
    """The base64 of `text` at each of the three byte alignments it can have inside a longer value
    (the middle part, which does not depend on the bytes around it)."""
    raw = text.encode()
    return [base64.b64encode(b"\0" * k + raw).decode()[4:-4] for k in range(3)]


def _payload_bytes(exported: str) -> bytes:
    """Every payload's data in an exported history (protobuf JSON: `data` in base64), joined."""
    found: list[bytes] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and isinstance(node.get("metadata"), dict):
                found.append(base64.b64decode(node["data"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(exported))
    return b"\n".join(found)


async def _show(stack: Stack, job_id: str, *codec: str) -> str:
    r = await asyncio.to_thread(
        subprocess.run, [tool("temporal"), "workflow", "show", "-w", job_id, "--address", stack.temporal_address,
                         "--output", "json", *codec], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def test_workflow_histories_hold_no_prompt_text(stack: Stack, client, temporal):
    """Workflow histories hold no prompt text: grep an exported history."""
    prompt = f"heron-quartz-{uuid.uuid4().hex[:8]} is the secret prompt"
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": prompt}])
    job_id = raw.headers["x-job-id"]
    await temporal.get_workflow_handle(job_id).result()

    plain = await Client.connect(stack.temporal_address)  # the default converter: no codec
    history = await plain.get_workflow_handle(job_id).fetch_history()
    exported = history.to_json()
    wire = b"".join(e.SerializeToString() for e in history.events)
    cli = await _show(stack, job_id)
    for text in (exported, cli):
        assert prompt not in text
        assert not any(form in text for form in _b64_forms(prompt))
        assert _payload_bytes(text) and prompt.encode() not in _payload_bytes(text)
    assert prompt.encode() not in wire
    assert job_id in cli and len(history.events) > 3

    started = history.events[0].workflow_execution_started_event_attributes.input.payloads
    assert prompt in json.dumps(await data_converter.decode(started))
    decoded = await _show(stack, job_id, "--codec-endpoint", stack.proxy_url + "/admin/codec",
                          "--codec-auth", f"Bearer {stack.key}")
    assert prompt in _payload_bytes(decoded).decode()
