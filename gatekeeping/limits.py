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

Model: RPM and TPM are token buckets (capacity = the per-minute limit, refilled continuously at
limit/60 per second). This is what OpenAI's headers describe: `x-ratelimit-remaining-*` is the bucket
level and `x-ratelimit-reset-*` the time until it is full again; a refused client is told exactly when
enough has refilled (`retry-after`), rather than waiting for a fixed window's edge, and a window edge
cannot let two limits' worth through back to back. Daily and monthly quotas are calendar periods in UTC
(counters reset at 00:00 UTC and on the 1st); a period's final counts are archived in bucket
`sy_usage` when the next period starts. Concurrency is a set of leases (admission id -> expiry) kept
only when a concurrency limit is set; a lease whose holder crashed expires after `lease_s`.

Tokens are reserved at admission (the caller's estimate: prompt + max_tokens) and settled with the real
usage at the job's end: unused tokens go back to the bucket and the quotas, overuse is charged (the
bucket may go negative, delaying later requests). Replicas' clocks only need to be roughly in sync: the
refill never runs backwards and a period never rolls back.

The limiter fails closed: if NATS cannot be reached, `admit` raises `ServiceUnavailable`. `settle`
never raises (it logs and returns False). Nothing here logs a key or a prompt.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Union

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from gatekeeping.auth import Principal
from schemas.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from gatekeeping.metrics import record_rate_limited
from gatekeeping.keystore import ensure_bucket
from schemas.tenancy import Limits

BUCKET_LIMITS = "sy_limits"
BUCKET_USAGE = "sy_usage"
DEFAULT_LEASE_S = 900.0

log = structlog.get_logger("switchyard.limits")


class ScopeState(msgspec.Struct, omit_defaults=True):
    t: float = 0.0                          # time of the last refill (unix seconds)
    req: Union[float, None] = None          # request bucket level; None = full
    tok: Union[float, None] = None          # token bucket level; None = full
    day: str = ""                           # "YYYY-MM-DD" (UTC)
    day_tokens: int = 0                     # reserved + settled tokens of that day
    day_requests: int = 0
    month: str = ""                         # "YYYY-MM" (UTC)
    month_tokens: int = 0
    month_requests: int = 0
    leases: dict[str, float] = msgspec.field(default_factory=dict)


class PeriodUsage(msgspec.Struct):
    period: str
    requests: int
    tokens: int


class Admission(msgspec.Struct, kw_only=True):
    """What `admit` reserved. A msgspec struct, so it can travel with a job and be settled elsewhere."""

    id: str
    tenant: str
    key_id: str
    estimated_tokens: int
    charged: tuple[str, ...] = ()           # limit entries charged at admission ("k.<id>", "t.<id>")
    key_limits: Limits = Limits()           # the limits in force at admission (used by settle)
    tenant_limits: Limits = Limits()
    day: str = ""
    month: str = ""
    headers: dict[str, str] = {}
    settled: bool = False


_state_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(ScopeState)
_usage_decoder = msgspec.json.Decoder(PeriodUsage)


# ---- formatting -----------------------------------------------------------------------------------
def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes `x-ratelimit-reset-*` (Go's format): "20ms", "1s", "8.64s", "6m0s"."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    sec = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{h}h" if h else ""
    if h or m:
        out += f"{m}m"
    return out + f"{sec}s"


def _fmt_wait(seconds: float) -> str:
    return format_reset(max(seconds, 0.001))


def _day(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m-%d")


def _month(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m")


def _seconds_to_next_day(now: float) -> float:
    d = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    nxt = _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc) + _dt.timedelta(days=1)
    return nxt.timestamp() - now


def _seconds_to_next_month(now: float) -> float:
    d = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    nxt = _dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=_dt.timezone.utc)
    return nxt.timestamp() - now


def estimate_prompt_tokens(messages: Iterable[Any]) -> int:
    """A cheap, deliberately high estimate of a chat prompt's tokens (UTF-8 bytes / 3 + 4 per message),
    for the reservation; settlement charges the real count."""
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if isinstance(content, str):
            total += len(content.encode()) // 3 + 1
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                total += len(text.encode()) // 3 + 1 if isinstance(text, str) else 85
        total += 4
    return total + 3


# ---- the state machine (pure) ---------------------------------------------------------------------
class _View(msgspec.Struct):
    """Header material for one scope: (limit, remaining, reset seconds) for requests and tokens."""

    requests: Union[tuple[int, int, float], None] = None
    tokens: Union[tuple[int, int, float], None] = None


def _refresh(state: ScopeState, limits: Limits, now: float, archives: list[tuple[str, PeriodUsage]],
             prefix: str) -> ScopeState:
    """A copy of `state` brought to `now`: buckets refilled, periods rolled, expired leases dropped."""
    s = msgspec.structs.replace(state, leases={k: v for k, v in state.leases.items() if v > now})
    elapsed = max(0.0, now - s.t)
    if limits.rpm is not None:
        level = limits.rpm if s.req is None else s.req
        s.req = min(float(limits.rpm), level + elapsed * limits.rpm / 60.0)
    else:
        s.req = None
    if limits.tpm is not None:
        level = limits.tpm if s.tok is None else s.tok
        s.tok = min(float(limits.tpm), level + elapsed * limits.tpm / 60.0)
    else:
        s.tok = None
    s.t = max(s.t, now)
    day, month = _day(now), _month(now)
    if day > s.day:
        if s.day and (s.day_requests or s.day_tokens):
            archives.append((f"{prefix}.d.{s.day}", PeriodUsage(s.day, s.day_requests, s.day_tokens)))
        s.day, s.day_tokens, s.day_requests = day, 0, 0
    if month > s.month:
        if s.month and (s.month_requests or s.month_tokens):
            archives.append((f"{prefix}.m.{s.month}",
                             PeriodUsage(s.month, s.month_requests, s.month_tokens)))
        s.month, s.month_tokens, s.month_requests = month, 0, 0
    return s


def _view(s: ScopeState, limits: Limits) -> _View:
    v = _View()
    if limits.rpm is not None and s.req is not None:
        reset = (limits.rpm - s.req) * 60.0 / limits.rpm if limits.rpm else 0.0
        v.requests = (limits.rpm, max(0, math.floor(s.req)), max(0.0, reset))
    if limits.tpm is not None and s.tok is not None:
        reset = (limits.tpm - s.tok) * 60.0 / limits.tpm if limits.tpm else 0.0
        v.tokens = (limits.tpm, max(0, math.floor(s.tok)), max(0.0, reset))
    return v


def _headers(views: Iterable[_View]) -> dict[str, str]:
    """The most restrictive scope's values, per dimension, as OpenAI's `x-ratelimit-*` headers."""
    out: dict[str, str] = {}
    for dim in ("requests", "tokens"):
        cands = [getattr(v, dim) for v in views if getattr(v, dim) is not None]
        if not cands:
            continue
        limit, remaining, reset = min(cands, key=lambda c: (c[1], -c[2]))
        out[f"x-ratelimit-limit-{dim}"] = str(limit)
        out[f"x-ratelimit-remaining-{dim}"] = str(remaining)
        out[f"x-ratelimit-reset-{dim}"] = format_reset(reset)
    return out


def _reserve(s: ScopeState, limits: Limits, est: int, aid: str, now: float, lease_s: float,
             label: str) -> tuple[ScopeState, _View]:
    """Checks every limit of the scope and applies the reservation, or raises the refusal."""
    def refuse(exc_type: type, message: str, retry_after: float, type_: str | None = None,
               final: bool = False) -> None:
        headers = _headers([_view(s, limits)])
        if final or retry_after > 60:
            headers["x-should-retry"] = "false"
        kwargs = {"type": type_} if type_ else {}
        raise exc_type(message, retry_after=retry_after, headers=headers, **kwargs)

    if limits.monthly_tokens is not None and s.month_tokens + est > limits.monthly_tokens:
        refuse(QuotaExceeded, f"You exceeded the monthly token quota of {label}: limit "
               f"{limits.monthly_tokens}, used {s.month_tokens}, requested {est}. It resets at the start "
               f"of the next month (UTC).", _seconds_to_next_month(now))
    if limits.daily_tokens is not None and s.day_tokens + est > limits.daily_tokens:
        refuse(QuotaExceeded, f"You exceeded the daily token quota of {label}: limit "
               f"{limits.daily_tokens}, used {s.day_tokens}, requested {est}. It resets at 00:00 UTC.",
               _seconds_to_next_day(now))
    if limits.concurrency is not None and len(s.leases) >= limits.concurrency:
        refuse(RateLimited, f"Too many concurrent requests for {label}: limit {limits.concurrency}. "
               f"Please try again in 1s.", 1.0)
    if limits.rpm is not None and s.req is not None and s.req < 1.0:
        wait = (1.0 - s.req) * 60.0 / limits.rpm if limits.rpm else 60.0
        refuse(RateLimited, f"Rate limit reached for {label} on requests per min (RPM): limit "
               f"{limits.rpm}, requested 1. Please try again in {_fmt_wait(wait)}.", wait,
               type_="requests")
    if limits.tpm is not None and s.tok is not None:
        if est > limits.tpm:
            refuse(RateLimited, f"Request too large for {label} on tokens per min (TPM): limit "
                   f"{limits.tpm}, requested {est}. Reduce the prompt or max_tokens.", 60.0,
                   type_="tokens", final=True)
        if s.tok < est:
            wait = (est - s.tok) * 60.0 / limits.tpm if limits.tpm else 60.0
            refuse(RateLimited, f"Rate limit reached for {label} on tokens per min (TPM): limit "
                   f"{limits.tpm}, used {limits.tpm - max(0, math.floor(s.tok))}, requested {est}. "
                   f"Please try again in {_fmt_wait(wait)}.", wait, type_="tokens")
    if s.req is not None:
        s.req -= 1.0
    if s.tok is not None:
        s.tok -= est
    s.day_tokens += est
    s.day_requests += 1
    s.month_tokens += est
    s.month_requests += 1
    if limits.concurrency is not None:
        s.leases[aid] = now + lease_s
    return s, _view(s, limits)


def _give_back(s: ScopeState, limits: Limits, adm: Admission, actual: int, *, undo: bool) -> ScopeState:
    """Settlement (`undo=False`: the request ran and used `actual` tokens) or rollback (`undo=True`)."""
    est = adm.estimated_tokens
    refund = est if undo else est - actual
    if s.tok is not None and limits.tpm is not None:
        s.tok = min(float(limits.tpm), s.tok + refund)
    if undo and s.req is not None and limits.rpm is not None:
        s.req = min(float(limits.rpm), s.req + 1.0)
    if s.day == adm.day:
        s.day_tokens = max(0, s.day_tokens - refund)
        s.day_requests -= 1 if undo else 0
    if s.month == adm.month:
        s.month_tokens = max(0, s.month_tokens - refund)
        s.month_requests -= 1 if undo else 0
    s.leases.pop(adm.id, None)
    return s


def _record(s: ScopeState, actual: int) -> ScopeState:
    """Usage of a scope without limits (nothing was reserved there at admission)."""
    s.day_tokens += actual
    s.day_requests += 1
    s.month_tokens += actual
    s.month_requests += 1
    return s


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
                        new, result = change(_refresh(state, limits, now, archives, key), now)
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
                        estimated_tokens=est, day=_day(now), month=_month(now),
                        key_limits=principal.key_limits, tenant_limits=principal.tenant_limits)
        scopes = []
        if principal.key_limits.any():
            scopes.append((f"k.{principal.key_id}", principal.key_limits, f"API key {principal.key_id}"))
        if principal.tenant_limits.any():
            scopes.append((f"t.{principal.tenant}", principal.tenant_limits,
                           f"tenant '{principal.tenant}'"))
        views: list[_View] = []
        charged: list[tuple[str, Limits]] = []
        for key, limits, label in scopes:
            def change(s: ScopeState, t: float, limits=limits, label=label) -> tuple[ScopeState, Any]:
                adm.day, adm.month = s.day, s.month
                return _reserve(s, limits, est, adm.id, t, self._lease_s, label)
            try:
                views.append(await self._mutate(key, limits, change))
            except (RateLimited, QuotaExceeded) as exc:
                record_rate_limited(principal.tenant, exc.type)  # requests | tokens | insufficient_quota
                for ckey, climits in charged:
                    await self._undo(ckey, climits, adm)
                if views:
                    merged = _headers([*views, _header_view(exc.headers)])
                    exc.headers.update(merged)
                raise
            except Exception:
                for ckey, climits in charged:
                    await self._undo(ckey, climits, adm)
                raise
            charged.append((key, limits))
        adm.charged = tuple(k for k, _ in charged)
        adm.headers = _headers(views)
        return adm

    async def _undo(self, key: str, limits: Limits, adm: Admission) -> None:
        try:
            await self._mutate(key, limits, lambda s, t: (_give_back(s, limits, adm, 0, undo=True), None))
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
            if key in admission.charged:
                change = (lambda s, t, limits=limits:
                          (_give_back(s, limits, admission, actual, undo=False), None))
            else:
                change = lambda s, t: (_record(s, actual), None)  # noqa: E731
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
            views.append(_view(_refresh(state, limits, now, [], key), limits))
        return _headers(views)

    async def scope_usage(self, kind: str, scope_id: str, limits: Limits | None = None) -> dict[str, Any]:
        """Current counters of one scope (`kind` "t" tenant or "k" key), refreshed to now."""
        limits = limits or Limits()
        now = self._clock()
        state, _ = await self._read(f"{kind}.{scope_id}")
        s = _refresh(state, limits, now, [], f"{kind}.{scope_id}")
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
        out = []
        try:
            watcher = await self._usage.watch(f"{kind}.{scope_id}.>")
        except Exception:
            return out
        try:
            while True:
                entry = await watcher.updates(timeout=5.0)
                if entry is None:
                    break
                if entry.operation is None and entry.value:
                    u = _usage_decoder.decode(entry.value)
                    out.append({"period": u.period, "requests": u.requests, "tokens": u.tokens,
                                "granularity": "day" if ".d." in entry.key else "month"})
        finally:
            await watcher.stop()
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


def _header_view(headers: dict[str, str]) -> _View:
    """Parses our own `x-ratelimit-*` headers back (to merge a refusal's with earlier scopes')."""
    v = _View()
    for dim in ("requests", "tokens"):
        if f"x-ratelimit-limit-{dim}" in headers:
            setattr(v, dim, (int(headers[f"x-ratelimit-limit-{dim}"]),
                             int(headers[f"x-ratelimit-remaining-{dim}"]),
                             _parse_reset(headers[f"x-ratelimit-reset-{dim}"])))
    return v


def _parse_reset(text: str) -> float:
    total, num = 0.0, ""
    i = 0
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            num += c
        elif text.startswith("ms", i):
            total += float(num) / 1000
            num = ""
            i += 1
        else:
            total += float(num) * {"h": 3600, "m": 60, "s": 1}[c]
            num = ""
        i += 1
    return total
