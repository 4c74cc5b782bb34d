"""Operator commands on tenants' webhook endpoints, talking straight to NATS (SWITCHYARD_NATS_URL).

    switchyard webhooks add acme https://hooks.acme.example/openai --events batch.completed,batch.failed
    switchyard webhooks list acme
    switchyard webhooks rm acme whep_0123456789abcdef01234567

`add` prints the endpoint and its signing secret (`whsec_...`), shown this once. The URL must pass
the same SSRF check as the admin API's (SWITCHYARD_WEBHOOK_ALLOW admits private networks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec


async def _with_endpoints(fn: Callable[[Any, Any], Awaitable[int]]) -> int:
    from gatekeeping.keystore import KeyStore
    from orchestration.tenant_events import WebhookEndpoints
    from switchyard.admin_cli import with_nats

    async def stores(js: Any, replicas: int) -> int:
        keys = await KeyStore.open(js, replicas=replicas)
        try:
            return await fn(keys, await WebhookEndpoints.open(js, replicas=replicas))
        finally:
            await keys.close()

    return await with_nats(stores)


def _run(fn: Callable[[Any, Any], Awaitable[int]], tenant: str) -> int:
    from schemas.errors import APIError

    async def checked(keys, endpoints) -> int:
        if keys.get_tenant(tenant) is None:
            print(f"error: no tenant '{tenant}'", file=sys.stderr)
            return 1
        return await fn(keys, endpoints)

    try:
        return asyncio.run(_with_endpoints(checked))
    except APIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def cmd_webhooks(args: argparse.Namespace) -> int:
    from orchestration.webhooks import parse_allow_list
    from schemas.tenant_webhooks import WebhookEndpointCreate

    if args.action == "add":
        spec = WebhookEndpointCreate(url=args.url, name=args.name or "",
                                     event_types=[t.strip() for t in args.events.split(",") if t.strip()])
        allow = parse_allow_list(os.environ.get("SWITCHYARD_WEBHOOK_ALLOW", ""))

        async def add(_keys, endpoints) -> int:
            created = await endpoints.add(args.tenant, spec, allow)
            if args.json:
                print(msgspec.json.encode(created).decode())
            else:
                print(f"added {created.id} for {args.tenant}: {created.url} ({', '.join(created.event_types)})")
                print(f"signing secret (shown once): {created.signing_secret}")
            return 0

        return _run(add, args.tenant)
    if args.action == "list":
        async def show(_keys, endpoints) -> int:
            found = await endpoints.list(args.tenant)
            if args.json:
                print(json.dumps(msgspec.to_builtins(found)))
            for e in [] if args.json else found:
                print(f"{e.id}  {e.url}  {','.join(e.event_types)}  {e.signing_secret_hint}  {e.name}".rstrip())
            return 0

        return _run(show, args.tenant)

    async def remove(_keys, endpoints) -> int:
        await endpoints.remove(args.tenant, args.endpoint_id)
        print(f"removed {args.endpoint_id}")
        return 0

    return _run(remove, args.tenant)


def register(sub: Any) -> None:
    from schemas.tenant_webhooks import TENANT_EVENT_TYPES

    w = sub.add_parser("webhooks", help="tenants' webhook endpoints (OpenAI events: batch, response, fine-tuning)")
    actions = w.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an endpoint; prints its signing secret once")
    add.add_argument("tenant")
    add.add_argument("url")
    add.add_argument("--events", required=True, help=f"comma-separated, of: {', '.join(TENANT_EVENT_TYPES)}")
    add.add_argument("--name", help="a name for people")
    ls = actions.add_parser("list", help="a tenant's endpoints (no secrets)")
    ls.add_argument("tenant")
    rm = actions.add_parser("rm", help="remove an endpoint")
    rm.add_argument("tenant")
    rm.add_argument("endpoint_id")
    for p in (add, ls):
        p.add_argument("--json", action="store_true", help="machine-readable output")
    w.set_defaults(fn=cmd_webhooks)
