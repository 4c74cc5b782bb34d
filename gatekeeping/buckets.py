"""The rate limits of one scope (a key or a tenant) as a pure state machine: no I/O, no clock.

RPM and TPM are token buckets (capacity = the per-minute limit, refilled continuously at limit/60 per
second). This is what OpenAI's headers describe: `x-ratelimit-remaining-*` is the bucket level and
`x-ratelimit-reset-*` the time until it is full again; a refused client is told exactly when enough has
refilled (`retry-after`), rather than waiting for a fixed window's edge, and a window edge cannot let two
limits' worth through back to back. Daily and monthly quotas are calendar periods in UTC (they reset at
00:00 UTC and on the 1st of the month); finished periods are archived for usage reports. Concurrency is
a set of leases, kept only when a concurrency limit is set; a lease whose holder crashed expires.

Tokens are reserved at admission (the caller's estimate) and settled with the real usage at the job's
end: unused tokens go back to the bucket and the quotas, overuse is charged (the bucket may go negative,
delaying later requests). The refill never runs backwards and a period never rolls back.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from typing import Union

import msgspec

from schemas.errors import QuotaExceeded, RateLimited
from schemas.tenancy import Limits


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


def day_of(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m-%d")


def month_of(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m")


def _seconds_to_next_day(now: float) -> float:
    d = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    nxt = _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc) + _dt.timedelta(days=1)
    return nxt.timestamp() - now


def _seconds_to_next_month(now: float) -> float:
    d = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    nxt = _dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=_dt.timezone.utc)
    return nxt.timestamp() - now


class View(msgspec.Struct):
    """Header material for one scope: (limit, remaining, reset seconds) for requests and tokens."""

    requests: Union[tuple[int, int, float], None] = None
    tokens: Union[tuple[int, int, float], None] = None


def refresh(state: ScopeState, limits: Limits, now: float, archives: list[tuple[str, PeriodUsage]],
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
    day, month = day_of(now), month_of(now)
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


def scope_view(s: ScopeState, limits: Limits) -> View:
    v = View()
    if limits.rpm is not None and s.req is not None:
        reset = (limits.rpm - s.req) * 60.0 / limits.rpm if limits.rpm else 0.0
        v.requests = (limits.rpm, max(0, math.floor(s.req)), max(0.0, reset))
    if limits.tpm is not None and s.tok is not None:
        reset = (limits.tpm - s.tok) * 60.0 / limits.tpm if limits.tpm else 0.0
        v.tokens = (limits.tpm, max(0, math.floor(s.tok)), max(0.0, reset))
    return v


def ratelimit_headers(views: Iterable[View]) -> dict[str, str]:
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


def reserve(s: ScopeState, limits: Limits, est: int, aid: str, now: float, lease_s: float,
             label: str) -> tuple[ScopeState, View]:
    """Checks every limit of the scope and applies the reservation, or raises the refusal."""
    def refuse(exc_type: type, message: str, retry_after: float, type_: str | None = None,
               final: bool = False) -> None:
        headers = ratelimit_headers([scope_view(s, limits)])
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
    return s, scope_view(s, limits)


def give_back(s: ScopeState, limits: Limits, adm: Admission, actual: int, *, undo: bool) -> ScopeState:
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


def record(s: ScopeState, actual: int) -> ScopeState:
    """Usage of a scope without limits (nothing was reserved there at admission)."""
    s.day_tokens += actual
    s.day_requests += 1
    s.month_tokens += actual
    s.month_requests += 1
    return s


def header_view(headers: dict[str, str]) -> View:
    """Parses our own `x-ratelimit-*` headers back (to merge a refusal's with earlier scopes')."""
    v = View()
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
