"""Operator commands on tenants, API keys and usage, talking straight to NATS (SWITCHYARD_NATS_URL).

    switchyard tenants create acme --tier high --rpm 600 --tpm 200000 --daily-tokens 5000000
    switchyard tenants list
    switchyard keys create --tenant acme --rpm 60 --models 'llama-*,qwen*' --expires-days 30
    switchyard keys list --tenant acme
    switchyard keys revoke key_0123456789ab
    switchyard usage --tenant acme

`keys create` prints the key once, alone on stdout; only its SHA-256 digest is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Awaitable, Callable

from schemas.tenancy import Limits, parse_tier


def add_limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute (prompt + completion)")
    p.add_argument("--concurrency", type=int, help="concurrent requests")
    p.add_argument("--daily-tokens", type=int, help="token quota per UTC day")
    p.add_argument("--monthly-tokens", type=int, help="token quota per UTC month")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(rpm=args.rpm, tpm=args.tpm, concurrency=args.concurrency,
                  daily_tokens=args.daily_tokens, monthly_tokens=args.monthly_tokens)


def _globs(text: str | None) -> tuple[str, ...]:
    return tuple(g.strip() for g in (text or "*").split(",") if g.strip()) or ("*",)


def _fmt_limits(limits: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in limits.items()) or "-"


def _fmt_time(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


async def with_nats(fn: Callable[[Any, int], Awaitable[int]]) -> int:
    """`fn(js, replicas)` on a connection to the NATS the environment names (SWITCHYARD_NATS_*);
    2, said on stderr, when it names none that answers."""
    import nats

    from orchestration.natsconfig import auth_from_env, describe, replicas_from_env, servers_from_env

    try:
        servers = servers_from_env(os.environ)
        replicas = replicas_from_env(os.environ)
        auth = auth_from_env(os.environ).connect_options()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def quiet(_exc: Exception) -> None:
        return None

    try:
        # The listed servers are tried in turn: a node of the cluster that is down is passed over.
        nc = await asyncio.wait_for(
            nats.connect(servers=list(servers), connect_timeout=3, allow_reconnect=False,
                         max_reconnect_attempts=1, reconnect_time_wait=0.2,
                         name="switchyard-cli", error_cb=quiet, **auth), 5 + 3 * (len(servers) - 1))
    except Exception as exc:
        print(f"error: cannot reach NATS at {describe(servers)} ({type(exc).__name__})", file=sys.stderr)
        return 2
    try:
        return await fn(nc.jetstream(), replicas)
    finally:
        await nc.close()


async def _with_stores(fn: Callable[..., Awaitable[int]], need_limiter: bool = False) -> int:
    from gatekeeping.keystore import KeyStore
    from gatekeeping.limits import Limiter

    async def stores(js: Any, replicas: int) -> int:
        store = await KeyStore.open(js, replicas=replicas)
        try:
            limiter = await Limiter.open(js, replicas=replicas) if need_limiter else None
            return await fn(store, limiter)
        finally:
            await store.close()

    return await with_nats(stores)


def _run(fn: Callable[..., Awaitable[int]], need_limiter: bool = False) -> int:
    from schemas.errors import APIError

    try:
        return asyncio.run(_with_stores(fn, need_limiter))
    except APIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


# ---- tenants --------------------------------------------------------------------------------------
def cmd_tenants(args: argparse.Namespace) -> int:
    from gatekeeping.keystore import tenant_view

    if args.tenants_action == "create":
        try:
            tier = parse_tier(args.tier)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

        async def create(store, _limiter) -> int:
            t = await store.create_tenant(args.id, name=args.name or args.id, tier=tier,
                                          limits=_limits(args), pii=args.pii, operator=args.operator)
            view = tenant_view(t)
            if args.json:
                print(json.dumps(view))
            else:
                print(f"created tenant {t.id} (tier {t.tier}, pii {t.pii}, limits "
                      f"{_fmt_limits(view['limits'])})")
            return 0

        return _run(create)

    async def list_(store, _limiter) -> int:
        views = [tenant_view(t) for t in store.list_tenants()]
        if args.json:
            print(json.dumps(views))
        else:
            _table([[v["id"], v.get("name", ""), str(v["tier"]), v["pii"], "yes" if v.get("operator") else "",
                     _fmt_limits(v["limits"]), _fmt_time(v.get("created"))] for v in views],
                   ["ID", "NAME", "TIER", "PII", "OPERATOR", "LIMITS", "CREATED"])
        return 0

    return _run(list_)


# ---- keys -----------------------------------------------------------------------------------------
def cmd_keys_create(args: argparse.Namespace) -> int:
    from gatekeeping.keystore import key_view

    expires = None
    if args.expires_days is not None:
        if args.expires_days <= 0:
            print("error: --expires-days must be positive", file=sys.stderr)
            return 2
        expires = time.time() + args.expires_days * 86400

    async def create(store, _limiter) -> int:
        key, rec = await store.create_key(args.tenant, name=args.name or "", models=_globs(args.models),
                                          endpoints=_globs(args.endpoints), admin=args.admin,
                                          limits=_limits(args), expires=expires)
        if args.json:
            print(json.dumps({**key_view(rec), "key": key}))
        else:
            print(key)
            print(f"created {rec.key_id} for tenant {rec.tenant}; the key above is shown only once, "
                  f"store it now", file=sys.stderr)
        return 0

    return _run(create)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from gatekeeping.keystore import key_view

    async def list_(store, _limiter) -> int:
        if args.tenant and store.get_tenant(args.tenant) is None:
            print(f"error: no tenant '{args.tenant}'", file=sys.stderr)
            return 1
        views = [key_view(k) for k in store.list_keys(args.tenant)]
        if args.json:
            print(json.dumps(views))
        else:
            now = time.time()
            rows = []
            for v in views:
                state = "revoked" if v["revoked"] else (
                    "expired" if v["expires"] is not None and v["expires"] <= now else "active")
                rows.append([v["key_id"], v["tenant"], v.get("name", ""), state,
                             "yes" if v.get("admin") else "", ",".join(v["models"]),
                             _fmt_limits(v["limits"]), _fmt_time(v["expires"])])
            _table(rows, ["KEY_ID", "TENANT", "NAME", "STATE", "ADMIN", "MODELS", "LIMITS", "EXPIRES"])
        return 0

    return _run(list_)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    async def revoke(store, _limiter) -> int:
        rec = await store.revoke_key(args.key_id)
        print(f"revoked {rec.key_id} (tenant {rec.tenant})")
        return 0

    return _run(revoke)


# ---- usage ----------------------------------------------------------------------------------------
def cmd_usage(args: argparse.Namespace) -> int:
    import msgspec

    async def report(store, limiter) -> int:
        tenant = store.get_tenant(args.tenant)
        if tenant is None:
            print(f"error: no tenant '{args.tenant}'", file=sys.stderr)
            return 1
        keys = [(k.key_id, k.limits) for k in store.list_keys(args.tenant)]
        out = await limiter.usage(args.tenant, tenant.limits, keys)
        out["limits"] = msgspec.to_builtins(tenant.limits)
        print(json.dumps(out, indent=None if args.json else 2))
        return 0

    return _run(report, need_limiter=True)


def register(sub: Any, cmd_generate: Callable[[argparse.Namespace], int]) -> None:
    """Adds `tenants`, `keys` and `usage` to the CLI's subcommands."""
    t = sub.add_parser("tenants", help="tenants (stored in NATS at SWITCHYARD_NATS_URL)")
    tsub = t.add_subparsers(dest="tenants_action", required=True)
    tc = tsub.add_parser("create", help="create a tenant")
    tc.add_argument("id", metavar="NAME", help="tenant id: lower case letters, digits, '-', '_'")
    tc.add_argument("--name", help="display name (default: the id)")
    tc.add_argument("--tier", default="normal",
                    help="priority tier: 1 (highest) .. 5 (lowest), or highest/high/normal/low/lowest")
    tc.add_argument("--pii", choices=["off", "mask", "reject"], default="off", help="PII policy")
    tc.add_argument("--operator", action="store_true", help="its admin keys manage every tenant")
    add_limit_args(tc)
    tc.set_defaults(fn=cmd_tenants)
    tl = tsub.add_parser("list", help="list tenants")
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(fn=cmd_tenants)

    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="action", required=True)
    ksub.add_parser("generate", help="print a new random key (not stored)").set_defaults(fn=cmd_generate)
    kc = ksub.add_parser("create", help="create a stored key for a tenant; prints it once")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--name", help="a label for the key")
    kc.add_argument("--models", help="comma-separated model globs (default: all)")
    kc.add_argument("--endpoints", help="comma-separated path globs, e.g. '/v1/chat/*' (default: all)")
    kc.add_argument("--admin", action="store_true", help="may use the /admin API")
    kc.add_argument("--expires-days", type=float, help="expire after N days")
    add_limit_args(kc)
    kc.set_defaults(fn=cmd_keys_create)
    kl = ksub.add_parser("list", help="list keys (never the keys themselves)")
    kl.add_argument("--tenant")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(fn=cmd_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key; every proxy refuses it within a second")
    kr.add_argument("key_id")
    kr.set_defaults(fn=cmd_keys_revoke)

    u = sub.add_parser("usage", help="a tenant's usage today and this month, per key")
    u.add_argument("--tenant", required=True)
    u.add_argument("--json", action="store_true", help="one line of JSON")
    u.set_defaults(fn=cmd_usage)
