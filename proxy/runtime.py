"""Per-process connections, opened once at start-up and shared by every request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from temporalio.client import Client

from orchestration.catalog import load_catalog
from orchestration.model_registry import CatalogView, ModelRegistry
from orchestration.files import FileStore
from orchestration.tenant_events import WebhookEndpoints
from orchestration.objectstore import ObjectStore, claim_check_bytes, object_store_from_env
from orchestration.search_attributes import ensure_search_attributes
from orchestration.streams import ensure_secrets_bucket, ensure_stream
from orchestration.client import connect_temporal
from proxy.config import ProxySettings
from schemas.catalog import Catalog

if TYPE_CHECKING:
    from proxy.batches.service import BatchService
    from gatekeeping.keystore import KeyStore
    from gatekeeping.limits import Limiter
    from gatekeeping.readlimits import ReadGate


@dataclass
class Runtime:
    settings: ProxySettings
    catalog: Catalog | CatalogView  # a CatalogView when started: the file plus NATS KV, kept current by a watcher
    temporal: Client
    nc: NATS
    js: JetStreamContext
    webhook_secrets: KeyValue
    objects: ObjectStore | None = None  # claim-check payloads and results (SWITCHYARD_OBJECT_*)
    claim_check_bytes: int = 1_000_000
    keystore: KeyStore | None = None  # tenants and keys, shared by every replica
    limiter: Limiter | None = None
    settler: asyncio.Task[None] | None = None  # settles finished jobs' token reservations
    sweeper: asyncio.Task[None] | None = None  # sweeps orphaned inputs from the object store (proxy.jobs.orphans)
    reads: ReadGate | None = None  # this replica's read buckets and /events slots
    registry: ModelRegistry | None = None  # writes to the catalog bucket (aliases, dynamic models)
    files: FileStore | None = None  # the Files API's store (orchestration/files.py)
    webhooks: WebhookEndpoints | None = None  # tenants' webhook endpoints (orchestration/tenant_events.py)
    batches: BatchService | None = None  # batch status store + the batch activities' worker (proxy/batches)

    @classmethod
    async def start(cls, settings: ProxySettings) -> "Runtime":
        catalog = load_catalog(settings.catalog_path)
        temporal = await connect_temporal(settings.temporal_address, settings.namespace)
        await ensure_search_attributes(temporal, settings.namespace)
        nc = await nats.connect(servers=list(settings.nats_servers), name="switchyard-proxy",
                                max_reconnect_attempts=-1,
                                **await asyncio.to_thread(settings.nats_auth.connect_options))
        js = nc.jetstream()
        replicas = settings.nats_replicas
        retention = settings.jobs_retention
        await ensure_stream(js, replicas=replicas, max_age_s=retention.max_age_s, max_bytes=retention.max_bytes)
        secrets = await ensure_secrets_bucket(js, replicas=replicas)
        view = await CatalogView.open(js, catalog, replicas=replicas)
        from gatekeeping.auth import KeyRing
        from gatekeeping.keystore import KeyStore, key_id_secret
        from gatekeeping.limits import Limiter
        from gatekeeping.settlement import run_settler

        id_secret = await key_id_secret(js, settings.key_id_secret, replicas=replicas)
        keystore = await KeyStore.open(js, bootstrap=KeyRing(settings.api_keys, id_secret), replicas=replicas)
        limiter = await Limiter.open(js, replicas=replicas)
        objects = object_store_from_env()
        rt = cls(settings, view, temporal, nc, js, secrets, objects=objects,
                 claim_check_bytes=claim_check_bytes(), keystore=keystore, limiter=limiter)
        rt.settler = asyncio.ensure_future(run_settler(js, limiter, replicas=replicas))
        from proxy.jobs.orphans import run_orphan_sweeper, temporal_job_state
        from gatekeeping.readlimits import ReadGate

        rt.reads = ReadGate(settings.reads)
        rt.registry = await ModelRegistry.open(js, catalog, replicas=replicas)
        rt.files = await FileStore.open(js, objects, replicas=replicas)
        rt.webhooks = await WebhookEndpoints.open(js, replicas=replicas)
        from proxy.batches.service import BatchService

        rt.batches = await BatchService.start(rt)
        rt.sweeper = asyncio.ensure_future(run_orphan_sweeper(
            js, objects, temporal_job_state(temporal), interval_s=settings.orphan_sweep_s,
            ttl_s=settings.orphan_ttl_s, replicas=replicas))
        return rt

    async def close(self) -> None:
        if self.batches is not None:
            await self.batches.stop()  # its running activities finish or are retried elsewhere
        for task in (self.settler, self.sweeper):
            if task is not None:
                task.cancel()
        if isinstance(self.catalog, CatalogView):
            await self.catalog.close()
        if self.keystore is not None:
            await self.keystore.close()
        if self.objects is not None:
            await self.objects.aclose()
        await self.nc.drain()
