"""NATS settings shared by the proxy, the worker and the CLI: which servers to connect to and how many
replicas every JetStream stream and KV bucket Switchyard creates gets.

- `SWITCHYARD_NATS_URL`: one URL or several, comma-separated (`nats://a:4222,nats://b:4222`); the
  client connects to any of them and moves to another when its node goes away.
- `SWITCHYARD_NATS_REPLICAS`: 1 (default) on a single node, 3 on a 3-node cluster (at most 5, never
  more than the cluster has nodes). Applied when a stream or bucket is created; an existing one
  with fewer copies is scaled up at start-up (JetStream does it in place), never down.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
MAX_REPLICAS = 5  # JetStream's limit


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


def describe(servers: tuple[str, ...]) -> str:
    """For messages: the server list as it was configured."""
    return ",".join(servers)
