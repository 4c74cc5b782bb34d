"""The core NATS subjects of the direct path (orchestration.dispatch), shared with the proxy."""

from __future__ import annotations

DISPATCH_SUBJECT_PREFIX = "sy.dispatch"
WITHDRAW_SUBJECT_PREFIX = "sy.withdraw"


def dispatch_subject(queue: str) -> str:
    return f"{DISPATCH_SUBJECT_PREFIX}.{queue}"


def dispatch_group(queue: str) -> str:
    return f"dispatch-{queue}"


def withdraw_subject(job_id: str) -> str:
    """The proxy withdraws an offer it stopped waiting for, or whose workflow did not start."""
    return f"{WITHDRAW_SUBJECT_PREFIX}.{job_id}"
