"""Per-process connections, opened once at start-up and shared by every request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from temporalio.client import Client

from orchestration.catalog import load_catalog
from orchestration.objectstore import ObjectStore, claim_check_bytes, object_store_from_env
from orchestration.search_attributes import ensure_search_attributes
from orchestration.streams import ensure_secrets_bucket, ensure_stream
from orchestration.worker import connect_temporal
from proxy.config import ProxySettings
from schemas.catalog import Catalog


@dataclass
class Runtime:
    settings: ProxySettings
    catalog: Catalog
    temporal: Client
    nc: NATS
    js: JetStreamContext
    webhook_secrets: Any
    objects: ObjectStore | None = None  # claim-check payloads and results (SWITCHYARD_OBJECT_*)
    claim_check_bytes: int = 1_000_000
    keystore: Any = None  # proxy.keystore.KeyStore: tenants and keys, shared by every replica
    limiter: Any = None  # proxy.limits.Limiter
    settler: Any = None  # the task that settles finished jobs' token reservations

    @classmethod
    async def start(cls, settings: ProxySettings) -> "Runtime":
        catalog = load_catalog(settings.catalog_path)
        temporal = await connect_temporal(settings.temporal_address, settings.namespace)
        await ensure_search_attributes(temporal, settings.namespace)
        nc = await nats.connect(servers=list(settings.nats_servers), name="switchyard-proxy",
                                max_reconnect_attempts=-1)
        js = nc.jetstream()
        replicas = settings.nats_replicas
        await ensure_stream(js, replicas=replicas)
        secrets = await ensure_secrets_bucket(js, replicas=replicas)
        from proxy.auth import KeyRing
        from proxy.keystore import KeyStore
        from proxy.limits import Limiter
        from proxy.settlement import run_settler

        keystore = await KeyStore.open(js, bootstrap=KeyRing(settings.api_keys), replicas=replicas)
        limiter = await Limiter.open(js, replicas=replicas)
        rt = cls(settings, catalog, temporal, nc, js, secrets, objects=object_store_from_env(),
                 claim_check_bytes=claim_check_bytes(), keystore=keystore, limiter=limiter)
        rt.settler = asyncio.ensure_future(run_settler(js, limiter, replicas=replicas))
        return rt

    async def close(self) -> None:
        if self.settler is not None:
            self.settler.cancel()
        if self.keystore is not None:
            await self.keystore.close()
        if self.objects is not None:
            await self.objects.aclose()
        await self.nc.drain()
