"""/openapi.json: a valid OpenAPI 3.1 document covering every route the proxy serves, and schemathesis
against the live proxy finds no 5xx, and every answer conforms to the document (status code,
content type, body schema).

Bounds of the schemathesis run: up to EXAMPLES generated cases per operation in each of schemathesis'
positive and negative modes, no shrinking, no example database. Left out: `GET /v1/ws` (a WebSocket
upgrade, not an HTTP call). Generated model names are never catalog models and generated job ids never
exist, so no generation, stream or long-running job is started. The admin operations that create
state (`POST` and `PATCH /admin/*`) are sent with a non-admin key (a 403 each), so the run creates no tenants or
keys in the session's key store; the admin reads run with the operator's key.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from schemathesis import checks
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate

from proxy.http.app import create_app
from proxy.config import ProxySettings
from proxy.http.openapi import UNDOCUMENTED, _routes
from tests.conftest import OTHER_KEY, Stack

EXAMPLES = 20
CONFORMANCE = [checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance]
SKIP = {("GET", "/v1/ws")}


@pytest.fixture(scope="module")
def document(stack: Stack) -> dict:
    r = httpx.get(stack.proxy_url + "/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return r.json()


def test_document_is_valid_openapi_31(document: dict):
    validate(document)  # raises on any violation; picks the 3.1 validator from `openapi`
    assert document["openapi"].startswith("3.1")


def test_document_covers_every_route(document: dict):
    app = create_app(ProxySettings())
    served = {(m.lower(), p) for m, p in _routes(app.routes)}
    documented = {(m, p) for p, item in document["paths"].items() for m in item}
    assert served == documented
    bare = [(m, p) for p, item in document["paths"].items() for m, op in item.items() if op.get(UNDOCUMENTED)]
    assert bare == [], "routes without a description in proxy/http/operations.py"
    for must in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/result",
                 "/v1/jobs/{job_id}/cancel", "/v1/chat/completions", "/healthz", "/readyz", "/metrics"):
        assert must in document["paths"]


def test_document_describes_errors_and_streams(document: dict):
    schemas = document["components"]["schemas"]
    assert set(schemas["ErrorEnvelope"]["required"]) == {"error"}
    assert {"message", "type", "param", "code"} <= set(schemas["ErrorBody"]["properties"])
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    ok = chat["responses"]["200"]["content"]
    assert ok["text/event-stream"]["x-sse-data"]["$ref"].endswith("/ChatCompletionChunk")
    assert ok["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    for status in ("400", "401", "404", "413", "503", "default"):
        ref = chat["responses"][status]["$ref"]
        response = document["components"]["responses"][ref.rsplit("/", 1)[1]]
        assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    events = document["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert document["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["304"]
    # Built from the structs: the request struct's constraints are in the document.
    temperature = schemas["ChatCompletionRequest"]["properties"]["temperature"]
    assert {"type": "number", "minimum": 0.0, "maximum": 2.0} in temperature["anyOf"]


def test_schemathesis_finds_no_server_errors(stack: Stack):
    schema = schemathesis.openapi.from_url(stack.proxy_url + "/openapi.json", timeout=10)
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        op = result.ok()
        method, path = op.method.upper(), op.path
        if (method, path) in SKIP:
            continue
        key = OTHER_KEY if method in ("POST", "PATCH") and path.startswith("/admin/") else stack.key
        headers = {"authorization": f"Bearer {key}"}
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                nonlocal calls
                response = case.call(base_url=stack.proxy_url, headers=headers, timeout=30)
                calls += 1
                problem = None
                if response.status_code >= 500:
                    problem = f"-> {response.status_code} {response.text[:300]!r}"
                else:
                    try:  # the answer is what the document says: status, content type, body schema
                        case.validate_response(response, checks=CONFORMANCE)
                    except Exception as exc:  # schemathesis' FailureGroup
                        problem = f"-> {response.status_code} does not conform: {str(exc)[:400]}"
                if problem and sum(f.startswith(f"{method} {path} ") for f in failures) < 2:
                    failures.append(f"{method} {path} ({mode.value}) {problem}\n  "
                                    f"{case.as_curl_command(headers=headers)}")

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode == schemathesis.GenerationMode.NEGATIVE, (method, path)
    assert calls > 100
    assert failures == [], "\n".join(failures)
