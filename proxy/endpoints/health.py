"""/healthz (liveness only) and /readyz (Temporal, NATS and the object store reachable; the keystore
watch and the settler running)."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from proxy.runtime import Runtime
from schemas.resources import Health, Readiness

_HEALTHY = msgspec.json.encode(Health(status="ok"))


async def healthz(request: Request) -> Response:
    return Response(_HEALTHY, media_type="application/json")


async def readyz(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(rt.temporal.service_client.check_health(), 2.0)
        checks["temporal"] = "ok"
    except Exception as exc:
        checks["temporal"] = f"failed: {type(exc).__name__}"
    try:
        await asyncio.wait_for(rt.js.account_info(), 2.0)
        checks["nats"] = "ok"
    except Exception as exc:
        checks["nats"] = f"failed: {type(exc).__name__}"
    if rt.objects is not None:
        try:
            ref = await asyncio.wait_for(rt.objects.put("readyz-probe", b"ok"), 2.0)
            assert await asyncio.wait_for(rt.objects.get(ref), 2.0) == b"ok"
            checks["object_store"] = "ok"
        except Exception as exc:
            checks["object_store"] = f"failed: {type(exc).__name__}"
    if rt.keystore is not None:
        checks["keystore_watch"] = "ok" if rt.keystore.alive() else "failed: stopped"
    if rt.settler is not None:
        checks["settler"] = "ok" if not rt.settler.done() else "failed: stopped"
    failed = [k for k, v in checks.items() if v != "ok"]
    body = Readiness(status="ready" if not failed else "not_ready", checks=checks, failed=failed)
    return Response(msgspec.json.encode(body), status_code=200 if not failed else 503, media_type="application/json")
