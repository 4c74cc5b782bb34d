"""Telemetry: one request is one connected trace (proxy → workflow → activity → engine, and the relay
joining through the NATS message headers); /metrics on the proxy and on the worker show real
observations; log lines carry the trace and span ids.

The trace test runs the proxy (uvicorn) and a worker in this process, against the session's real
Temporal, NATS and fake engine, with an in-memory span exporter: the spans are the ones our code and
Temporal's interceptor make. Its model sits on a task queue of its own so the session's worker
(another process) cannot take the job.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from orchestration.catalog import load_catalog
from orchestration.telemetry import setup_tracing, span_exporter, tracing_enabled
from orchestration.worker import WorkerConfig, run_worker
from proxy.http.app import create_app
from proxy.config import ProxySettings
from proxy.http.logs import add_trace_ids
from switchyard.processes import ROOT, free_port
from tests.inprocess import until_started
from tests.conftest import Stack, scenario


def _memory_exporter() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def _sse_until_done(client: httpx.AsyncClient, body: dict) -> tuple[str, list[dict]]:
    chunks: list[dict] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        job_id = r.headers["x-job-id"]
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                break
            if line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    return job_id, chunks


async def test_one_request_is_one_connected_trace(stack: Stack, tmp_path, monkeypatch):
    exporter = _memory_exporter()
    assert tracing_enabled()
    monkeypatch.setenv("SWITCHYARD_OBJECT_DIR", str(tmp_path / "objects"))
    queue = f"gpu.trace-{uuid.uuid4().hex[:8]}"
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(f"""version: 1
models:
  - id: traced
    engine: {{kind: openai, url: "{stack.env['FAKE_ENGINE_URL']}", served_name: fake-model}}
    task_queue: {queue}
    timeouts: {{schedule_to_start_s: 20, start_to_close_s: 60, heartbeat_s: 5}}
""")
    port = free_port()
    settings = ProxySettings.from_env({**stack.env, "SWITCHYARD_CATALOG": str(catalog_path),
                                       "SWITCHYARD_PORT": str(port), "SWITCHYARD_CPU_QUEUE": queue + ".cpu"})
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    stop = asyncio.Event()
    worker = asyncio.ensure_future(run_worker(
        WorkerConfig(temporal_address=stack.temporal_address, namespace="default", nats_servers=(stack.nats_url,),
                     queues=(queue,), cpu_queue=queue + ".cpu"), load_catalog(str(catalog_path)), stop))
    serving = asyncio.ensure_future(server.serve())
    try:
        await until_started(server, serving)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                     headers={"authorization": f"Bearer {stack.key}"}) as client:
            job_id, chunks = await _sse_until_done(
                client, {"model": "traced", "messages": scenario("ok"), "stream": True})
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

        wanted = {"StartWorkflow:InferenceWorkflow", "RunWorkflow:InferenceWorkflow", "StartActivity:adopt",
                  "RunActivity:adopt", "RunDirect:inference", "relay job events"}
        deadline = time.monotonic() + 15
        while True:
            spans = exporter.get_finished_spans()
            roots = [s for s in spans if s.name == "POST /v1/chat/completions"
                     and (s.attributes or {}).get("switchyard.job_id") == job_id]
            if roots:
                names = {s.name for s in spans if s.context.trace_id == roots[0].context.trace_id}
                if wanted <= names and any(s.kind == SpanKind.CLIENT and s.name.startswith("POST")
                                           for s in spans if s.context.trace_id == roots[0].context.trace_id):
                    break
            assert time.monotonic() < deadline, f"spans so far: {sorted({s.name for s in spans})}"
            await asyncio.sleep(0.1)
    finally:
        server.should_exit = True
        stop.set()
        await asyncio.wait_for(asyncio.gather(serving, worker, return_exceptions=True), 30)

    assert len(roots) == 1
    root = roots[0]
    tid = root.context.trace_id
    in_trace = [s for s in exporter.get_finished_spans() if s.context.trace_id == tid]
    by_id = {s.context.span_id: s for s in in_trace}
    # Connected: one root (the proxy's request span); every other span's parent is in the trace.
    assert [s for s in in_trace if s.parent is None] == [root]
    assert root.kind == SpanKind.SERVER
    for s in in_trace:
        if s is not root:
            assert s.parent is not None and s.parent.span_id in by_id, f"{s.name} is detached"
    # No span of this job's workflow landed in another trace.
    others = [s for s in exporter.get_finished_spans() if s.context.trace_id != tid
              and (s.attributes or {}).get("temporalWorkflowID") == job_id]
    assert others == []

    def one(name: str):
        found = [s for s in in_trace if s.name == name]
        assert len(found) == 1, (name, [s.name for s in in_trace])
        return found[0]

    def parent_of(span) -> str:
        return by_id[span.parent.span_id].name

    start = one("StartWorkflow:InferenceWorkflow")
    assert parent_of(start) == root.name
    assert parent_of(one("RunWorkflow:InferenceWorkflow")) == start.name
    # Temporal's interceptor makes the workflow's spans (zero-length markers, replay-safe) children of
    # the context the workflow was started with.
    assert parent_of(one("StartActivity:adopt")) in (start.name, "RunWorkflow:InferenceWorkflow")
    assert parent_of(one("RunActivity:adopt")) == "StartActivity:adopt"
    # The engine call went the direct path: its run is a child of the request, before any workflow.
    activity = one("RunDirect:inference")
    assert parent_of(activity) in (root.name, "POST")
    engine = [s for s in in_trace if s.kind == SpanKind.CLIENT and s.instrumentation_scope is not None
              and "httpx" in s.instrumentation_scope.name]
    assert len(engine) == 1 and parent_of(engine[0]) == activity.name
    assert str(stack.env["FAKE_ENGINE_URL"].split("//")[1].split("/")[0]) in json.dumps(dict(engine[0].attributes))
    # The relay's span has the run as its parent: the context came in the NATS message headers
    # (the proxy's own context would have made it a child of the request span).
    relay = one("relay job events")
    assert relay.kind == SpanKind.CONSUMER and parent_of(relay) == activity.name
    assert relay.attributes["switchyard.job_id"] == job_id
    assert relay.links and relay.links[0].context.span_id == root.context.span_id
    assert root.attributes["http.route"] == "/v1/chat/completions"
    assert root.attributes["http.response.status_code"] == 200


def test_log_lines_carry_trace_and_span_ids():
    _memory_exporter()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("outer") as span:
        line = add_trace_ids(None, "info", {"event": "x"})
    ctx = span.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x") and len(line["trace_id"]) == 32
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert "trace_id" not in add_trace_ids(None, "info", {"event": "y"})  # no span, no ids


def test_exporter_follows_otel_variables():
    assert span_exporter({}) is None  # no endpoint: nothing exported
    assert span_exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                          "OTEL_TRACES_EXPORTER": "none"}) is None
    exporter = span_exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    assert span_exporter({"OTEL_TRACES_EXPORTER": "console"}) is not None
    assert setup_tracing("x", {"OTEL_SDK_DISABLED": "true"}) is False


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(families: dict, family: str, suffix: str, **labels) -> float:
    total = 0.0
    for s in families[family].samples:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def test_metrics_show_real_observations(stack: Stack, http: httpx.Client):
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": "fake-vllm", "messages": scenario("slow"), "stream": True}) as r:
        assert r.status_code == 200
        assert any(line == "data: [DONE]" for line in r.iter_lines())
    assert http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": scenario("ok")}
                     ).status_code == 404

    text = httpx.get(stack.proxy_url + "/metrics", timeout=10).text
    fams = _families(text)
    # Histograms with real observations after the request.
    assert _sample(fams, "switchyard_time_to_first_token_seconds", "_count", model="fake-vllm") >= 1
    assert _sample(fams, "switchyard_inter_token_latency_seconds", "_count", model="fake-vllm") >= 1
    assert _sample(fams, "switchyard_inter_token_latency_seconds", "_sum", model="fake-vllm") > 0
    assert _sample(fams, "switchyard_request_duration_seconds", "_count", route="/v1/chat/completions",
                   model="fake-vllm") >= 1
    # The slow scenario takes ~2.4 s: the end-to-end histogram saw a long request.
    assert _sample(fams, "switchyard_request_duration_seconds", "_sum", route="/v1/chat/completions") > 2.0
    assert _sample(fams, "switchyard_requests", "_total", route="/v1/chat/completions", model="fake-vllm",
                   tenant="demo", status="200") >= 1
    assert _sample(fams, "switchyard_requests", "_total", route="/v1/chat/completions", status="404") >= 1
    assert "switchyard_active_streams" in fams and "switchyard_rate_limited" in fams

    worker = httpx.get(f"http://127.0.0.1:{stack.env['SWITCHYARD_METRICS_PORT']}/metrics", timeout=10).text
    wf = _families(worker)
    assert _sample(wf, "switchyard_queue_wait_seconds", "_count", queue="gpu.test", model="fake-vllm") >= 1
    assert _sample(wf, "switchyard_inference_attempts", "_total", model="fake-vllm", outcome="succeeded") >= 1
    assert _sample(wf, "switchyard_tokens", "_total", tenant="demo", model="fake-vllm", direction="out") >= 8
    assert _sample(wf, "switchyard_tokens", "_total", tenant="demo", model="fake-vllm", direction="in") >= 11
    assert "switchyard_inference_retries" in wf and "switchyard_claim_check_bytes" in wf

    # The proxy's access lines (structlog JSON) carry the request span's trace and span ids.
    lines = [json.loads(line) for line in stack.logs().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("event") == "request"
              and entry.get("path") == "/v1/chat/completions" and entry.get("model") == "fake-vllm"]
    assert access and all(len(e.get("trace_id", "")) == 32 and len(e.get("span_id", "")) == 16 for e in access)


async def test_rate_limit_refusals_and_claim_check_bytes_are_counted(tmp_path):
    import nats

    from orchestration.telemetry import CLAIM_CHECK_BYTES, record_claim_check
    from gatekeeping.auth import Principal
    from schemas.errors import RateLimited
    from gatekeeping.limits import Limiter
    from gatekeeping.metrics import RATE_LIMITED
    from schemas.tenancy import Limits
    from tests.nats_fixture import running_nats

    tenant = "t-" + uuid.uuid4().hex[:8]
    with running_nats(tmp_path / "nats") as url:
        nc = await nats.connect(url)
        try:
            limiter = await Limiter.open(nc.jetstream())
            p = Principal(tenant=tenant, key_id="k1", tenant_limits=Limits(rpm=1))
            await limiter.admit(p, 1)
            with pytest.raises(RateLimited):
                await limiter.admit(p, 1)
        finally:
            await nc.close()
    assert RATE_LIMITED.labels(tenant, "requests")._value.get() == 1
    from orchestration.objectstore import LocalObjectStore

    put, got = CLAIM_CHECK_BYTES.labels("put")._value.get(), CLAIM_CHECK_BYTES.labels("get")._value.get()
    store = LocalObjectStore(tmp_path / "objects")
    ref = await store.put("jobs/x/body.json", b"x" * 1234)
    assert await store.get(ref) == b"x" * 1234
    record_claim_check("put", 0)  # nothing moved, nothing counted
    assert CLAIM_CHECK_BYTES.labels("put")._value.get() == put + 1234
    assert CLAIM_CHECK_BYTES.labels("get")._value.get() == got + 1234


def test_otlp_export_reaches_a_collector(tmp_path):
    """The OTEL_* variables alone send spans to an OTLP/HTTP collector (a stand-in here that decodes the
    protobuf request), from a separate process as the proxy and workers are."""
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, ExportTraceServiceRequest, dict]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                import gzip
                body = gzip.decompress(body)
            received.append((self.path, ExportTraceServiceRequest.FromString(body), dict(self.headers)))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = ("from orchestration.telemetry import setup_tracing, tracer\n"
                "from opentelemetry import trace\n"
                "assert setup_tracing('switchyard-proxy')\n"
                "with tracer().start_as_current_span('probe'): pass\n"
                "trace.get_tracer_provider().shutdown()\n")
        env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
               "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=ops"}
        subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), check=True, timeout=60)
    finally:
        server.shutdown()
    assert received, "no export reached the collector"
    path, request, headers = received[0]
    assert path == "/v1/traces" and headers.get("x-tenant") == "ops"
    resource = request.resource_spans[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "switchyard-proxy"
    assert [s.name for s in request.resource_spans[0].scope_spans[0].spans] == ["probe"]
