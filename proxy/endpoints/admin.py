"""Admin API: tenants, API keys, usage. Uses `request.app.state.runtime.keystore` and `.limiter`.

Who may do what:
- no key / a bad key: 401; a key without the `admin` scope (or whose endpoint globs exclude the path): 403.
- an admin key of an *operator* tenant (the bootstrap "demo" tenant, or any tenant created with
  `operator: true`) manages every tenant;
- an admin key of another tenant manages its own tenant only: its keys and its usage. Another tenant's
  resources answer 404, exactly as if they did not exist; creating tenants is 403.
- a new key never holds more than the key creating it: each of its model and endpoint globs is
  covered by one of the creator's, and each limit the creator's key has is set, no higher (else 403).

Keys are returned once, by `POST /admin/keys`; nothing here logs a key or a body.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gatekeeping.auth import Principal, bearer_token, glob_covers
from proxy.http.body import read_json_body
from proxy.jobs.prepare import convert_request
from proxy.http.cors import parse_origins
from schemas.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from gatekeeping.keystore import key_view, tenant_view
from schemas.resources import AdminList
from schemas.tenancy import KeyCreate, Limits, TenantCreate, TenantUpdate, parse_tier

_encoder = msgspec.json.Encoder()
_BODY_LIMIT = 64 * 1024


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def _principal(request: Request) -> Principal:
    """The caller: set by the auth middleware, or authenticated here against the key store."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        token = bearer_token(request.headers.get("authorization", ""))
        if token is None:
            raise Unauthorized("You didn't provide an API key. Pass it as 'Authorization: Bearer <key>'.",
                               headers={"www-authenticate": 'Bearer realm="switchyard"'})
        principal = _runtime(request).keystore.verify(token)
        if principal is None:
            raise Unauthorized("Incorrect API key provided.",
                               headers={"www-authenticate": 'Bearer realm="switchyard"'})
        request.state.principal = principal
        request.state.tenant = principal.tenant
    return principal


def _admin(request: Request) -> Principal:
    p = _principal(request)
    if not p.admin or not p.allows_endpoint(request.url.path):
        raise Forbidden("This endpoint requires an API key with the admin scope.")
    return p


def _tenant_for(p: Principal, request: Request, tenant: str | None) -> str:
    """The tenant a request is about: the caller's own by default; another one only for an operator
    (otherwise 404, as if it did not exist)."""
    store = _runtime(request).keystore
    tenant = tenant or p.tenant
    if (not p.operator and tenant != p.tenant) or store.get_tenant(tenant) is None:
        raise NotFound(f"No tenant '{tenant}'.", param="tenant", code="tenant_not_found")
    return tenant


async def _body(request: Request, struct_type: type) -> Any:
    return convert_request(await read_json_body(request, _BODY_LIMIT), struct_type)


# ---- tenants --------------------------------------------------------------------------------------
async def create_tenant(request: Request) -> Response:
    p = _admin(request)
    if not p.operator:
        raise Forbidden("Only an operator's admin key can create tenants.")
    body: TenantCreate = await _body(request, TenantCreate)
    try:
        tier = parse_tier(body.tier)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="tier") from None
    tenant = await _runtime(request).keystore.create_tenant(
        body.id, name=body.name, tier=tier, limits=body.limits, pii=body.pii, operator=body.operator,
        cors_origins=_origins(body.cors_origins), retention_s=body.retention_s)
    return _json(tenant_view(tenant), 201)


def _origins(patterns: tuple[str, ...]) -> tuple[str, ...]:
    if len(patterns) > 64:
        raise InvalidRequest("cors_origins takes at most 64 origins.", param="cors_origins")
    try:
        return parse_origins(patterns) if patterns else ()
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="cors_origins") from None


async def update_tenant(request: Request) -> Response:
    p = _admin(request)
    tenant_id = _tenant_for(p, request, request.path_params["tenant_id"])
    body: TenantUpdate = await _body(request, TenantUpdate)
    changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    if not p.operator and set(changes) - {"cors_origins"}:
        raise Forbidden("Only an operator's admin key can change a tenant's name, tier, pii, limits or retention_s.")
    if "tier" in changes:
        try:
            changes["tier"] = parse_tier(changes["tier"])
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="tier") from None
    if "cors_origins" in changes:
        changes["cors_origins"] = _origins(changes["cors_origins"])
    return _json(tenant_view(await _runtime(request).keystore.update_tenant(tenant_id, **changes)))


async def list_tenants(request: Request) -> Response:
    p = _admin(request)
    store = _runtime(request).keystore
    tenants = store.list_tenants() if p.operator else [t for t in store.list_tenants() if t.id == p.tenant]
    return _json(AdminList(data=[tenant_view(t) for t in tenants]))


# ---- keys -----------------------------------------------------------------------------------------
async def create_key(request: Request) -> Response:
    p = _admin(request)
    body: KeyCreate = await _body(request, KeyCreate)
    tenant = _tenant_for(p, request, body.tenant)
    expires = body.expires_at
    if body.expires_in_days is not None:
        if body.expires_in_days <= 0:
            raise InvalidRequest("expires_in_days must be positive.", param="expires_in_days")
        expires = time.time() + body.expires_in_days * 86400
    _check_grant(p, body)
    key, rec = await _runtime(request).keystore.create_key(
        tenant, name=body.name, models=body.models, endpoints=body.endpoints, admin=body.admin,
        limits=body.limits, expires=expires)
    out = key_view(rec)
    out["key"] = key   # shown once; only its SHA-256 digest is stored
    return _json(out, 201)


def _check_grant(p: Principal, body: KeyCreate) -> None:
    """A key never grants more than its creator's key holds: scopes and limits (else 403). The role
    cannot rise either: only admin keys get here, and `operator` is the tenant's, not the key's."""
    for param, wanted, held in (("models", body.models, p.models), ("endpoints", body.endpoints, p.endpoints)):
        for glob in wanted or ("*",):
            if not any(glob_covers(h, glob) for h in held):
                raise Forbidden(f"'{glob}' in {param} is wider than your own key's {param}.", param=param)
    for field in msgspec.structs.fields(Limits):
        held, wanted = getattr(p.key_limits, field.name), getattr(body.limits, field.name)
        if held is not None and (wanted is None or wanted > held):
            raise Forbidden(f"limits.{field.name} must be set, at most {held} (your own key's limit).",
                            param=f"limits.{field.name}")


async def list_keys(request: Request) -> Response:
    p = _admin(request)
    store = _runtime(request).keystore
    wanted = request.query_params.get("tenant")
    if wanted is None and p.operator:
        keys = store.list_keys()
    else:
        keys = store.list_keys(_tenant_for(p, request, wanted))
    return _json(AdminList(data=[key_view(k) for k in keys]))


async def revoke_key(request: Request) -> Response:
    p = _admin(request)
    store = _runtime(request).keystore
    key_id = request.path_params["key_id"]
    rec = store.get_key(key_id)
    if rec is None or (not p.operator and rec.tenant != p.tenant):
        raise NotFound(f"No API key '{key_id}'.", param="key_id", code="key_not_found")
    return _json(key_view(await store.revoke_key(key_id)))


# ---- usage ----------------------------------------------------------------------------------------
async def usage(request: Request) -> Response:
    p = _admin(request)
    rt = _runtime(request)
    tenant_id = _tenant_for(p, request, request.query_params.get("tenant"))
    tenant = rt.keystore.get_tenant(tenant_id)
    keys = [(k.key_id, k.limits) for k in rt.keystore.list_keys(tenant_id)]
    report = await rt.limiter.usage(tenant_id, tenant.limits, keys)
    report["limits"] = msgspec.to_builtins(tenant.limits)
    return _json(report)


ROUTES = [
    Route("/admin/tenants", create_tenant, methods=["POST"]),
    Route("/admin/tenants", list_tenants, methods=["GET"]),
    Route("/admin/tenants/{tenant_id}", update_tenant, methods=["PATCH"]),
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/usage", usage, methods=["GET"]),
]
