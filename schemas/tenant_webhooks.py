"""Per-tenant webhook endpoints (OpenAI's dashboard webhooks) and the events sent to them.

The endpoint objects have the shapes of OpenAI's `webhook_endpoint` objects; an event is OpenAI's
`{"id": "evt_...", "object": "event", "created_at": ..., "type": ..., "data": {"id": ...}}`.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

TENANT_EVENT_TYPES = (
    "response.completed", "response.failed", "response.cancelled", "response.incomplete",
    "batch.completed", "batch.failed", "batch.cancelled", "batch.expired",
    "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
)
WEBHOOKS_BUCKET = "sy_webhooks"
MAX_ENDPOINTS_PER_TENANT = 20


class WebhookEndpointCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    event_types: list[str]
    name: str = ""


class WebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str  # "whep_" + 24 hex digits
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: Union[int, None] = None
    event_types: list[str]
    name: str
    url: str
    signing_secret_hint: Union[str, None] = None


class WebhookEndpointWithSecret(WebhookEndpoint, kw_only=True):
    signing_secret: str  # shown once, when the endpoint is created


class DeletedWebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class StoredWebhookEndpoint(msgspec.Struct, kw_only=True):
    """What KV bucket `sy_webhooks` holds per endpoint (key `<tenant>.<endpoint id>`)."""

    tenant: str
    endpoint: WebhookEndpoint
    secret: str  # whsec_...; never logged, never returned after creation


class TenantEventInput(msgspec.Struct, frozen=True):
    """One event of a tenant's: `type` one of TENANT_EVENT_TYPES, `data_id` the object it is about
    (resp_..., batch_..., ftjob_...), `created_at` when it happened (unix seconds)."""

    tenant: str
    type: str
    data_id: str
    created_at: int
