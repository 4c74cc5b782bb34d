"""`switchyard tenants|keys|usage` as subprocesses against a real NATS, checked with a KeyStore."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import nats
import pytest

from gatekeeping.keystore import KeyStore
from gatekeeping.limits import Limiter
from switchyard.processes import ROOT, free_port
from tests.eventually import eventually_async


@pytest.fixture(scope="module")
async def store(nats_url: str):
    nc = await nats.connect(nats_url)
    s = await KeyStore.open(nc.jetstream())
    s.limiter = await Limiter.open(nc.jetstream())
    yield s
    await s.close()
    await nc.close()


async def cli(nats_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWITCHYARD_NATS_URL": nats_url}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "switchyard.cli", *args],
                                   capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60)


async def test_tenant_key_usage_lifecycle(nats_url, store) -> None:
    tid = "cli-" + uuid.uuid4().hex[:8]
    r = await cli(nats_url, "tenants", "create", tid, "--tier", "high", "--rpm", "10", "--tpm", "5000",
                  "--daily-tokens", "100000", "--pii", "mask")
    assert r.returncode == 0, r.stderr
    assert f"created tenant {tid}" in r.stdout

    r = await cli(nats_url, "tenants", "list", "--json")
    tenants = {t["id"]: t for t in json.loads(r.stdout)}
    assert tenants[tid]["tier"] == 2 and tenants[tid]["pii"] == "mask"
    assert tenants[tid]["limits"] == {"rpm": 10, "tpm": 5000, "daily_tokens": 100000}
    r = await cli(nats_url, "tenants", "list")
    assert r.returncode == 0 and tid in r.stdout and "rpm=10" in r.stdout

    r = await cli(nats_url, "keys", "create", "--tenant", tid, "--rpm", "5", "--tpm", "1000",
                  "--models", "llama-*, qwen2", "--admin", "--expires-days", "7", "--name", "ci")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-sy-")           # the key, alone, once
    key = lines[0]
    assert "shown only once" in r.stderr and key not in r.stderr

    p = await eventually_async(lambda: store.verify(key), timeout=10, interval=0.02, what="the new key")
    assert p.tenant == tid and p.admin and p.tier == 2
    assert p.models == ("llama-*", "qwen2") and p.key_limits.rpm == 5 and p.key_limits.tpm == 1000

    r = await cli(nats_url, "keys", "list", "--tenant", tid, "--json")
    keys = json.loads(r.stdout)
    assert [k["key_id"] for k in keys] == [p.key_id] and keys[0]["expires"] > time.time() + 6 * 86400
    assert key not in r.stdout
    r = await cli(nats_url, "keys", "list")
    assert p.key_id in r.stdout and "active" in r.stdout and key not in r.stdout

    adm = await store.limiter.admit(p, 300)
    await store.limiter.settle(adm, 123)
    r = await cli(nats_url, "usage", "--tenant", tid, "--json")
    assert r.returncode == 0, r.stderr
    usage = json.loads(r.stdout)
    assert usage["tenant"] == tid and usage["day"]["tokens"] == 123 and usage["day"]["requests"] == 1
    assert usage["keys"][0]["key_id"] == p.key_id and usage["keys"][0]["remaining"]["requests"] == 4

    r = await cli(nats_url, "keys", "revoke", p.key_id)
    assert r.returncode == 0 and f"revoked {p.key_id}" in r.stdout
    await eventually_async(lambda: store.verify(key) is None, timeout=1.0, interval=0.005,
                           what="the revocation (within 1 s)")
    r = await cli(nats_url, "keys", "list", "--tenant", tid)
    assert "revoked" in r.stdout


async def test_errors(nats_url, store) -> None:
    tid = "cli-" + uuid.uuid4().hex[:8]
    assert (await cli(nats_url, "tenants", "create", tid)).returncode == 0
    r = await cli(nats_url, "tenants", "create", tid)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = await cli(nats_url, "tenants", "create", "Bad Name")
    assert r.returncode == 1 and "error:" in r.stderr
    r = await cli(nats_url, "tenants", "create", "cli-x" + uuid.uuid4().hex[:6], "--tier", "urgent")
    assert r.returncode == 2
    r = await cli(nats_url, "keys", "create", "--tenant", "no-such-tenant")
    assert r.returncode == 1 and "No tenant" in r.stderr and "sk-sy-" not in r.stdout
    r = await cli(nats_url, "keys", "revoke", "key_000000000000")
    assert r.returncode == 1
    r = await cli(nats_url, "usage", "--tenant", "no-such-tenant")
    assert r.returncode == 1
    r = await cli(f"nats://127.0.0.1:{free_port()}", "tenants", "list")
    assert r.returncode == 2 and "cannot reach NATS" in r.stderr


async def test_keys_generate_still_works(nats_url) -> None:
    r = await cli(nats_url, "keys", "generate")
    assert r.returncode == 0 and r.stdout.startswith("sk-sy-") and len(r.stdout.strip()) == 6 + 43


async def test_a_list_of_nats_urls_passes_over_a_dead_one(nats_url, store) -> None:
    tid = "cli-" + uuid.uuid4().hex[:8]
    urls = f"nats://127.0.0.1:{free_port()}, {nats_url}"  # the first has no server
    assert (await cli(urls, "tenants", "create", tid)).returncode == 0
    r = await cli(urls, "tenants", "list", "--json")
    assert r.returncode == 0 and tid in r.stdout
    r = await cli(f"nats://127.0.0.1:{free_port()},nats://127.0.0.1:{free_port()}", "tenants", "list")
    assert r.returncode == 2 and "cannot reach NATS at nats://127.0.0.1:" in r.stderr and "," in r.stderr
