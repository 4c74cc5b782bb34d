"""Admin API handlers in the proxy app, built by create_app around a runtime with a real KeyStore and
Limiter on a real NATS: the 401 / 403 / 404 matrix across an operator, a tenant admin, a tenant key and
another tenant."""

from __future__ import annotations

import asyncio
import types
import uuid

import httpx
import nats
import pytest

from gatekeeping.auth import KeyRing
from gatekeeping.keystore import KeyStore
from gatekeeping.limits import Limiter
from proxy.config import ProxySettings
from proxy.http.app import create_app
from schemas.tenancy import Limits

OPERATOR_KEY = "sk-sy-op-" + uuid.uuid4().hex


class World(types.SimpleNamespace):
    pass


@pytest.fixture(scope="module")
async def world(nats_url: str):
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    store = await KeyStore.open(js, bootstrap=KeyRing((f"demo:operator:{OPERATOR_KEY}",)))
    limiter = await Limiter.open(js)
    app = create_app(ProxySettings(), runtime=types.SimpleNamespace(keystore=store, limiter=limiter))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test")
    w = World(store=store, limiter=limiter, client=client)
    suffix = uuid.uuid4().hex[:6]
    w.acme, w.globex = f"acme-{suffix}", f"globex-{suffix}"
    for tid in (w.acme, w.globex):
        r = await client.post("/admin/tenants", json={"id": tid, "tier": "high", "limits": {"rpm": 100}},
                              headers=_auth(OPERATOR_KEY))
        assert r.status_code == 201, r.text
    w.acme_admin, _ = await store.create_key(w.acme, admin=True)
    w.acme_user, w.acme_user_rec = await store.create_key(w.acme)
    w.globex_admin, _ = await store.create_key(w.globex, admin=True)
    w.globex_user, w.globex_user_rec = await store.create_key(w.globex)
    yield w
    await client.aclose()
    await store.close()
    await nc.close()


def _auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def _requests(w: World, tenant: str, key_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("POST", "/admin/tenants", {"id": "t-" + uuid.uuid4().hex[:8]}),
        ("GET", "/admin/tenants", None),
        ("POST", "/admin/keys", {"tenant": tenant}),
        ("GET", f"/admin/keys?tenant={tenant}", None),
        ("POST", f"/admin/keys/{key_id}/revoke", None),
        ("GET", f"/admin/usage?tenant={tenant}", None),
    ]


async def _call(w: World, method: str, path: str, body, key: str | None) -> httpx.Response:
    return await w.client.request(method, path, json=body, headers=_auth(key))


async def test_401_without_or_with_a_bad_key(world) -> None:
    for method, path, body in _requests(world, world.acme, world.acme_user_rec.key_id):
        for key in (None, "sk-sy-wrong", world.acme_user[:-2]):
            r = await _call(world, method, path, body, key)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"].startswith("Bearer")


async def test_403_for_keys_without_the_admin_scope(world) -> None:
    for key in (world.acme_user, world.globex_user):
        for method, path, body in _requests(world, world.acme, world.acme_user_rec.key_id):
            r = await _call(world, method, path, body, key)
            assert r.status_code == 403, (method, path, r.text)
            err = r.json()["error"]
            assert err["code"] == "forbidden" and err["type"] == "invalid_request_error"
    assert world.store.verify(world.acme_user) is not None    # nothing was revoked


async def test_404_for_another_tenants_resources(world) -> None:
    w = world
    for method, path, body in _requests(w, w.globex, w.globex_user_rec.key_id)[2:]:
        r = await _call(w, method, path, body, w.acme_admin)
        assert r.status_code == 404, (method, path, r.text)
    assert w.store.verify(w.globex_user) is not None
    r = await _call(w, "POST", "/admin/tenants", {"id": "t-" + uuid.uuid4().hex[:8]}, w.acme_admin)
    assert r.status_code == 403                                 # only operators create tenants
    r = await _call(w, "GET", "/admin/tenants", None, w.acme_admin)
    assert [t["id"] for t in r.json()["data"]] == [w.acme]      # sees only itself


async def test_tenant_admin_manages_its_own_tenant(world) -> None:
    w = world
    r = await _call(w, "POST", "/admin/keys", {"name": "ci", "models": ["llama-*"], "limits": {"rpm": 5}},
                    w.acme_admin)
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("sk-sy-") and created["tenant"] == w.acme and created["limits"] == {"rpm": 5}
    principal = w.store.verify(key)
    assert principal.tenant == w.acme and principal.models == ("llama-*",)

    listed = (await _call(w, "GET", "/admin/keys", None, w.acme_admin)).json()["data"]
    assert created["key_id"] in {k["key_id"] for k in listed}
    assert all(k["tenant"] == w.acme for k in listed)
    assert key not in str(listed) and all("key" not in k for k in listed)

    r = await _call(w, "POST", f"/admin/keys/{created['key_id']}/revoke", None, w.acme_admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert w.store.verify(key) is None

    r = await _call(w, "GET", "/admin/usage", None, w.acme_admin)
    assert r.status_code == 200 and r.json()["tenant"] == w.acme


async def test_operator_sees_everything(world) -> None:
    w = world
    r = await _call(w, "GET", "/admin/tenants", None, OPERATOR_KEY)
    ids = {t["id"] for t in r.json()["data"]}
    assert {w.acme, w.globex, "demo"} <= ids
    r = await _call(w, "GET", "/admin/keys", None, OPERATOR_KEY)
    assert {k["tenant"] for k in r.json()["data"]} >= {w.acme, w.globex}
    r = await _call(w, "POST", "/admin/keys", {"tenant": w.globex, "admin": True, "expires_in_days": 1},
                    OPERATOR_KEY)
    assert r.status_code == 201 and r.json()["admin"] and r.json()["expires"] is not None
    r = await _call(w, "GET", "/admin/usage?tenant=nope", None, OPERATOR_KEY)
    assert r.status_code == 404 and r.json()["error"]["code"] == "tenant_not_found"
    r = await _call(w, "POST", "/admin/keys/key_000000000000/revoke", None, OPERATOR_KEY)
    assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"


async def test_validation_errors(world) -> None:
    w = world
    cases = [
        ({"id": "Bad Id"}, "id"),
        ({"id": "ok-" + uuid.uuid4().hex[:6], "tier": "urgent"}, "tier"),
        ({"id": "ok-" + uuid.uuid4().hex[:6], "pii": "maybe"}, "pii"),
        ({"id": "ok-" + uuid.uuid4().hex[:6], "limits": {"rpm": -1}}, "limits.rpm"),
        ({"id": "ok-" + uuid.uuid4().hex[:6], "colour": "red"}, None),
    ]
    for body, param in cases:
        r = await _call(w, "POST", "/admin/tenants", body, OPERATOR_KEY)
        assert r.status_code == 400, (body, r.text)
        if param:
            assert r.json()["error"]["param"] == param, r.text
    r = await _call(w, "POST", "/admin/tenants", {"id": w.acme}, OPERATOR_KEY)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    r = await w.client.post("/admin/keys", content=b"{not json", headers=_auth(OPERATOR_KEY))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await _call(w, "POST", "/admin/keys", {"tenant": w.acme, "expires_in_days": 0}, OPERATOR_KEY)
    assert r.status_code == 400


async def test_usage_report_counts_settled_requests(world) -> None:
    w = world
    key, _ = await w.store.create_key(w.acme, limits=Limits(tpm=10_000))
    p = w.store.verify(key)
    for actual in (10, 20, 30):
        adm = await w.limiter.admit(p, 500)
        await w.limiter.settle(adm, actual)
    report = (await _call(w, "GET", f"/admin/usage?tenant={w.acme}", None, OPERATOR_KEY)).json()
    assert report["object"] == "usage" and report["limits"] == {"rpm": 100}
    assert report["day"]["requests"] >= 3 and report["day"]["tokens"] >= 60
    mine = next(k for k in report["keys"] if k["key_id"] == p.key_id)
    assert mine["day"] == {"period": mine["day"]["period"], "requests": 3, "tokens": 60}
    # The bucket refills continuously (10,000/min, ~1 token per 6 ms) while the test runs.
    assert 10_000 - 60 <= mine["remaining"]["tokens"] <= 10_000 - 60 + 20


async def test_revoked_admin_key_loses_access_at_once(world) -> None:
    w = world
    key, rec = await w.store.create_key(w.globex, admin=True)
    assert (await _call(w, "GET", "/admin/keys", None, key)).status_code == 200
    r = await _call(w, "POST", f"/admin/keys/{rec.key_id}/revoke", None, w.globex_admin)
    assert r.status_code == 200
    await asyncio.sleep(0)
    assert (await _call(w, "GET", "/admin/keys", None, key)).status_code == 401


async def test_a_key_never_grants_more_than_its_creator_holds(world) -> None:
    w = world
    creator, _ = await w.store.create_key(w.acme, admin=True, models=["llama-*"],
                                          endpoints=["/admin/*", "/v1/chat/*"], limits=Limits(rpm=10))
    refused = [
        ({"models": ["*"], "limits": {"rpm": 10}}, "models"),
        ({"models": ["mistral-7b"], "limits": {"rpm": 10}}, "models"),
        ({"models": ["llama-3"], "endpoints": ["*"], "limits": {"rpm": 10}}, "endpoints"),
        ({"models": ["llama-3"], "endpoints": ["/v1/embeddings"], "limits": {"rpm": 10}}, "endpoints"),
        ({"models": ["llama-3"], "endpoints": ["/v1/chat/*"]}, "limits.rpm"),                # unlimited
        ({"models": ["llama-3"], "endpoints": ["/v1/chat/*"], "limits": {"rpm": 11}}, "limits.rpm"),
    ]
    for body, param in refused:
        r = await _call(w, "POST", "/admin/keys", body, creator)
        assert r.status_code == 403, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "forbidden" and err["param"] == param, r.text
    body = {"models": ["llama-*", "llama-3"], "endpoints": ["/v1/chat/completions"], "admin": True,
            "limits": {"rpm": 5, "tpm": 1000}}
    r = await _call(w, "POST", "/admin/keys", body, creator)
    assert r.status_code == 201, r.text
    p = w.store.verify(r.json()["key"])
    assert p.models == ("llama-*", "llama-3") and p.endpoints == ("/v1/chat/completions",)
    assert p.key_limits == Limits(rpm=5, tpm=1000) and p.admin and not p.operator
