"""Per-tenant webhook endpoints and the `notify_tenant` activity that sends them OpenAI's events.

Endpoints live in KV bucket `sy_webhooks`, key `<tenant>.<endpoint id>`, value a
`StoredWebhookEndpoint` (its `whsec_` secret included: shown once at creation, never logged,
never listed). A workflow emits an event with

    await workflow.execute_activity_method(TenantEvents.notify_tenant, TenantEventInput(
        tenant=..., type="batch.completed", data_id=batch_id, created_at=...), ...)

which starts one WebhookWorkflow (orchestration/workflows.py: signed Standard Webhooks, retried for
up to a day) per endpoint of the tenant subscribed to the type. The delivery's secret is copied into
the webhook secrets bucket under the delivery's id (deliver_webhook reads it there), so removing an
endpoint or changing it later does not disturb deliveries already under way. Ids are derived from
the event, so a retried activity starts no second delivery.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import secrets
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from orchestration.streams import ensure_kv
from orchestration.webhooks import WebhookTargetError, check_target
from schemas.errors import InvalidRequest, NotFound
from schemas.jobs import WebhookDelivery
from schemas.tenant_webhooks import (MAX_ENDPOINTS_PER_TENANT, TENANT_EVENT_TYPES, WEBHOOKS_BUCKET,
                                     DeletedWebhookEndpoint, StoredWebhookEndpoint, TenantEventInput,
                                     WebhookEndpoint, WebhookEndpointCreate, WebhookEndpointWithSecret)

_decoder = msgspec.json.Decoder(list[StoredWebhookEndpoint])


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _hint(secret: str) -> str:
    return f"whsec_...{secret[-4:]}"


def event_id(inp: TenantEventInput) -> str:
    """The same event, asked twice (a retried activity), has the same id."""
    text = f"{inp.tenant}\n{inp.type}\n{inp.data_id}\n{inp.created_at}"
    return "evt_" + hashlib.sha256(text.encode()).hexdigest()[:32]


class WebhookEndpoints:
    """The tenants' endpoints in KV; the admin API, the CLI and the activity share it."""

    def __init__(self, kv: KeyValue):
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> "WebhookEndpoints":
        return cls(await ensure_kv(js, WEBHOOKS_BUCKET, replicas=replicas, history=1, storage=StorageType.FILE))

    async def add(self, tenant: str, spec: WebhookEndpointCreate, allow: tuple = ()) -> WebhookEndpointWithSecret:
        """A new endpoint with a new secret (returned here only). The URL must pass the SSRF check
        (public addresses only unless `allow` admits it), as every delivery's will again."""
        types = list(dict.fromkeys(spec.event_types))
        unknown = [t for t in types if t not in TENANT_EVENT_TYPES]
        if not types or unknown:
            raise InvalidRequest(f"event_types must name at least one of: {', '.join(TENANT_EVENT_TYPES)}"
                                 + (f" (unknown: {', '.join(u[:64] for u in unknown[:5])})." if unknown else "."),
                                 param="event_types", code="invalid_value")
        if len(spec.url) > 2048:
            raise InvalidRequest("The webhook url is too long.", param="url", code="invalid_value")
        try:
            await check_target(spec.url, allow)
        except WebhookTargetError as exc:
            raise InvalidRequest(f"Webhook target refused: {exc}.", param="url",
                                 code="webhook_target_refused") from None
        now, secret = int(time.time()), new_secret()
        endpoint = WebhookEndpoint(id="whep_" + secrets.token_hex(12), created_at=now, updated_at=now,
                                   event_types=types, name=spec.name[:256], url=spec.url,
                                   signing_secret_hint=_hint(secret))
        stored = StoredWebhookEndpoint(tenant=tenant, endpoint=endpoint, secret=secret)

        def added(current: builtins.list[StoredWebhookEndpoint]) -> builtins.list[StoredWebhookEndpoint]:
            if len(current) >= MAX_ENDPOINTS_PER_TENANT:
                raise InvalidRequest(f"A tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints.",
                                     code="too_many_webhook_endpoints")
            return [*current, stored]

        await self._change(tenant, added)
        return WebhookEndpointWithSecret(**msgspec.structs.asdict(endpoint), signing_secret=secret)

    async def list(self, tenant: str) -> list[WebhookEndpoint]:
        return [s.endpoint for s in (await self._load(tenant))[0]]

    async def remove(self, tenant: str, endpoint_id: str) -> DeletedWebhookEndpoint:
        def removed(current: builtins.list[StoredWebhookEndpoint]) -> builtins.list[StoredWebhookEndpoint]:
            left = [s for s in current if s.endpoint.id != endpoint_id]
            if len(left) == len(current):
                raise NotFound(f"No webhook endpoint '{endpoint_id[:64]}' for tenant '{tenant}'.",
                               param="endpoint_id", code="webhook_endpoint_not_found")
            return left

        await self._change(tenant, removed)
        return DeletedWebhookEndpoint(id=endpoint_id, deleted=True)

    async def subscribed(self, tenant: str, event_type: str) -> builtins.list[StoredWebhookEndpoint]:
        return [s for s in (await self._load(tenant))[0] if event_type in s.endpoint.event_types]

    # A tenant's endpoints are one value (at most MAX_ENDPOINTS_PER_TENANT of them): a lookup is one
    # direct get, and a change one compare-and-set on its revision.
    async def _load(self, tenant: str) -> tuple[builtins.list[StoredWebhookEndpoint], int | None]:
        try:
            entry = await self.kv.get(_tenant_key(tenant))
        except KeyNotFoundError:
            return [], None
        return (_decoder.decode(entry.value) if entry.value else []), entry.revision

    async def _change(self, tenant: str, change) -> None:
        while True:
            current, revision = await self._load(tenant)
            data = msgspec.json.encode(change(current))
            try:
                if revision is None:
                    await self.kv.create(_tenant_key(tenant), data)
                else:
                    await self.kv.update(_tenant_key(tenant), data, last=revision)
                return
            except KeyWrongLastSequenceError:
                continue  # changed meanwhile: apply the change to what is there now


def _tenant_key(tenant: str) -> str:
    return f"tenant.{tenant}"


class TenantEvents:
    def __init__(self, endpoints: WebhookEndpoints, temporal: Client, secrets_kv: KeyValue, webhook_queue: str):
        self._endpoints = endpoints
        self._temporal = temporal
        self._secrets = secrets_kv
        self._queue = webhook_queue

    @activity.defn(name="notify_tenant")
    async def notify_tenant(self, inp: TenantEventInput) -> int:
        """Starts a delivery to each of the tenant's endpoints subscribed to `inp.type`; returns
        how many (started now or by an earlier attempt)."""
        from orchestration.workflows import WEBHOOK_WORKFLOW

        if inp.type not in TENANT_EVENT_TYPES:
            raise ApplicationError(f"unknown event type {inp.type!r}", type="UnknownEventType", non_retryable=True)
        evt = event_id(inp)
        targets = await self._endpoints.subscribed(inp.tenant, inp.type)
        for stored in targets:
            # deliver_webhook names the event `evt_<job_id>` and reads the secret at `<job_id>`
            delivery_id = f"{evt[4:]}_{stored.endpoint.id[5:]}"
            await self._secrets.put(delivery_id, stored.secret.encode())
            delivery = WebhookDelivery(job_id=delivery_id, url=stored.endpoint.url, event_type=inp.type,
                                       created_at=inp.created_at, data={"id": inp.data_id})
            try:
                await self._temporal.start_workflow(
                    WEBHOOK_WORKFLOW, delivery, id=f"{delivery_id}-webhook", task_queue=self._queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
            except WorkflowAlreadyStartedError:
                pass  # an earlier attempt of this activity started it (it may have ended since)
        return len(targets)
