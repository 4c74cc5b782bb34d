"""Proxy settings, read once from the environment into a frozen struct."""

from __future__ import annotations

import os

import msgspec

from orchestration.natsconfig import (DEFAULT_NATS_URL, JobsRetention, NatsAuth, auth_from_env, replicas_from_env,
                                      retention_from_env, servers_from_env)
from orchestration.webhooks import parse_allow_list
from proxy.http.cors import DEFAULT_ORIGINS, parse_origins
from gatekeeping.auth import OPERATOR_TENANT, parse_key_entries
from gatekeeping.readlimits import ReadLimits


class ProxySettings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000
    temporal_address: str = "127.0.0.1:7233"
    namespace: str = "default"
    nats_servers: tuple[str, ...] = (DEFAULT_NATS_URL,)  # SWITCHYARD_NATS_URL, comma-separated
    nats_replicas: int = 1  # SWITCHYARD_NATS_REPLICAS: copies of every stream and KV bucket
    nats_auth: NatsAuth = NatsAuth()  # SWITCHYARD_NATS_USER/_PASSWORD/_CREDS/_CA (orchestration/natsconfig.py)
    jobs_retention: JobsRetention = JobsRetention()  # SWITCHYARD_JOBS_MAX_AGE_S, SWITCHYARD_JOBS_MAX_BYTES
    catalog_path: str = "model_catalog.yaml"
    api_keys: tuple[str, ...] = ()  # `<tenant>:<role>:<key>` entries (gatekeeping.auth.parse_key_entries)
    key_id_secret: str = ""  # SWITCHYARD_KEY_ID_SECRET; empty: the one kept in NATS (gatekeeping.keystore)
    max_body_bytes: int = 32 * 1024 * 1024  # room for a 20 MB upload or a 5 MB prompt (claim check)
    max_file_bytes: int = 512 * 1024 * 1024  # SWITCHYARD_MAX_FILE_BYTES: one /v1/files upload
    keepalive_s: float = 15.0
    header_wait_s: float = 5.0
    ws_stall_s: float = 20.0  # SWITCHYARD_WS_STALL_S: a WebSocket client not reading this long is closed
    webhook_allow: tuple = ()
    cors_origins: tuple[str, ...] = DEFAULT_ORIGINS  # SWITCHYARD_CORS_ORIGINS (proxy/http/cors.py)
    log_level: str = "INFO"
    workflow_queue: str = "cpu"  # SWITCHYARD_CPU_QUEUE: where job workflows run (workers serve it)
    reads: ReadLimits = ReadLimits()  # bounds on the jobs API's reads (gatekeeping/readlimits.py)
    orphan_sweep_s: float = 600.0  # SWITCHYARD_ORPHAN_SWEEP_S: how often orphaned inputs are swept; 0: never
    orphan_ttl_s: float = 3600.0  # SWITCHYARD_ORPHAN_TTL_S: the age past which an orphan goes

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ProxySettings":
        e = os.environ if env is None else env
        entries = parse_key_entries(e.get("SWITCHYARD_API_KEYS", "").split(","))  # ValueError: refused
        keys = tuple(f"{t}:{role}:{key}" for t, role, key in entries)
        demo = e.get("SWITCHYARD_DEMO_KEY", "").strip()
        if demo and any(key == demo for _, _, key in entries):
            raise ValueError("SWITCHYARD_API_KEYS repeats SWITCHYARD_DEMO_KEY (not shown)")
        if demo:
            keys = (f"{OPERATOR_TENANT}:operator:{demo}", *keys)
        return cls(
            host=e.get("SWITCHYARD_HOST", "127.0.0.1"),
            port=int(e.get("SWITCHYARD_PORT", "8000")),
            temporal_address=e.get("SWITCHYARD_TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            namespace=e.get("SWITCHYARD_TEMPORAL_NAMESPACE", "default"),
            nats_servers=servers_from_env(e),
            nats_replicas=replicas_from_env(e),
            nats_auth=auth_from_env(e),
            jobs_retention=retention_from_env(e),
            catalog_path=e.get("SWITCHYARD_CATALOG", "model_catalog.yaml"),
            api_keys=keys,
            key_id_secret=e.get("SWITCHYARD_KEY_ID_SECRET", ""),
            max_body_bytes=int(e.get("SWITCHYARD_MAX_BODY_BYTES", str(32 * 1024 * 1024))),
            max_file_bytes=int(e.get("SWITCHYARD_MAX_FILE_BYTES", str(512 * 1024 * 1024))),
            keepalive_s=float(e.get("SWITCHYARD_KEEPALIVE_S", "15")),
            header_wait_s=float(e.get("SWITCHYARD_HEADER_WAIT_S", "5")),
            ws_stall_s=float(e.get("SWITCHYARD_WS_STALL_S", "20")),
            workflow_queue=e.get("SWITCHYARD_CPU_QUEUE", "cpu"),
            webhook_allow=parse_allow_list(e.get("SWITCHYARD_WEBHOOK_ALLOW", "")),
            cors_origins=parse_origins(e.get("SWITCHYARD_CORS_ORIGINS")),
            log_level=e.get("SWITCHYARD_LOG_LEVEL", "INFO"),
            reads=ReadLimits.from_env(e),
            orphan_sweep_s=float(e.get("SWITCHYARD_ORPHAN_SWEEP_S", "600")),
            orphan_ttl_s=float(e.get("SWITCHYARD_ORPHAN_TTL_S", "3600")),
        )
