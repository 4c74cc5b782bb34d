"""Bounds on the jobs API's read routes (`GET /v1/jobs`, `/v1/jobs/{id}/result`, `/v1/jobs/{id}/events`).

- A read rate limit per API key: a token bucket of `burst` reads refilled at `rps` per second. It is
  kept in this process's memory, so it is per key *per replica* (N replicas allow N times the rate):
  it protects each replica's Temporal and NATS clients, not an exact quota.
- At most `event_streams` open `/events` streams per key on a replica.
- `/result` assembles at most `result_events` events / `result_bytes` bytes of them.
- `GET /v1/jobs` reads at most `list_scan` visibility entries over at most `list_queries` queries.
Beyond a bound: 429 (`retry-after`) or 413, in OpenAI's envelope. No I/O here.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from schemas.errors import RateLimited

MAX_TRACKED_KEYS = 10_000  # buckets kept; past this the full (idle) ones are dropped


class ReadLimits(msgspec.Struct, frozen=True):
    rps: float = 10.0                     # SWITCHYARD_READ_RPS; 0: no read rate limit
    burst: int = 60                       # SWITCHYARD_READ_BURST
    event_streams: int = 64               # SWITCHYARD_MAX_EVENT_STREAMS; 0: no cap
    result_events: int = 100_000          # SWITCHYARD_RESULT_MAX_EVENTS
    result_bytes: int = 16 * 1024 * 1024  # SWITCHYARD_RESULT_MAX_BYTES
    list_scan: int = 2000                 # SWITCHYARD_LIST_MAX_SCAN
    list_queries: int = 24                # SWITCHYARD_LIST_MAX_QUERIES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ReadLimits":
        e = os.environ if env is None else env
        d = cls()
        return cls(rps=float(e.get("SWITCHYARD_READ_RPS", d.rps)),
                   burst=int(e.get("SWITCHYARD_READ_BURST", d.burst)),
                   event_streams=int(e.get("SWITCHYARD_MAX_EVENT_STREAMS", d.event_streams)),
                   result_events=int(e.get("SWITCHYARD_RESULT_MAX_EVENTS", d.result_events)),
                   result_bytes=int(e.get("SWITCHYARD_RESULT_MAX_BYTES", d.result_bytes)),
                   list_scan=int(e.get("SWITCHYARD_LIST_MAX_SCAN", d.list_scan)),
                   list_queries=int(e.get("SWITCHYARD_LIST_MAX_QUERIES", d.list_queries)))


class ReadGate:
    """This replica's read buckets and open `/events` streams, by key id."""

    def __init__(self, limits: ReadLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (level, time)
        self._streams: dict[str, int] = {}

    def charge(self, key_id: str) -> None:
        """One read; RateLimited (429) when the key's bucket is empty."""
        rps, burst = self.limits.rps, float(self.limits.burst)
        if rps <= 0:
            return
        now = self._clock()
        level, then = self._buckets.get(key_id, (burst, now))
        level = min(burst, level + (now - then) * rps)
        if level < 1.0:
            self._buckets[key_id] = (level, now)
            raise RateLimited(f"Too many reads of the jobs API with this API key: at most {rps:g} per second "
                              f"(bursts of {self.limits.burst}). Please retry later.",
                              retry_after=(1.0 - level) / rps)
        if len(self._buckets) >= MAX_TRACKED_KEYS and key_id not in self._buckets:
            self._prune(now)
        self._buckets[key_id] = (level - 1.0, now)

    def _prune(self, now: float) -> None:
        rps, burst = self.limits.rps, float(self.limits.burst)
        self._buckets = {k: v for k, v in self._buckets.items() if v[0] + (now - v[1]) * rps < burst}

    def open_stream(self, key_id: str) -> Callable[[], None]:
        """Takes one of the key's `/events` slots; returns its release (safe to call twice)."""
        cap = self.limits.event_streams
        held = self._streams.get(key_id, 0)
        if cap > 0 and held >= cap:
            raise RateLimited(f"Too many open event streams for this API key (at most {cap} at once). "
                              "Close one, or retry later.", code="too_many_event_streams", retry_after=1.0)
        self._streams[key_id] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._streams.get(key_id, 1) - 1
            if left > 0:
                self._streams[key_id] = left
            else:
                self._streams.pop(key_id, None)

        return release


# A route of the proxy's (gatekeeping knows no HTTP types): a request to its response or SSE stream.
Handler = Callable[[Any], Awaitable[Any]]


def _gate(request: Any) -> ReadGate | None:
    gate: ReadGate | None = getattr(request.app.state.runtime, "reads", None)
    return gate


def read_limited(handler: Handler) -> Handler:
    """A read route charged to the caller's key (429 past its read rate)."""
    @functools.wraps(handler)
    async def limited(request: Any) -> Any:
        gate = _gate(request)
        if gate is not None:
            gate.charge(request.state.principal.key_id)
        return await handler(request)

    return limited


def stream_limited(handler: Handler) -> Handler:
    """An SSE read route: charged as a read, and holding one of the key's stream slots until the
    response closes (429 when they are all taken)."""
    @functools.wraps(handler)
    async def limited(request: Any) -> Any:
        gate = _gate(request)
        if gate is None:
            return await handler(request)
        key_id = request.state.principal.key_id
        gate.charge(key_id)
        release = gate.open_stream(key_id)
        try:
            response = await handler(request)
        except BaseException:
            release()
            raise
        if not hasattr(response, "on_close"):  # not a stream (an error answered as a response)
            release()
            return response
        inner = response.on_close

        async def on_close() -> None:
            release()
            if inner is not None:
                await inner()

        response.on_close = on_close
        return response

    return limited
