"""Per-process connections, opened once at start-up and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from temporalio.client import Client

from orchestration.catalog import load_catalog
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

    @classmethod
    async def start(cls, settings: ProxySettings) -> "Runtime":
        catalog = load_catalog(settings.catalog_path)
        temporal = await connect_temporal(settings.temporal_address, settings.namespace)
        nc = await nats.connect(settings.nats_url, name="switchyard-proxy", max_reconnect_attempts=-1)
        js = nc.jetstream()
        await ensure_stream(js)
        secrets = await ensure_secrets_bucket(js)
        return cls(settings, catalog, temporal, nc, js, secrets)

    async def close(self) -> None:
        await self.nc.drain()
