"""NATS settings shared by the proxy, the worker and the CLI: which servers to connect to and how many
replicas every JetStream stream and KV bucket Switchyard creates gets.

- `SWITCHYARD_NATS_URL`: one URL or several, comma-separated (`nats://a:4222,nats://b:4222`); the
  client connects to any of them and moves to another when its node goes away.
- `SWITCHYARD_NATS_REPLICAS`: 1 (default) on a single node, 3 on a 3-node cluster (at most 5, never
  more than the cluster has nodes). Applied when a stream or bucket is created; an existing one
  with fewer copies is scaled up at start-up (JetStream does it in place), never down.
- `SWITCHYARD_NATS_USER` + `SWITCHYARD_NATS_PASSWORD`, or `SWITCHYARD_NATS_CREDS` (a .creds file):
  who the process is to the server. With a user, the client's inboxes are `_INBOX.<user>.*` (the
  compose config lets each user read only its own); `SWITCHYARD_NATS_INBOX_PREFIX` overrides that.
- `SWITCHYARD_NATS_CA`: the CA file that signed the servers' certificates (`tls://` URLs);
  `SWITCHYARD_NATS_CERT` + `SWITCHYARD_NATS_KEY`: a client certificate, for servers that ask for one.
- `SWITCHYARD_JOBS_MAX_AGE_S` (default 86400) and `SWITCHYARD_JOBS_MAX_BYTES` (default 4 GiB): the
  job events stream's limits; the oldest events go first. The bytes are reserved in JetStream's
  store, so the KV buckets (keys, limits, secrets) keep the rest however full the stream gets.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import msgspec

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
MAX_REPLICAS = 5  # JetStream's limit
DEFAULT_JOBS_MAX_AGE_S = 24 * 3600
DEFAULT_JOBS_MAX_BYTES = 4 << 30


class NatsAuth(msgspec.Struct, frozen=True):
    """Credentials and TLS settings of a connection; empty fields are not sent."""

    user: str = ""
    password: str = ""
    creds: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    inbox_prefix: str = ""

    def __repr__(self) -> str:  # never the password
        return f"NatsAuth(user={self.user!r}, creds={self.creds!r}, ca={self.ca!r})"

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` (reads the CA and certificate files: call it off the
        event loop, e.g. with asyncio.to_thread)."""
        opts: dict[str, Any] = {}
        if self.user:
            opts.update(user=self.user, password=self.password)
        if self.creds:
            opts["user_credentials"] = self.creds
        if self.inbox_prefix:
            opts["inbox_prefix"] = self.inbox_prefix
        if self.ca or self.cert:
            ctx = ssl.create_default_context(cafile=self.ca or None)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key or None)
            opts["tls"] = ctx
        return opts


class JobsRetention(msgspec.Struct, frozen=True):
    max_age_s: float = DEFAULT_JOBS_MAX_AGE_S
    max_bytes: int = DEFAULT_JOBS_MAX_BYTES


def parse_servers(text: str | None) -> tuple[str, ...]:
    """`nats://a:4222, nats://b:4222` -> ('nats://a:4222', 'nats://b:4222'); empty -> the default."""
    servers = tuple(s.strip() for s in (text or "").split(",") if s.strip())
    return servers or (DEFAULT_NATS_URL,)


def parse_replicas(text: str | None) -> int:
    raw = (text or "").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"SWITCHYARD_NATS_REPLICAS must be a whole number from 1 to {MAX_REPLICAS}, "
                         f"not {raw!r}") from None
    if not 1 <= n <= MAX_REPLICAS:
        raise ValueError(f"SWITCHYARD_NATS_REPLICAS must be from 1 to {MAX_REPLICAS}, not {n}")
    return n


def servers_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    return parse_servers(env.get("SWITCHYARD_NATS_URL"))


def replicas_from_env(env: Mapping[str, str]) -> int:
    return parse_replicas(env.get("SWITCHYARD_NATS_REPLICAS"))


def auth_from_env(env: Mapping[str, str]) -> NatsAuth:
    user = env.get("SWITCHYARD_NATS_USER", "").strip()
    password = env.get("SWITCHYARD_NATS_PASSWORD", "")
    if user and not password:
        raise ValueError("SWITCHYARD_NATS_USER is set but SWITCHYARD_NATS_PASSWORD is empty")
    if env.get("SWITCHYARD_NATS_CERT", "").strip() and not env.get("SWITCHYARD_NATS_KEY", "").strip():
        raise ValueError("SWITCHYARD_NATS_CERT needs SWITCHYARD_NATS_KEY (the certificate's private key)")
    prefix = env.get("SWITCHYARD_NATS_INBOX_PREFIX", "").strip() or (f"_INBOX.{user}" if user else "")
    return NatsAuth(user=user, password=password, creds=env.get("SWITCHYARD_NATS_CREDS", "").strip(),
                    ca=env.get("SWITCHYARD_NATS_CA", "").strip(), cert=env.get("SWITCHYARD_NATS_CERT", "").strip(),
                    key=env.get("SWITCHYARD_NATS_KEY", "").strip(), inbox_prefix=prefix)


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be above 0, not {raw}")
    return value


def retention_from_env(env: Mapping[str, str]) -> JobsRetention:
    return JobsRetention(max_age_s=_positive(env, "SWITCHYARD_JOBS_MAX_AGE_S", DEFAULT_JOBS_MAX_AGE_S),
                         max_bytes=int(_positive(env, "SWITCHYARD_JOBS_MAX_BYTES", DEFAULT_JOBS_MAX_BYTES)))


def describe(servers: tuple[str, ...]) -> str:
    """For messages: the server list as it was configured."""
    return ",".join(servers)
