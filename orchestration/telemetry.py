"""Traces and metrics shared by the proxy and the workers.

Tracing: an OpenTelemetry SDK tracer provider is installed in every process (so trace and span ids
reach the logs and travel to the other processes); spans are exported only when an OTLP endpoint is
configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_TRACES_EXPORTER=none` turns export off,
`OTEL_SDK_DISABLED=true` turns tracing off). The trace goes proxy request → Temporal client call →
workflow → activity (Temporal's `TracingInterceptor`) → engine HTTP call (httpx instrumentation in
`adapters.base.http_client`), and into the job's JetStream messages as W3C `traceparent` headers,
from which the proxy's relay joins the same trace.

Metrics: Prometheus, with `prometheus_client`'s default registry. Nothing here runs per token: the
relay observes per batch of events, the worker per activity.
"""

from __future__ import annotations

import os
import time
from typing import Any, Awaitable, Mapping

import structlog
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import Counter, Histogram
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

log = structlog.get_logger("switchyard.telemetry")
TRACER_NAME = "switchyard"

# Buckets in seconds: TTFT and queue wait span a few ms (a warm engine) to a minute (a long queue);
# inter-token latency sits in the ms; end-to-end requests run to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)


# ---------------------------------------------------------------------------------------------
# Tracing


def setup_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Installs the SDK tracer provider once per process; True when tracing is on."""
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if tracing_enabled():
        return True
    named = e.get("OTEL_SERVICE_NAME") or "service.name=" in e.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": service_name}))
    exporter = span_exporter(e)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def span_exporter(e: Mapping[str, str]) -> SpanExporter | None:
    """The exporter the `OTEL_*` variables ask for: OTLP (http/protobuf) when an endpoint is set."""
    kinds = {k.strip().lower() for k in e.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if k.strip()}
    if "console" in kinds:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if "otlp" not in kinds:
        return None
    if not (e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    protocol = (e.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or e.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
        except ImportError:
            log.warning("otlp_grpc_unavailable",
                        detail="OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc; "
                               "traces are not exported")
            return None
        return Grpc()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression from the OTEL_* variables


def tracing_enabled() -> bool:
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def temporal_interceptors() -> list[Any]:
    """Interceptors for `Client.connect`: Temporal's OpenTelemetry interceptor (client calls and,
    through the client, the workers' workflows and activities) when tracing is on."""
    if not tracing_enabled():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tracer())]


def trace_headers() -> dict[str, str]:
    """The current trace context as message headers (`traceparent`, `tracestate`); {} when none."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_headers(headers: Mapping[str, str] | None):
    """The trace context carried in message headers, or None."""
    if not headers or "traceparent" not in headers:
        return None
    return propagate.extract(headers)


# ---------------------------------------------------------------------------------------------
# Metrics shared by both processes

CLAIM_CHECK_BYTES = Counter(
    "switchyard_claim_check_bytes", "Bytes moved through the object store instead of Temporal's history.",
    ["direction"])  # put | get
TOKENS = Counter("switchyard_tokens", "Tokens in (prompt) and out (completion) of finished jobs.",
                 ["tenant", "model", "direction"])


def record_claim_check(direction: str, nbytes: int) -> None:
    """Counts a claim-check payload written (`put`) to or read (`get`) from the object store."""
    if nbytes > 0:
        CLAIM_CHECK_BYTES.labels(direction).inc(nbytes)


# ---------------------------------------------------------------------------------------------
# Worker metrics: one observation per activity attempt, taken by an activity interceptor

QUEUE_WAIT = Histogram(
    "switchyard_queue_wait_seconds",
    "Schedule-to-start of an inference attempt: how long it waited in its task queue for a worker slot.",
    ["queue", "model"], buckets=LATENCY_BUCKETS)
ATTEMPTS = Counter("switchyard_inference_attempts", "Inference activity attempts by outcome.",
                   ["model", "outcome"])  # succeeded | engine_error | cancelled | failed
RETRIES = Counter("switchyard_inference_retries", "Inference attempts after the first (Temporal retries).",
                  ["model"])
ATTEMPT_DURATION = Histogram("switchyard_inference_attempt_seconds",
                             "Duration of an inference attempt on the worker.", ["model"],
                             buckets=LATENCY_BUCKETS)
OBSERVED_ACTIVITIES = frozenset({"inference"})


class WorkerMetricsInterceptor(Interceptor):
    """Queue wait, attempts, retries, attempt duration and tokens, per inference attempt."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityMetrics(next)


class _ActivityMetrics(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if info.activity_type not in OBSERVED_ACTIVITIES or info.is_local:
            return await self.next.execute_activity(input)
        arg = input.args[0] if input.args else None
        wait = (info.started_time - info.current_attempt_scheduled_time).total_seconds()
        return await measured_attempt(self.next.execute_activity(input), arg, info.task_queue, wait, info.attempt)


async def measured_attempt(run: Awaitable[Any], inp: Any, queue: str, wait_s: float, attempt: int) -> Any:
    """Runs one inference attempt (`inp`: its InferenceInput), observing its queue wait, outcome,
    duration and tokens: for activities and for runs dispatched straight to a worker alike."""
    model = str(getattr(inp, "model", "") or "")
    QUEUE_WAIT.labels(queue, model).observe(max(0.0, wait_s))
    if attempt > 1:
        RETRIES.labels(model).inc()
    outcome = "failed"
    started = time.perf_counter()
    try:
        result = await run
        outcome = "succeeded"
        usage = getattr(result, "usage", None)
        if usage is not None:
            tenant = str(getattr(inp, "tenant", "") or "unknown")
            TOKENS.labels(tenant, model, "in").inc(max(0, usage.prompt_tokens))
            TOKENS.labels(tenant, model, "out").inc(max(0, usage.completion_tokens))
        return result
    except BaseException as exc:
        kind = getattr(exc, "type", None)
        outcome = ("engine_error" if kind == "EngineError" else
                   "cancelled" if kind == "JobCancelled" or type(exc).__name__ == "CancelledError"
                   else "failed")
        raise
    finally:
        ATTEMPT_DURATION.labels(model).observe(time.perf_counter() - started)
        ATTEMPTS.labels(model, outcome).inc()


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serves the default registry at http://host:port/metrics from a daemon thread."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # metrics are not worth refusing work for
        log.error("metrics_server_failed", host=host, port=port, error=str(exc))
        return
    log.info("metrics_server", host=host, port=port)
