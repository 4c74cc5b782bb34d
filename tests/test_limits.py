"""Rate limits and quotas on JetStream KV, with two Limiter instances standing for two proxy replicas."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid

import nats
import pytest

from gatekeeping.auth import Principal
from schemas.errors import QuotaExceeded, RateLimited
from proxy.http.errors import error_response
from gatekeeping.admission import estimate_prompt_tokens
from gatekeeping.buckets import Admission, format_reset
from gatekeeping.limits import Limiter
from schemas.tenancy import Limits


class Clock:
    """A shared, settable wall clock (both replicas read the same one)."""

    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
async def conns(nats_url: str):
    cs = [await nats.connect(nats_url) for _ in range(2)]
    yield cs
    for nc in cs:
        await nc.close()


async def _pair(conns, clock=time.time, **kw) -> tuple[Limiter, Limiter]:
    return (await Limiter.open(conns[0].jetstream(), clock=clock, **kw),
            await Limiter.open(conns[1].jetstream(), clock=clock, **kw))


def _principal(tenant_limits: Limits = Limits(), key_limits: Limits = Limits(), tenant: str | None = None,
               key_id: str | None = None) -> Principal:
    return Principal(tenant=tenant or "t-" + uuid.uuid4().hex[:10], key_id=key_id or "key_" + uuid.uuid4().hex[:12],
                     tenant_limits=tenant_limits, key_limits=key_limits)


async def _burst(limiters, principal, n: int, tokens: int):
    results = await asyncio.gather(*(limiters[i % len(limiters)].admit(principal, tokens) for i in range(n)),
                                   return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if not isinstance(r, Admission)]
    assert all(isinstance(r, (RateLimited, QuotaExceeded)) for r in refused), refused
    return admitted, refused


def test_format_reset_like_openai() -> None:
    assert format_reset(0) == "0s"
    assert format_reset(0.02) == "20ms"
    assert format_reset(1) == "1s"
    assert format_reset(8.64) == "8.64s"
    assert format_reset(360) == "6m0s"
    assert format_reset(90.5) == "1m30.5s"
    assert format_reset(3 * 3600 + 2) == "3h0m2s"


def test_estimate_is_generous() -> None:
    msgs = [{"role": "user", "content": "hello world " * 100}]
    assert estimate_prompt_tokens(msgs) >= 200


async def test_rpm_burst_split_across_two_replicas_admits_exactly_the_limit(conns) -> None:
    clock = Clock()
    a, b = await _pair(conns, clock)
    p = _principal(Limits(rpm=10))
    admitted, refused = await _burst([a, b], p, 30, 1)
    assert len(admitted) == 10 and len(refused) == 20
    assert {adm.id for adm in admitted} and len({adm.id for adm in admitted}) == 10
    e = refused[0]
    assert e.status == 429 and e.code == "rate_limit_exceeded" and e.type == "requests"
    assert e.headers["retry-after"] == "6" and e.headers["retry-after-ms"] == "6000"
    assert e.headers["x-ratelimit-limit-requests"] == "10"
    assert e.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.headers["x-ratelimit-reset-requests"] == "1m0s"
    # the bucket refills continuously: 6 s later exactly one more request fits
    clock.t += 6.01
    assert isinstance(await b.admit(p, 1), Admission)
    with pytest.raises(RateLimited):
        await a.admit(p, 1)


async def test_rpm_burst_with_the_real_clock(conns) -> None:
    a, b = await _pair(conns)
    p = _principal(Limits(rpm=12))
    admitted, refused = await _burst([a, b], p, 36, 1)
    assert len(admitted) == 12, (len(admitted), a.conflicts, b.conflicts)


async def test_tpm_reservations_never_overspend_and_settle_returns_tokens(conns) -> None:
    clock = Clock()
    a, b = await _pair(conns, clock)
    p = _principal(Limits(tpm=1000))
    admitted, refused = await _burst([a, b], p, 30, 100)
    assert len(admitted) == 10
    assert refused[0].type == "tokens" and refused[0].headers["x-ratelimit-remaining-tokens"] == "0"
    assert "x-ratelimit-limit-requests" not in refused[0].headers      # no RPM limit set
    # settling with the real usage (40 of the 100 reserved) gives 60 back per request
    await asyncio.gather(*(([a, b][i % 2]).settle(adm, 40) for i, adm in enumerate(admitted)))
    headers = await a.peek(p)
    assert headers["x-ratelimit-remaining-tokens"] == "600"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    admitted2, _ = await _burst([a, b], p, 10, 100)
    assert len(admitted2) == 6
    # settling twice is a no-op; overuse is charged (the bucket goes negative)
    assert await a.settle(admitted[0], 40)
    await a.settle(admitted2[0], 400)
    assert (await a.peek(p))["x-ratelimit-remaining-tokens"] == "0"
    # a request larger than the whole TPM can never run: told not to retry
    with pytest.raises(RateLimited) as info:
        await a.admit(p, 5000)
    assert info.value.headers.get("x-should-retry") == "false"


async def test_admission_headers(conns) -> None:
    clock = Clock()
    a, _ = await _pair(conns, clock)
    p = _principal(Limits(rpm=60, tpm=6000))
    adm = await a.admit(p, 600)
    assert adm.headers == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "5400",
        "x-ratelimit-reset-tokens": "6s",
    }
    unlimited = await a.admit(_principal(), 600)
    assert unlimited.headers == {} and unlimited.charged == ()


async def test_concurrency_slots_across_replicas_and_release(conns) -> None:
    clock = Clock()
    a, b = await _pair(conns, clock)
    p = _principal(Limits(concurrency=3))
    admitted, refused = await _burst([a, b], p, 10, 10)
    assert len(admitted) == 3
    assert refused[0].code == "rate_limit_exceeded" and refused[0].headers["retry-after"] == "1"
    await b.settle(admitted[0], 5)           # settled on the other replica
    again = await a.admit(p, 10)
    with pytest.raises(RateLimited):
        await b.admit(p, 10)
    for adm in (again, *admitted[1:]):
        await a.settle(adm, 0)
    admitted, _ = await _burst([a, b], p, 6, 10)
    assert len(admitted) == 3


async def test_a_crashed_holder_lease_expires(conns) -> None:
    clock = Clock()
    a, b = await _pair(conns, clock, lease_s=30)
    p = _principal(Limits(concurrency=1))
    await a.admit(p, 1)                       # never settled: its replica "crashed"
    with pytest.raises(RateLimited):
        await b.admit(p, 1)
    clock.t += 31
    assert isinstance(await b.admit(p, 1), Admission)


async def test_daily_quota_refusal_then_recovery_at_midnight(conns) -> None:
    day = dt.datetime(2030, 5, 17, 23, 0, tzinfo=dt.timezone.utc).timestamp()
    clock = Clock(day)
    a, b = await _pair(conns, clock)
    p = _principal(Limits(daily_tokens=1000, monthly_tokens=100_000))
    first = await a.admit(p, 400)
    second = await b.admit(p, 400)
    with pytest.raises(QuotaExceeded) as info:
        await a.admit(p, 400)
    e = info.value
    assert e.status == 429 and e.type == "insufficient_quota" and e.code == "insufficient_quota"
    assert e.headers["retry-after"] == "3600"            # 23:00 -> midnight UTC
    assert e.headers["x-should-retry"] == "false"
    resp = error_response(e)
    assert resp.status_code == 429 and resp.headers["retry-after"] == "3600"
    assert json.loads(resp.body)["error"]["code"] == "insufficient_quota"
    # settlement gives back what was not used: 2 x 300 returned
    await a.settle(first, 100)
    await b.settle(second, 100)
    third = await b.admit(p, 400)                        # 100 + 100 + 400 reserved
    with pytest.raises(QuotaExceeded):
        await a.admit(p, 401)
    await a.settle(third, 400)
    clock.t += 3600                                       # the next UTC day
    assert isinstance(await a.admit(p, 900), Admission)
    report = await a.scope_usage("t", p.tenant, p.tenant_limits)
    assert report["day"] == {"period": "2030-05-18", "requests": 1, "tokens": 900}
    assert report["month"]["tokens"] == 600 + 900 and report["month"]["period"] == "2030-05"
    assert report["remaining"]["daily_tokens"] == 100
    history = await a.history("t", p.tenant)
    assert {"period": "2030-05-17", "requests": 3, "tokens": 600, "granularity": "day"} in history


async def test_monthly_quota_resets_on_the_first(conns) -> None:
    clock = Clock(dt.datetime(2030, 1, 31, 12, 0, tzinfo=dt.timezone.utc).timestamp())
    a, _ = await _pair(conns, clock)
    p = _principal(key_limits=Limits(monthly_tokens=500))
    adm = await a.admit(p, 500)
    with pytest.raises(QuotaExceeded) as info:
        await a.admit(p, 1)
    assert info.value.headers["retry-after"] == str(12 * 3600)
    await a.settle(adm, 500)
    clock.t += 12 * 3600
    assert isinstance(await a.admit(p, 500), Admission)


async def test_key_and_tenant_limits_both_hold_and_a_tenant_refusal_gives_the_key_back(conns) -> None:
    clock = Clock()
    a, b = await _pair(conns, clock)
    tenant = "t-" + uuid.uuid4().hex[:10]
    k1 = _principal(Limits(rpm=3), Limits(rpm=2), tenant=tenant)
    k2 = _principal(Limits(rpm=3), Limits(rpm=2), tenant=tenant)
    admitted, _ = await _burst([a, b], k1, 5, 1)
    assert len(admitted) == 2                           # the key's limit
    assert isinstance(await b.admit(k2, 1), Admission)  # the tenant's third
    with pytest.raises(RateLimited) as info:
        await a.admit(k2, 1)                            # the tenant is full; k2's reservation undone
    assert "tenant" in info.value.message
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert (await a.peek(k2))["x-ratelimit-remaining-requests"] == "0"   # min over key (1) and tenant (0)
    key_only = await a.scope_usage("k", k2.key_id, k2.key_limits)
    assert key_only["remaining"]["requests"] == 1 and key_only["day"]["requests"] == 1


async def test_usage_of_unlimited_principals_is_recorded_at_settlement(conns) -> None:
    a, b = await _pair(conns)
    p = _principal()
    for lim in (a, b, a):
        adm = await lim.admit(p, 100)
        await lim.settle(adm, 30)
    report = await b.usage(p.tenant, Limits(), [(p.key_id, Limits())])
    assert report["day"]["requests"] == 3 and report["day"]["tokens"] == 90
    assert report["keys"][0]["key_id"] == p.key_id and report["keys"][0]["month"]["tokens"] == 90


async def test_failed_job_settles_with_zero_and_unknown_usage_keeps_the_reservation(conns) -> None:
    clock = Clock()
    a, _ = await _pair(conns, clock)
    p = _principal(Limits(tpm=1000, daily_tokens=10_000))
    await a.settle(await a.admit(p, 300), 0)
    assert (await a.peek(p))["x-ratelimit-remaining-tokens"] == "1000"
    await a.settle(await a.admit(p, 300), None)
    assert (await a.peek(p))["x-ratelimit-remaining-tokens"] == "700"


async def test_nats_unreachable_fails_closed(nats_url) -> None:
    from schemas.errors import ServiceUnavailable

    nc = await nats.connect(nats_url)
    lim = await Limiter.open(nc.jetstream())
    await nc.close()
    with pytest.raises(ServiceUnavailable):
        await lim.admit(_principal(Limits(rpm=5)), 1)
    adm = Admission(id="x", tenant="t", key_id="k", estimated_tokens=1)
    assert await lim.settle(adm, 1) is False            # never raises


_BURST_SCRIPT = """
import asyncio, sys, nats
from gatekeeping.auth import Principal
from gatekeeping.buckets import Admission
from gatekeeping.limits import Limiter
from schemas.tenancy import Limits

async def main(url, tenant, n, start_at):
    nc = await nats.connect(url)
    lim = await Limiter.open(nc.jetstream())
    p = Principal(tenant=tenant, key_id="key_proc", tenant_limits=Limits(rpm=20, tpm=100_000))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - __import__('time').time()))
    res = await asyncio.gather(*(lim.admit(p, 50) for _ in range(n)), return_exceptions=True)
    print(sum(isinstance(r, Admission) for r in res), lim.conflicts)
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


async def test_two_processes_share_one_limit(nats_url) -> None:
    """Two OS processes (as two proxy replicas) burst 30 requests each at an RPM limit of 20."""
    import sys

    tenant = "t-" + uuid.uuid4().hex[:10]
    start_at = time.time() + 1.5
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", _BURST_SCRIPT, nats_url, tenant, "30",
                                                  str(start_at), stdout=asyncio.subprocess.PIPE)
             for _ in range(2)]
    outs = [(await p.communicate())[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o[0]) for o in outs) == 20, outs
    print("admitted, conflicts per process:", outs)


async def test_a_settlement_replayed_on_other_replicas_charges_once(conns) -> None:
    """A redelivered settlement (a crash before the ack, a partial failure retried) arrives as a new
    Admission decoded from the same message: it must not give tokens back twice."""
    import msgspec

    clock = Clock()
    a, b = await _pair(conns, clock)
    p = _principal(Limits(tpm=1000), Limits(tpm=1000))
    adm = await a.admit(p, 500)
    wire = msgspec.json.encode(adm)
    for lim in (a, b, b, a):  # the same message settled by both replicas, twice each
        assert await lim.settle(msgspec.json.decode(wire, type=Admission), 100)
    headers = await a.peek(p)
    assert headers["x-ratelimit-remaining-tokens"] == "900"  # 100 used, charged once, refunded once
    report = await b.usage(p.tenant, Limits(tpm=1000), [(p.key_id, Limits(tpm=1000))])
    assert report["day"]["requests"] == 1 and report["day"]["tokens"] == 100
