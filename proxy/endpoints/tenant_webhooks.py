"""Admin API for a tenant's webhook endpoints (OpenAI's dashboard webhooks), operators only:

    POST   /admin/tenants/{tenant_id}/webhooks                 {"url", "event_types", "name"?} -> 201,
                                                               the endpoint with `signing_secret` (shown once)
    GET    /admin/tenants/{tenant_id}/webhooks                 the endpoints (no secrets)
    DELETE /admin/tenants/{tenant_id}/webhooks/{endpoint_id}   removes one

Events reach them through orchestration/tenant_events.py's `notify_tenant` activity.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gatekeeping.auth import Principal
from orchestration.tenant_events import WebhookEndpoints
from proxy.endpoints.admin import _admin, _body, _json, _runtime
from proxy.http.operations import error_responses, json_content, ok, parameter
from schemas.errors import Forbidden, NotFound, ServiceUnavailable
from schemas.resources import AdminList
from schemas.tenant_webhooks import TENANT_EVENT_TYPES, WebhookEndpointCreate

PATH = "/admin/tenants/{tenant_id}/webhooks"


def _operator(request: Request) -> tuple[Principal, WebhookEndpoints, str]:
    p = _admin(request)
    if not p.operator:
        raise Forbidden("Only an operator's admin key can manage webhook endpoints.")
    rt = _runtime(request)
    if getattr(rt, "webhooks", None) is None:
        raise ServiceUnavailable("The webhook endpoint store is not available.")
    tenant = request.path_params["tenant_id"]
    if rt.keystore.get_tenant(tenant) is None:
        raise NotFound(f"No tenant '{tenant[:64]}'.", param="tenant_id", code="tenant_not_found")
    return p, rt.webhooks, tenant


async def create_endpoint(request: Request) -> Response:
    _, store, tenant = _operator(request)
    spec: WebhookEndpointCreate = await _body(request, WebhookEndpointCreate)
    return _json(await store.add(tenant, spec, _runtime(request).settings.webhook_allow), 201)


async def list_endpoints(request: Request) -> Response:
    _, store, tenant = _operator(request)
    return _json(AdminList(data=[msgspec.to_builtins(e) for e in await store.list(tenant)]))


async def delete_endpoint(request: Request) -> Response:
    _, store, tenant = _operator(request)
    return _json(await store.remove(tenant, request.path_params["endpoint_id"]))


ROUTES = [
    Route(PATH, create_endpoint, methods=["POST"]),
    Route(PATH, list_endpoints, methods=["GET"]),
    Route(PATH + "/{endpoint_id}", delete_endpoint, methods=["DELETE"]),
]

_TENANT = parameter("tenant_id", "path", "The tenant's id.")
_ENDPOINT_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string"}, "object": {"const": "webhook_endpoint"}, "created_at": {"type": "integer"},
    "updated_at": {"type": ["integer", "null"]}, "event_types": {"type": "array", "items": {"type": "string"}},
    "name": {"type": "string"}, "url": {"type": "string"}, "signing_secret_hint": {"type": ["string", "null"]}}
_REQUIRED = ["id", "object", "created_at", "event_types", "name", "url", "signing_secret"]
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", PATH): {
        "tags": ["admin"], "summary": "Add a webhook endpoint to a tenant (operator admin keys only)",
        "parameters": [_TENANT],
        "requestBody": {"required": True, "content": json_content({
            "type": "object", "required": ["url", "event_types"], "additionalProperties": False,
            "properties": {"url": {"type": "string", "maxLength": 2048},
                           "event_types": {"type": "array", "minItems": 1,
                                           "items": {"type": "string", "enum": list(TENANT_EVENT_TYPES)}},
                           "name": {"type": "string"}}})},
        "responses": {"201": ok("The endpoint, with `signing_secret` (`whsec_...`, shown only here).",
                                json_content({"type": "object", "required": _REQUIRED, "properties": {
                                    **_ENDPOINT_PROPERTIES, "signing_secret": {"type": "string"}}})),
                      **error_responses(400, 401, 403, 404, 413)},
    },
    ("GET", PATH): {
        "tags": ["admin"], "summary": "A tenant's webhook endpoints (no secrets; operator admin keys only)",
        "parameters": [_TENANT],
        "responses": {"200": ok("Endpoints (`data` holds webhook_endpoint objects).", json_content("AdminList")),
                      **error_responses(401, 403, 404)},
    },
    ("DELETE", PATH + "/{endpoint_id}"): {
        "tags": ["admin"], "summary": "Remove a tenant's webhook endpoint (operator admin keys only)",
        "parameters": [_TENANT, parameter("endpoint_id", "path", "The endpoint's id (`whep_...`).")],
        "responses": {"200": ok("Removed.", json_content({"type": "object", "properties": {
            "id": {"type": "string"}, "object": {"const": "webhook_endpoint.deleted"}, "deleted": {"type": "boolean"}}})),
                      **error_responses(401, 403, 404)},
    },
}
