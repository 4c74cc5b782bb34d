"""Proxy settings, read once from the environment into a frozen struct."""

from __future__ import annotations

import os

import msgspec

from orchestration.natsconfig import DEFAULT_NATS_URL, replicas_from_env, servers_from_env
from orchestration.webhooks import parse_allow_list


class ProxySettings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000
    temporal_address: str = "127.0.0.1:7233"
    namespace: str = "default"
    nats_servers: tuple[str, ...] = (DEFAULT_NATS_URL,)  # SWITCHYARD_NATS_URL, comma-separated
    nats_replicas: int = 1  # SWITCHYARD_NATS_REPLICAS: copies of every stream and KV bucket
    catalog_path: str = "model_catalog.yaml"
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024  # room for a 20 MB upload or a 5 MB prompt (claim check)
    keepalive_s: float = 15.0
    header_wait_s: float = 5.0
    webhook_allow: tuple = ()
    log_level: str = "INFO"
    workflow_queue: str = "cpu"  # SWITCHYARD_CPU_QUEUE: where job workflows run (workers serve it)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ProxySettings":
        e = os.environ if env is None else env
        keys = tuple(k.strip() for k in e.get("SWITCHYARD_API_KEYS", "").split(",") if k.strip())
        demo = e.get("SWITCHYARD_DEMO_KEY", "").strip()
        if demo:
            keys = (demo, *keys)
        return cls(
            host=e.get("SWITCHYARD_HOST", "127.0.0.1"),
            port=int(e.get("SWITCHYARD_PORT", "8000")),
            temporal_address=e.get("SWITCHYARD_TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            namespace=e.get("SWITCHYARD_TEMPORAL_NAMESPACE", "default"),
            nats_servers=servers_from_env(e),
            nats_replicas=replicas_from_env(e),
            catalog_path=e.get("SWITCHYARD_CATALOG", "model_catalog.yaml"),
            api_keys=keys,
            max_body_bytes=int(e.get("SWITCHYARD_MAX_BODY_BYTES", str(32 * 1024 * 1024))),
            keepalive_s=float(e.get("SWITCHYARD_KEEPALIVE_S", "15")),
            header_wait_s=float(e.get("SWITCHYARD_HEADER_WAIT_S", "5")),
            workflow_queue=e.get("SWITCHYARD_CPU_QUEUE", "cpu"),
            webhook_allow=parse_allow_list(e.get("SWITCHYARD_WEBHOOK_ALLOW", "")),
            log_level=e.get("SWITCHYARD_LOG_LEVEL", "INFO"),
        )
