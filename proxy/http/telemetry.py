"""The proxy's telemetry: the request span and request metrics (one ASGI middleware), stream
metrics (time to first token, inter-token latency, active streams), rate-limit refusals, and the
`/metrics` endpoint. Tracing setup and the metrics shared with workers: orchestration/telemetry.py.
"""

from __future__ import annotations

import time

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestration.telemetry import ITL_BUCKETS, LATENCY_BUCKETS, tracer

REQUESTS = Counter("switchyard_requests", "HTTP requests by route, model, tenant and status.",
                   ["route", "model", "tenant", "status"])
REQUEST_DURATION = Histogram(
    "switchyard_request_duration_seconds",
    "End-to-end latency: from the request's arrival to its response's last byte (a stream's end).",
    ["route", "model"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("switchyard_time_to_first_token_seconds",
                 "From the job's start at the proxy to its first generated text reaching the relay.",
                 ["model"], buckets=LATENCY_BUCKETS)
ITL = Histogram("switchyard_inter_token_latency_seconds",
                "Mean time per token between successive batches of deltas at the relay (one observation "
                "per batch, not per token).", ["model"], buckets=ITL_BUCKETS)
ACTIVE_STREAMS = Gauge("switchyard_active_streams", "Server-sent event streams open now.", ["route"])
WEBSOCKETS_CLOSED = Counter("switchyard_websockets_closed", "WebSocket sessions the proxy closed: "
                            "`revoked` (the key stopped verifying) or `stalled` (the client did not read).",
                            ["reason"])

_CARRIED = (b"traceparent", b"tracestate", b"baggage")
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    """The matched route's template (`/v1/jobs/{job_id}`), never the raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class TelemetryMiddleware:
    """Outermost: one SERVER span per HTTP request (joining a caller's `traceparent`), the request
    counter and the end-to-end latency histogram. A stream's span and latency end with the stream."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._tracer = tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _CARRIED}
        parent = propagate.extract(carrier) if carrier else None
        method = scope["method"]
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self._tracer.start_as_current_span(
                f"{method} {scope['path']}", context=parent, kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]},
                record_exception=False, set_status_on_exception=False) as span:
            try:
                await self.app(scope, receive, send_status)
            except BaseException:
                status = status or 500
                raise
            finally:
                route = route_of(scope)
                state = scope.get("state") or {}
                model = state.get("model") or ""
                REQUESTS.labels(route, model, state.get("tenant") or "", str(status)).inc()
                REQUEST_DURATION.labels(route, model).observe(time.perf_counter() - started)
                if span.is_recording():
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    for key in ("job_id", "model", "tenant", "request_id"):
                        if state.get(key):
                            span.set_attribute(f"switchyard.{key}", str(state[key]))
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))


class StreamStats:
    """A live relay's timing: TTFT once, ITL once per batch of deltas. Replays record nothing."""

    __slots__ = ("model", "started", "last")

    def __init__(self, model: str):
        self.model = model
        self.started = time.perf_counter()
        self.last = 0.0

    def deltas(self, tokens: int) -> None:
        now = time.perf_counter()
        if not self.last:
            TTFT.labels(self.model).observe(now - self.started)
        elif tokens > 0:
            ITL.labels(self.model).observe((now - self.last) / tokens)
        self.last = now


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
