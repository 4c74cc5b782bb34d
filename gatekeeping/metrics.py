"""Gatekeeping's Prometheus counters (the proxy's /metrics serves the default registry)."""

from __future__ import annotations

from prometheus_client import Counter

RATE_LIMITED = Counter("switchyard_rate_limited", "Requests refused by rate limits or quotas.",
                       ["tenant", "limit"])


def record_rate_limited(tenant: str, limit: str) -> None:
    """Counts one refusal; `limit` names what refused it (e.g. `rpm`, `tpm`, `concurrency`, `quota`)."""
    RATE_LIMITED.labels(tenant or "unknown", limit).inc()
