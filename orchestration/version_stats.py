"""Per-version outcomes on JetStream: each inference attempt's result (ok or not, how long) on
`sy.modelstats.<model>`, kept an hour. The rollout's monitor reads them back for one model id and
judges error rate and latency over a rolling window."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import datetime, timezone

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from orchestration.model_registry import kv_key
from orchestration.streams import _add_or_update, patiently
from schemas.rollout import MonitorSpec, MonitorVerdict, VersionOutcome

STATS_STREAM = "SY_MODEL_STATS"
STATS_PREFIX = "sy.modelstats"
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(VersionOutcome)


def stats_subject(model_id: str) -> str:
    return f"{STATS_PREFIX}.{kv_key('', model_id)}"


async def ensure_stats_stream(js: JetStreamContext, *, replicas: int = 1) -> None:
    config = StreamConfig(name=STATS_STREAM, subjects=[f"{STATS_PREFIX}.>"], storage=StorageType.FILE,
                          max_age=3600.0, max_bytes=256 * 1024 * 1024, num_replicas=replicas)
    await patiently(lambda: _add_or_update(js, config))


class OutcomeRecorder:
    """Publishes outcomes without waiting for an ack: a lost sample costs the monitor one data point,
    never the request any latency."""

    def __init__(self, nc: NATS):
        self._nc = nc

    async def record(self, model_id: str, ok: bool, latency_s: float) -> None:
        try:
            await self._nc.publish(stats_subject(model_id),
                                   _encoder.encode(VersionOutcome(time.time(), ok, latency_s * 1000)))
        except Exception:
            pass


class Window:
    """The outcomes of the last `spec.window_s` seconds and the verdict on them."""

    def __init__(self, spec: MonitorSpec):
        self.spec = spec
        self.samples: deque[VersionOutcome] = deque()

    def add(self, outcome: VersionOutcome) -> None:
        self.samples.append(outcome)

    def verdict(self, now: float) -> MonitorVerdict:
        while self.samples and self.samples[0].ts < now - self.spec.window_s:
            self.samples.popleft()
        n = len(self.samples)
        errors = sum(1 for s in self.samples if not s.ok)
        latencies = sorted(s.latency_ms for s in self.samples if s.ok)
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] if latencies else 0.0
        if n < self.spec.min_requests:
            return MonitorVerdict(healthy=True, requests=n, errors=errors, p95_ms=p95)
        if errors / n > self.spec.max_error_rate:
            return MonitorVerdict(False, n, errors, p95, f"error rate {errors}/{n} over "
                                  f"{self.spec.max_error_rate:.0%} in {self.spec.window_s:g} s", now)
        if self.spec.max_p95_ms and p95 > self.spec.max_p95_ms:
            return MonitorVerdict(False, n, errors, p95, f"p95 latency {p95:.0f} ms over "
                                  f"{self.spec.max_p95_ms:g} ms", now)
        return MonitorVerdict(healthy=True, requests=n, errors=errors, p95_ms=p95)


async def watch_version(js: JetStreamContext, model_id: str, spec: MonitorSpec, duration_s: float,
                        since: float) -> MonitorVerdict:
    """Watches `model_id` for `duration_s`; the first breach ends the watch with its verdict.
    `since` (unix seconds) bounds the outcomes read back from the stream."""
    window = Window(spec)
    start = max(since, time.time() - spec.window_s)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                            opt_start_time=datetime.fromtimestamp(start, timezone.utc))
    sub = await js.subscribe(stats_subject(model_id), ordered_consumer=True, config=config)
    deadline = time.monotonic() + duration_s
    last = MonitorVerdict(healthy=True)
    judge_at = 0.0
    try:
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=spec.poll_s)
                outcome = _decoder.decode(msg.data)
                if outcome.ts >= since:
                    window.add(outcome)
            except asyncio.TimeoutError:  # nats' TimeoutError is one too
                pass
            except msgspec.DecodeError:
                continue
            if time.monotonic() < judge_at:
                continue
            judge_at = time.monotonic() + spec.poll_s
            last = window.verdict(time.time())
            if not last.healthy:
                return last
        return last
    finally:
        await sub.unsubscribe()
