"""Tenants and API keys in NATS KV: hashed storage, lookup, scopes, expiry, revocation across replicas."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid

import nats
import pytest

from gatekeeping.auth import KeyRing
from schemas.errors import Conflict, InvalidRequest, NotFound
from proxy.config import ProxySettings
from gatekeeping.keystore import BUCKET_KEYS, BUCKET_TENANTS, KeyStore, key_id_secret
from schemas.tenancy import Limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_KEY = "sk-sy-demo-" + uuid.uuid4().hex
OTHER_KEY = "sk-sy-other-" + uuid.uuid4().hex


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
async def replicas(nats_url: str):
    """Two key stores on separate connections, as two proxy replicas would have."""
    conns = [await nats.connect(nats_url) for _ in range(2)]
    ring = KeyRing((f"demo:operator:{DEMO_KEY}", f"other-tenant:user:{OTHER_KEY}"))
    stores = [await KeyStore.open(nc.jetstream(), bootstrap=ring) for nc in conns]
    yield stores
    for s in stores:
        await s.close()
    for nc in conns:
        await nc.close()


def _tid() -> str:
    return "t-" + uuid.uuid4().hex[:10]


async def _eventually(predicate, timeout: float = 1.0) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


async def test_key_is_shown_once_and_stored_only_as_its_hash(replicas, nats_url) -> None:
    a, _ = replicas
    tenant = await a.create_tenant(_tid(), name="Acme", tier=2, limits=Limits(rpm=60, tpm=1000), pii="mask")
    key, rec = await a.create_key(tenant.id, name="ci", models=("llama-*",), limits=Limits(rpm=5))
    assert key.startswith("sk-sy-") and len(key) == len("sk-sy-") + 43
    assert set(key[6:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert rec.key_id.startswith("key_") and rec.key_id not in key

    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(BUCKET_KEYS)
        entry = await kv.get(hashlib.sha256(key.encode()).hexdigest())
        assert key.encode() not in entry.value and key[6:].encode() not in entry.value
        assert b"sk-sy-" not in entry.value
        assert rec.key_id.encode() in entry.value
        tenants = await nc.jetstream().key_value(BUCKET_TENANTS)
        assert (await tenants.get(tenant.id)).value
    finally:
        await nc.close()

    p = a.verify(key)
    assert p is not None
    assert (p.tenant, p.key_id, p.tier, p.pii, p.admin, p.operator) == (tenant.id, rec.key_id, 2, "mask", False, False)
    assert p.tenant_limits == Limits(rpm=60, tpm=1000) and p.key_limits == Limits(rpm=5)
    assert p.allows_model("llama-3-8b") and not p.allows_model("qwen2")
    assert p.priority(None) == 2 and p.priority(1) == 2 and p.priority(4) == 4   # never above the tier
    assert a.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert a.verify("sk-sy-unknown") is None and a.verify("") is None


async def test_revocation_reaches_the_other_replica_within_a_second(replicas) -> None:
    a, b = replicas
    tenant = await a.create_tenant(_tid())
    key, rec = await a.create_key(tenant.id)
    await _eventually(lambda: b.verify(key) is not None)     # created on A, usable on B
    await a.revoke_key(rec.key_id)
    assert a.verify(key) is None                               # the writer refuses at once
    took = await _eventually(lambda: b.verify(key) is None, timeout=1.0)
    assert took < 1.0
    assert b.get_key(rec.key_id).revoked
    assert a.alive() and b.alive()

    key2, rec2 = await b.create_key(tenant.id)                # and the other way round
    await _eventually(lambda: a.verify(key2) is not None)
    await b.revoke_key(rec2.key_id)
    await _eventually(lambda: a.verify(key2) is None, timeout=1.0)
    again = await a.revoke_key(rec2.key_id)                   # idempotent
    assert again.revoked


async def test_tenant_changes_reach_principals(replicas) -> None:
    a, b = replicas
    tenant = await a.create_tenant(_tid(), tier=3)
    key, _ = await a.create_key(tenant.id)
    await _eventually(lambda: b.verify(key) is not None)
    assert b.verify(key).tier == 3
    await a.update_tenant(tenant.id, tier=1, limits=Limits(tpm=50))
    await _eventually(lambda: b.verify(key).tier == 1)
    assert b.verify(key).tenant_limits == Limits(tpm=50)


async def test_expiry(nats_url) -> None:
    clock = Clock()
    nc = await nats.connect(nats_url)
    store = await KeyStore.open(nc.jetstream(), clock=clock)
    try:
        tenant = await store.create_tenant(_tid())
        key, _ = await store.create_key(tenant.id, expires=clock.t + 60)
        assert store.verify(key) is not None
        clock.t += 61
        assert store.verify(key) is None
        with pytest.raises(InvalidRequest):
            await store.create_key(tenant.id, expires=clock.t - 1)
    finally:
        await store.close()
        await nc.close()


async def test_validation_and_conflicts(replicas) -> None:
    a, _ = replicas
    tid = _tid()
    await a.create_tenant(tid)
    with pytest.raises(Conflict):
        await a.create_tenant(tid)
    with pytest.raises(InvalidRequest) as info:
        await a.create_tenant("Not A Slug")
    assert info.value.param == "id"
    with pytest.raises(InvalidRequest):
        await a.create_tenant(_tid(), tier=9)
    with pytest.raises(InvalidRequest):
        await a.create_tenant(_tid(), pii="sometimes")
    with pytest.raises(NotFound):
        await a.create_key("no-such-tenant")
    with pytest.raises(NotFound):
        await a.revoke_key("key_000000000000")


async def test_bootstrap_demo_key_is_an_operator_admin(replicas) -> None:
    a, b = replicas
    for store in (a, b):
        p = store.verify(DEMO_KEY)
        assert p is not None and p.tenant == "demo" and p.admin and p.operator
        other = store.verify(OTHER_KEY)
        assert other is not None and other.tenant == "other-tenant" and not other.admin
    assert a.get_tenant("demo").operator
    assert not a.get_tenant("other-tenant").operator
    await a.update_tenant("other-tenant", tier=4)
    await _eventually(lambda: b.verify(OTHER_KEY).tier == 4)


async def test_admin_keys_of_operator_tenants_are_operators(replicas) -> None:
    a, _ = replicas
    op_key, _ = await a.create_key("demo", admin=True)
    assert a.verify(op_key).operator
    tenant = await a.create_tenant(_tid())
    adm_key, _ = await a.create_key(tenant.id, admin=True)
    p = a.verify(adm_key)
    assert p.admin and not p.operator


async def test_lookup_is_in_memory_and_fast(replicas) -> None:
    a, _ = replicas
    tenant = await a.create_tenant(_tid())
    key, _ = await a.create_key(tenant.id)
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        a.verify(key)
    per_call = (time.perf_counter() - t) / n
    assert per_call < 100e-6   # a hash and a dict lookup; typically ~1-2 us


async def test_a_new_replica_loads_everything(replicas, nats_url) -> None:
    a, _ = replicas
    tenant = await a.create_tenant(_tid())
    key, rec = await a.create_key(tenant.id)
    revoked_key, revoked = await a.create_key(tenant.id)
    await a.revoke_key(revoked.key_id)
    nc = await nats.connect(nats_url)
    fresh = await KeyStore.open(nc.jetstream())
    try:
        assert fresh.verify(key).key_id == rec.key_id
        assert fresh.verify(revoked_key) is None
        assert {k.key_id for k in fresh.list_keys(tenant.id)} == {rec.key_id, revoked.key_id}
        assert fresh.get_tenant(tenant.id) is not None
    finally:
        await fresh.close()
        await nc.close()


def test_bootstrap_entries_are_explicit_and_a_bad_one_stops_the_start() -> None:
    padded = "c2stc3ktcGFkZGVk=="                       # base64 with `==` padding
    ring = KeyRing((f"acme:user:{padded}", "ops:admin:k:with:colons"))
    p = ring.verify(padded)
    assert p is not None and (p.tenant, p.admin, p.operator) == ("acme", False, False)
    assert ring.verify("k:with:colons").admin and not ring.verify("k:with:colons").operator
    settings = ProxySettings.from_env({"SWITCHYARD_DEMO_KEY": DEMO_KEY, "SWITCHYARD_API_KEYS": f"acme:user:{padded},"})
    demo, acme = KeyRing(settings.api_keys).principals()
    assert (demo.tenant, demo.operator, acme.tenant, acme.admin) == ("demo", True, "acme", False)
    for bad, position in [(OTHER_KEY, 1),                            # no tenant: once an operator key
                          (f"acme:user:{padded},acme={OTHER_KEY}", 2),  # the old syntax
                          (f"acme:root:{OTHER_KEY}", 1), (f"Acme:user:{OTHER_KEY}", 1), ("acme:user:", 1)]:
        with pytest.raises(ValueError) as err:
            ProxySettings.from_env({"SWITCHYARD_API_KEYS": bad})
        assert f"entry {position} " in str(err.value)
        assert OTHER_KEY not in str(err.value) and padded not in str(err.value)


def test_the_proxy_refuses_to_start_on_a_bad_entry_and_does_not_print_it() -> None:
    env = {**os.environ, "SWITCHYARD_API_KEYS": f"acme:user:x,{OTHER_KEY}"}
    r = subprocess.run([sys.executable, "-m", "switchyard.cli", "proxy"], capture_output=True, text=True,
                       env=env, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "SWITCHYARD_API_KEYS: entry 2 is refused" in r.stderr and OTHER_KEY not in r.stderr + r.stdout


async def test_bootstrap_key_ids_are_keyed_and_the_same_on_every_replica(nats_url) -> None:
    conns = [await nats.connect(nats_url) for _ in range(2)]
    try:
        secrets_ = [await key_id_secret(nc.jetstream()) for nc in conns]   # two replicas, no env secret
        assert secrets_[0] == secrets_[1] and len(secrets_[0]) == 32
        ids = {KeyRing((f"acme:user:{OTHER_KEY}",), s).principals()[0].key_id for s in secrets_}
        assert len(ids) == 1
        key_id = ids.pop()
        assert hashlib.sha256(OTHER_KEY.encode()).hexdigest()[:12] not in key_id
        assert KeyRing((f"acme:user:{OTHER_KEY}",), b"another").principals()[0].key_id != key_id
        assert await key_id_secret(conns[0].jetstream(), "from-env") == b"from-env"
    finally:
        for nc in conns:
            await nc.close()
