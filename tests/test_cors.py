"""CORS over plain HTTP against the real stack: preflights (the openai SDK's headers too), the headers a
page may read (x-job-id, x-request-id, x-ratelimit-*, retry-after), errors a page can read, and a
tenant's own origin list set through the admin API. The stack runs with the default global list
(loopback origins, any port)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Stack, scenario

SDK_HEADERS = ("authorization, content-type, x-stainless-os, x-stainless-lang, x-stainless-package-version, "
               "x-stainless-runtime, x-stainless-runtime-version, x-stainless-arch, x-stainless-retry-count, "
               "x-stainless-timeout")
EXPOSED = {"x-job-id", "x-request-id", "retry-after", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
           "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests",
           "x-ratelimit-reset-tokens"}


def _preflight(stack: Stack, origin: str, method: str = "POST", headers: str = SDK_HEADERS,
               path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.options(stack.proxy_url + path, timeout=10, headers={
        "origin": origin, "access-control-request-method": method, "access-control-request-headers": headers})


def _list(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",") if v.strip()}


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:3000", "https://[::1]:8443",
                                    "http://localhost"])
def test_preflight_allows_loopback_origins_with_the_sdk_headers(stack: Stack, origin: str):
    r = _preflight(stack, origin)
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == origin
    assert {"get", "post", "delete", "options"} <= _list(r.headers["access-control-allow-methods"])
    assert _list(SDK_HEADERS) | {"idempotency-key", "last-event-id", "prefer"} <= \
        _list(r.headers["access-control-allow-headers"])
    assert "origin" in _list(r.headers["vary"])
    r = _preflight(stack, origin, "GET", "authorization, last-event-id", "/v1/jobs/chatcmpl-x/events")
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example:80",
                                    "http://127.0.0.1.nip.io:8000", "null"])
def test_preflight_refuses_other_origins(stack: Stack, origin: str):
    r = _preflight(stack, origin)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers


def test_preflight_refuses_headers_and_methods_outside_the_list(stack: Stack):
    r = _preflight(stack, "http://localhost:5173", headers="authorization, x-secret-sauce")
    assert r.status_code == 403 and "x-secret-sauce" in r.json()["error"]["message"]
    r = _preflight(stack, "http://localhost:5173", method="PUT")
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_responses_expose_the_headers_a_page_needs(stack: Stack):
    origin = "http://localhost:5173"
    with httpx.Client(base_url=stack.proxy_url, timeout=60,
                      headers={"authorization": f"Bearer {stack.key}", "origin": origin}) as http:
        r = http.post("/v1/chat/completions", json={"model": "fake-vllm", "messages": scenario("ok")})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == origin
        assert EXPOSED <= _list(r.headers["access-control-expose-headers"])
        assert "origin" in _list(r.headers["vary"])
        assert r.headers["x-job-id"] and r.headers["x-request-id"]
        # A stream and the jobs API too: a page reads x-job-id to resume, retry-after to back off.
        with http.stream("POST", "/v1/chat/completions", json={"model": "fake-vllm", "messages": scenario("ok"),
                                                              "stream": True}) as s:
            assert s.headers["access-control-allow-origin"] == origin
            job = s.headers["x-job-id"]
            s.read()
        r = http.get(f"/v1/jobs/{job}")
        assert r.headers["access-control-allow-origin"] == origin and "etag" in r.headers
        # Errors carry CORS headers, so the page can read the envelope.
        r = http.get("/v1/models", headers={"authorization": "Bearer sk-wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["access-control-allow-origin"] == origin
        r = http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": scenario("ok")})
        assert r.status_code == 404 and r.headers["access-control-allow-origin"] == origin
    # Without an Origin (curl, SDKs on a server) nothing changes.
    r = httpx.get(stack.proxy_url + "/v1/models", headers={"authorization": f"Bearer {stack.key}"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_an_origin_outside_every_list_gets_no_cors_headers_and_is_refused(stack: Stack):
    r = httpx.get(stack.proxy_url + "/v1/models", timeout=10,
                  headers={"authorization": f"Bearer {stack.key}", "origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers


def test_a_tenants_own_origins(stack: Stack):
    """`cors_origins` on a tenant: its keys may be used from those origins; another tenant's keys may
    not (403, readable by the page); changed with PATCH /admin/tenants/{id}."""
    origin = "https://chat.acme-" + uuid.uuid4().hex[:8] + ".example"
    tenant = "cors-" + uuid.uuid4().hex[:8]
    admin = httpx.Client(base_url=stack.proxy_url, timeout=30, headers={"authorization": f"Bearer {stack.key}"})
    assert _preflight(stack, origin).status_code == 403
    r = admin.post("/admin/tenants", json={"id": tenant, "cors_origins": ["ftp://nope"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cors_origins"
    r = admin.post("/admin/tenants", json={"id": tenant, "cors_origins": [origin]})
    assert r.status_code == 201 and r.json()["cors_origins"] == [origin]
    key = admin.post("/admin/keys", json={"tenant": tenant}).json()["key"]

    r = _preflight(stack, origin)
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == origin
    r = httpx.get(stack.proxy_url + "/v1/models", headers={"authorization": f"Bearer {key}", "origin": origin})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    r = httpx.get(stack.proxy_url + "/v1/models", headers={"authorization": f"Bearer {stack.key}", "origin": origin})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert r.headers["access-control-allow-origin"] == origin

    r = admin.patch(f"/admin/tenants/{tenant}", json={"cors_origins": ["https://*.acme.example", "http://x:*"]})
    assert r.status_code == 200 and r.json()["cors_origins"] == ["https://*.acme.example", "http://x:*"]
    assert _preflight(stack, origin).status_code == 403
    assert _preflight(stack, "https://chat.acme.example").status_code == 204
    r = httpx.get(stack.proxy_url + "/v1/models", headers={"authorization": f"Bearer {key}", "origin": origin})
    assert r.status_code == 403
    admin.close()
