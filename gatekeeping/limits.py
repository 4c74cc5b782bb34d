"""Rate limits and token quotas per tenant and per API key, exact across proxy replicas sharing one NATS.

Storage: one JetStream KV entry per scope (`t.<tenant>` and `k.<key_id>` in bucket `sy_limits`) holds
*all* of that scope's counters: the request and token buckets, the day's and the month's token and
request counts, and the concurrency leases. A scope is charged by one compare-and-set write
(`kv.update(key, value, last=revision)`), so every limit of that scope is checked and reserved
atomically in a single step.

Why it is exact: JetStream orders the writes to one subject and rejects an update whose expected last
revision is not the current one (`KeyWrongLastSequenceError`). A replica whose decision was computed
from an outdated state therefore cannot write it; it re-reads and decides again. Every admission that
succeeds was decided on the latest state, so the replicas together make exactly the decisions a single
process would: a burst split across any number of replicas never admits more than the limit (the
LiteLLM failure of limits multiplied by the replica count cannot happen). Within one process, writes to
a scope go through a per-scope asyncio lock and reuse the revision they wrote last, so a single replica
pays one round trip per scope and never conflicts with itself; conflicts (and a re-read) only occur
between replicas. When both the key and the tenant have limits, the key is charged first, then the
tenant; a refusal by the tenant gives the key's reservation back. The moment in between can only cause
a refusal, never an extra admission.

The model of one scope (token buckets, calendar quotas, concurrency leases) is the pure state machine
in gatekeeping/buckets.py; this module stores it and decides on it exactly across replicas.

The limiter fails closed: if NATS cannot be reached, `admit` raises `ServiceUnavailable`. `settle`
never raises (it logs and returns False). Nothing here logs a key or a prompt.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from gatekeeping.auth import Principal
from gatekeeping.buckets import (
    Admission,
    PeriodUsage,
    ScopeState,
    View,
    day_of,
    give_back,
    header_view,
    month_of,
    ratelimit_headers,
    record,
    refresh,
    reserve,
    scope_view,
)
from gatekeeping.keystore import ensure_bucket
from gatekeeping.metrics import record_rate_limited
from schemas.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from schemas.tenancy import Limits

BUCKET_LIMITS = "sy_limits"
BUCKET_USAGE = "sy_usage"
DEFAULT_LEASE_S = 900.0

log = structlog.get_logger("switchyard.limits")
_state_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(ScopeState)
_usage_decoder = msgspec.json.Decoder(PeriodUsage)


class Limiter:
    """`admit` before a job starts, `settle` at its end. One per process; safe for concurrent use."""

    def __init__(self, limits_kv: KeyValue, usage_kv: KeyValue, clock: Callable[[], float] = time.time,
                 lease_s: float = DEFAULT_LEASE_S, max_attempts: int = 200):
        self._kv = limits_kv
        self._usage = usage_kv
        self._clock = clock
        self._lease_s = lease_s
        self._max_attempts = max_attempts
        self._locks: dict[str, asyncio.Lock] = {}
        self._cache: dict[str, tuple[ScopeState, int]] = {}
        self.conflicts = 0   # CAS races lost to another replica (observability and tests)

    @classmethod
    async def open(cls, js: JetStreamContext, *, clock: Callable[[], float] = time.time,
                   lease_s: float = DEFAULT_LEASE_S, replicas: int = 1) -> "Limiter":
        limits_kv = await ensure_bucket(js, BUCKET_LIMITS, replicas=replicas, history=1, ttl=40 * 86400)
        usage_kv = await ensure_bucket(js, BUCKET_USAGE, replicas=replicas, history=1, ttl=400 * 86400)
        return cls(limits_kv, usage_kv, clock, lease_s)

    # ---- compare-and-set on one scope ------------------------------------------------------------
    async def _read(self, key: str) -> tuple[ScopeState, int]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return ScopeState(), 0
        assert entry.value is not None and entry.revision is not None  # get() raised for a deleted key
        return _state_decoder.decode(entry.value), entry.revision

    async def _mutate(self, key: str, limits: Limits,
                      change: Callable[[ScopeState, float], tuple[ScopeState, Any]]) -> Any:
        """Runs `change` on the scope's latest state and writes the result with compare-and-set,
        re-reading and re-deciding after a lost race. A refusal raised by `change` is trusted only
        when it was decided on freshly read state."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            fresh = False
            for attempt in range(self._max_attempts):
                try:
                    if cached is None:
                        cached = await self._read(key)
                        fresh = True
                    state, rev = cached
                    archives: list[tuple[str, PeriodUsage]] = []
                    now = self._clock()
                    try:
                        new, result = change(refresh(state, limits, now, archives, key), now)
                    except (RateLimited, QuotaExceeded):
                        if fresh:
                            raise
                        cached = None
                        continue
                    data = _state_encoder.encode(new)
                    try:
                        if rev == 0:
                            new_rev = await self._kv.create(key, data)
                        else:
                            new_rev = await self._kv.update(key, data, last=rev)
                    except KeyWrongLastSequenceError:
                        self.conflicts += 1
                        self._cache.pop(key, None)
                        cached = None
                        if attempt >= 3:
                            await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 20)))
                        continue
                except (RateLimited, QuotaExceeded):
                    raise
                except Exception as exc:
                    self._cache.pop(key, None)
                    raise ServiceUnavailable("The rate limiter is unavailable; please retry.",
                                             code="limiter_unavailable") from exc
                self._cache[key] = (new, new_rev)
                for usage_key, usage in archives:
                    try:
                        await self._usage.put(usage_key, _state_encoder.encode(usage))
                    except Exception as exc:
                        log.warning("usage_archive_failed", error_type=type(exc).__name__)
                return result
            raise ServiceUnavailable("The rate limiter is too contended; please retry.",
                                     code="limiter_contention")

    # ---- the request path -------------------------------------------------------------------------
    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        """Reserves 1 request, `estimated_tokens` tokens and (where limited) 1 concurrency slot on the
        key's and the tenant's limits. Raises `RateLimited` / `QuotaExceeded` (429, with `retry-after`
        and `x-ratelimit-*` headers) or `ServiceUnavailable` (NATS unreachable)."""
        est = max(0, int(estimated_tokens))
        now = self._clock()
        adm = Admission(id=uuid.uuid4().hex, tenant=principal.tenant, key_id=principal.key_id,
                        estimated_tokens=est, day=day_of(now), month=month_of(now),
                        key_limits=principal.key_limits, tenant_limits=principal.tenant_limits)
        scopes = []
        if principal.key_limits.any():
            scopes.append((f"k.{principal.key_id}", principal.key_limits, f"API key {principal.key_id}"))
        if principal.tenant_limits.any():
            scopes.append((f"t.{principal.tenant}", principal.tenant_limits,
                           f"tenant '{principal.tenant}'"))
        views: list[View] = []
        charged: list[tuple[str, Limits]] = []
        for key, limits, label in scopes:
            def change(s: ScopeState, t: float, limits: Limits = limits, label: str = label) -> tuple[ScopeState, Any]:
                adm.day, adm.month = s.day, s.month
                return reserve(s, limits, est, adm.id, t, self._lease_s, label)
            try:
                views.append(await self._mutate(key, limits, change))
            except (RateLimited, QuotaExceeded) as exc:
                record_rate_limited(principal.tenant, exc.type)  # requests | tokens | insufficient_quota
                for ckey, climits in charged:
                    await self._undo(ckey, climits, adm)
                if views:
                    merged = ratelimit_headers([*views, header_view(exc.headers)])
                    exc.headers.update(merged)
                raise
            except Exception:
                for ckey, climits in charged:
                    await self._undo(ckey, climits, adm)
                raise
            charged.append((key, limits))
        adm.charged = tuple(k for k, _ in charged)
        adm.headers = ratelimit_headers(views)
        return adm

    async def _undo(self, key: str, limits: Limits, adm: Admission) -> None:
        try:
            await self._mutate(key, limits, lambda s, t: (give_back(s, limits, adm, 0, undo=True), None))
        except Exception as exc:
            log.warning("limits_rollback_failed", error_type=type(exc).__name__)

    async def settle(self, admission: Admission, actual_tokens: int | None) -> bool:
        """Settles with the real usage (prompt + completion tokens): gives back what the estimate
        over-reserved (or charges the excess), frees the concurrency slot and records the usage.
        `actual_tokens=None` (unknown, e.g. the job failed before reporting usage) keeps the
        reservation as the charge; pass 0 for a job that never reached the engine. Idempotent per
        Admission object; never raises (returns False if NATS could not be updated)."""
        if admission.settled:
            return True
        admission.settled = True
        actual = admission.estimated_tokens if actual_tokens is None else max(0, int(actual_tokens))
        ok = True
        for key in (f"k.{admission.key_id}", f"t.{admission.tenant}"):
            limits = admission.key_limits if key.startswith("k.") else admission.tenant_limits
            change: Callable[[ScopeState, float], tuple[ScopeState, None]]
            if key in admission.charged:
                change = partial(_given_back, limits=limits, admission=admission, actual=actual)
            else:
                change = partial(_recorded, actual=actual)
            # One marker per admission and scope, taken before the change: a replayed settlement
            # (a redelivery, another replica, a partial failure retried) never applies a scope twice.
            marker = f"settled.{admission.id}.{key[0]}"
            try:
                await self._kv.create(marker, b"")
            except KeyWrongLastSequenceError:
                continue  # this scope was settled already
            except Exception as exc:
                ok = False
                log.warning("limits_settle_failed", error_type=type(exc).__name__)
                continue
            try:
                await self._mutate(key, limits, change)
            except Exception as exc:
                ok = False
                log.warning("limits_settle_failed", error_type=type(exc).__name__)
                try:
                    await self._kv.delete(marker)  # so the redelivered settlement applies it
                except Exception:
                    pass
        if not ok:
            admission.settled = False
        return ok

    # ---- reports ----------------------------------------------------------------------------------
    async def peek(self, principal: Principal) -> dict[str, str]:
        """The `x-ratelimit-*` header values right now, without reserving anything (one KV read per
        limited scope; no read for unlimited principals)."""
        views = []
        now = self._clock()
        for key, limits in ((f"k.{principal.key_id}", principal.key_limits),
                            (f"t.{principal.tenant}", principal.tenant_limits)):
            if limits.rpm is None and limits.tpm is None:
                continue
            state, _ = await self._read(key)
            views.append(scope_view(refresh(state, limits, now, [], key), limits))
        return ratelimit_headers(views)

    async def scope_usage(self, kind: str, scope_id: str, limits: Limits | None = None) -> dict[str, Any]:
        """Current counters of one scope (`kind` "t" tenant or "k" key), refreshed to now."""
        limits = limits or Limits()
        now = self._clock()
        state, _ = await self._read(f"{kind}.{scope_id}")
        s = refresh(state, limits, now, [], f"{kind}.{scope_id}")
        out: dict[str, Any] = {
            "day": {"period": s.day, "requests": s.day_requests, "tokens": s.day_tokens},
            "month": {"period": s.month, "requests": s.month_requests, "tokens": s.month_tokens},
        }
        if limits.concurrency is not None:
            out["in_flight"] = len(s.leases)
        remaining: dict[str, Any] = {}
        if s.req is not None:
            remaining["requests"] = max(0, math.floor(s.req))
        if s.tok is not None:
            remaining["tokens"] = max(0, math.floor(s.tok))
        if limits.daily_tokens is not None:
            remaining["daily_tokens"] = max(0, limits.daily_tokens - s.day_tokens)
        if limits.monthly_tokens is not None:
            remaining["monthly_tokens"] = max(0, limits.monthly_tokens - s.month_tokens)
        if remaining:
            out["remaining"] = remaining
        return out

    async def history(self, kind: str, scope_id: str) -> list[dict[str, Any]]:
        """Archived finished periods of a scope, oldest first."""
        out: list[dict[str, Any]] = []
        try:
            watcher = await self._usage.watch(f"{kind}.{scope_id}.>")
        except Exception:
            return out
        try:
            while True:
                entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
                if entry is None:
                    break
                if entry.operation is None and entry.value:
                    u = _usage_decoder.decode(entry.value)
                    out.append({"period": u.period, "requests": u.requests, "tokens": u.tokens,
                                "granularity": "day" if ".d." in entry.key else "month"})
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return sorted(out, key=lambda u: (u["granularity"], u["period"]))

    async def usage(self, tenant: str, tenant_limits: Limits | None = None,
                    keys: Iterable[tuple[str, Limits]] = ()) -> dict[str, Any]:
        """A usage report for a tenant and (optionally) its keys: today's and this month's requests and
        tokens (reservations of running requests included), remaining allowances, archived periods."""
        report: dict[str, Any] = {"object": "usage", "tenant": tenant}
        report.update(await self.scope_usage("t", tenant, tenant_limits))
        report["keys"] = []
        for key_id, limits in keys:
            item = {"key_id": key_id}
            item.update(await self.scope_usage("k", key_id, limits))
            report["keys"].append(item)
        report["history"] = await self.history("t", tenant)
        return report


def _given_back(s: ScopeState, t: float, *, limits: Limits, admission: Admission,
                actual: int) -> tuple[ScopeState, None]:
    return give_back(s, limits, admission, actual, undo=False), None


def _recorded(s: ScopeState, t: float, *, actual: int) -> tuple[ScopeState, None]:
    return record(s, actual), None
