"""The Files API (/v1/files) through the official openai SDK and curl on the session's stack: upload,
list and paginate, retrieve, download byte-exact, delete, tenant isolation, the size limit, bad
forms, and the proxy's memory staying flat while a large file streams through it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from orchestration.files import tenant_hash
from proxy.config import ProxySettings
from proxy.http.app import create_app
from switchyard.processes import ROOT, free_port
from tests.conftest import Stack
from tests.inprocess import fake_vllm_catalog, serving

MiB = 1024 * 1024


def new_tenant(stack: Stack, **scopes) -> tuple[str, openai.OpenAI]:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}, timeout=30) as a:
        assert a.post("/admin/tenants", json={"id": tenant}).status_code == 201
        r = a.post("/admin/keys", json={"tenant": tenant, **scopes})
        assert r.status_code == 201, r.text
    return tenant, openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=r.json()["key"], max_retries=0, timeout=120)


def stored_files(stack: Stack, tenant: str) -> list[str]:
    folder = Path(stack.env["SWITCHYARD_OBJECT_DIR"]) / "files" / tenant_hash(tenant)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_upload_retrieve_download_and_delete(stack: Stack):
    tenant, client = new_tenant(stack)
    lines = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    batch = client.files.create(file=("input.jsonl", lines), purpose="batch")
    assert batch.object == "file" and batch.purpose == "batch" and batch.bytes == len(lines)
    assert batch.filename == "input.jsonl" and batch.status == "processed" and batch.id.startswith("file-")
    binary = os.urandom(5 * MiB + 3)
    tune = client.files.create(file=("weights.bin", io.BytesIO(binary)), purpose="fine-tune")
    assert client.files.retrieve(batch.id) == batch
    assert client.files.content(batch.id).read() == lines
    assert client.files.content(tune.id).read() == binary
    assert [f.id for f in client.files.list(purpose="batch")] == [batch.id]
    assert [f.id for f in client.files.list()] == [tune.id, batch.id]  # newest first
    deleted = client.files.delete(batch.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (batch.id, True, "file")
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as err:
            call(batch.id)
        assert err.value.body["code"] == "file_not_found"
    assert stored_files(stack, tenant) == [tune.id]


def test_listing_paginates_with_after_and_limit(stack: Stack):
    _, client = new_tenant(stack)
    made = [client.files.create(file=(f"{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(5)]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == made[::-1][:2] and page.has_more
    second = client.files.list(limit=2, after=page.data[-1].id)
    assert [f.id for f in second.data] == made[::-1][2:4] and second.has_more
    assert [f.id for f in client.files.list(limit=2)] == made[::-1]  # the SDK follows `after` to the end
    assert [f.id for f in client.files.list(order="asc", limit=10000)] == made
    assert client.files.list(purpose="fine-tune").data == []


def test_another_tenants_file_is_not_found(stack: Stack, client: openai.OpenAI):
    _, other = new_tenant(stack)
    mine = client.files.create(file=("secret.jsonl", b'{"x": 1}\n'), purpose="user_data")
    for call in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError) as err:
            call(mine.id)
        assert err.value.body["code"] == "file_not_found"
    assert mine.id not in [f.id for f in other.files.list()]
    assert client.files.content(mine.id).read() == b'{"x": 1}\n'  # the refused delete did nothing
    client.files.delete(mine.id)


def test_a_key_without_the_files_scope_is_refused(stack: Stack):
    _, chat_only = new_tenant(stack, endpoints=["/v1/chat/*"])
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.files.list()
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")


def test_bad_forms_are_400s_naming_the_param_and_keep_nothing(stack: Stack):
    tenant, client = new_tenant(stack)
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert err.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 10})
    assert err.value.body["param"] == "expires_after[seconds]"
    auth = {"authorization": f"Bearer {client.api_key}"}
    url = stack.proxy_url + "/v1/files"
    r = httpx.post(url, headers=auth, files=[("purpose", (None, "batch"))])
    assert r.status_code == 400 and r.json()["error"]["param"] == "file", r.text
    # The file before a bad purpose: its bytes were stored by then, and are removed.
    r = httpx.post(url, headers=auth, files=[("file", ("a.bin", os.urandom(MiB))), ("purpose", (None, "bogus"))])
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose", r.text
    r = httpx.post(url, headers=auth, json={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type", r.text
    assert stored_files(stack, tenant) == []


def test_expiry_and_fields_after_the_file(stack: Stack):
    _, client = new_tenant(stack)
    f = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600
    r = httpx.post(stack.proxy_url + "/v1/files", headers={"authorization": f"Bearer {client.api_key}"},
                   files=[("file", ("late.jsonl", b"{}\n")), ("purpose", (None, "fine-tune"))])
    assert r.status_code == 200 and r.json()["purpose"] == "fine-tune", r.text


def test_curl_uploads_and_downloads(stack: Stack, tmp_path: Path):
    _, client = new_tenant(stack)
    path = tmp_path / "train data.jsonl"
    path.write_bytes(b'{"messages": []}\n' * 1000)
    auth = f"Authorization: Bearer {client.api_key}"
    out = subprocess.run(["curl", "-sS", "--fail-with-body", f"{stack.proxy_url}/v1/files", "-H", auth,
                          "-F", "purpose=fine-tune", "-F", f"file=@{path}"], capture_output=True, check=True)
    created = json.loads(out.stdout)
    assert created["filename"] == "train data.jsonl" and created["bytes"] == path.stat().st_size
    got = subprocess.run(["curl", "-sS", "--fail-with-body", f"{stack.proxy_url}/v1/files/{created['id']}/content",
                          "-H", auth], capture_output=True, check=True)
    assert got.stdout == path.read_bytes()


@contextlib.asynccontextmanager
async def proxy_with(stack: Stack, **env: str):
    """A proxy on the session's Temporal and NATS with `env` on top of the session's settings."""
    port = free_port()
    settings = ProxySettings.from_env({**stack.env, "SWITCHYARD_PORT": str(port), "SWITCHYARD_ORPHAN_SWEEP_S": "0",
                                       "SWITCHYARD_CATALOG": str(fake_vllm_catalog(stack, "files-catalog.yaml")),
                                       **env})
    app = create_app(settings)
    async with serving(app, uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")):
        yield f"http://127.0.0.1:{port}"


async def test_past_the_limit_is_a_413_and_nothing_is_kept(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SWITCHYARD_OBJECT_DIR", stack.env["SWITCHYARD_OBJECT_DIR"])  # the runtime reads it there
    tenant, owner = new_tenant(stack)
    async with proxy_with(stack, SWITCHYARD_MAX_FILE_BYTES=str(MiB)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=owner.api_key, max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as err:
            await client.files.create(file=("big.bin", os.urandom(3 * MiB)), purpose="batch")
        assert err.value.status_code == 413 and err.value.body["code"] == "file_too_large"

        async def chunked():  # no Content-Length: the limit is met while the bytes stream in
            yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
            for _ in range(40):
                yield os.urandom(64 * 1024)
            yield b"\r\n--b--\r\n"

        async with httpx.AsyncClient(timeout=60) as h:
            r = await h.post(url + "/v1/files", content=chunked(), headers={
                "authorization": f"Bearer {owner.api_key}", "content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
        assert (await client.files.create(file=("ok.bin", os.urandom(MiB // 2)), purpose="batch")).bytes == MiB // 2
    assert len(stored_files(stack, tenant)) == 1


def _memory_mib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) // 1024, int(status["VmHWM"].split()[0]) // 1024


def test_a_large_upload_streams_through_the_proxy(stack: Stack, tmp_path: Path):
    """200 MiB up and down again; the proxy's peak resident memory (VmHWM, reset first) grows by a
    small fraction of that. The numbers go to benchmarks/results/files_upload.json."""
    tenant, client = new_tenant(stack)
    pid = stack.procs["proxy"].proc.pid
    path = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(200):
            block = os.urandom(MiB)
            digest.update(block)
            f.write(block)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak to the current RSS
    rss_before, _ = _memory_mib(pid)
    started = time.perf_counter()
    with open(path, "rb") as f:
        created = client.files.create(file=f, purpose="batch")
    upload_s = time.perf_counter() - started
    _, peak_upload = _memory_mib(pid)
    assert created.bytes == 200 * MiB
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    rss_download, _ = _memory_mib(pid)
    started = time.perf_counter()
    got = hashlib.sha256()
    with client.files.with_streaming_response.content(created.id) as response:
        for chunk in response.iter_bytes(MiB):
            got.update(chunk)
    download_s = time.perf_counter() - started
    _, peak_download = _memory_mib(pid)
    assert got.hexdigest() == digest.hexdigest()
    client.files.delete(created.id)
    assert stored_files(stack, tenant) == []
    results = {"file_mib": 200, "proxy_rss_before_mib": rss_before, "proxy_peak_growth_upload_mib":
               peak_upload - rss_before, "proxy_peak_growth_download_mib": peak_download - rss_download,
               "upload_s": round(upload_s, 2), "download_s": round(download_s, 2),
               "object_store": "local", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (ROOT / "benchmarks" / "results" / "files_upload.json").write_text(json.dumps(results, indent=2) + "\n")
    assert peak_upload - rss_before < 64, results
    assert peak_download - rss_download < 64, results
