"""Tenants, API-key records and limits, as stored in the NATS key-value buckets. No I/O lives here.

A tenant's `tier` is a Temporal task priority key: 1 is the most urgent, 5 the least, 3 the default
(Temporal's own default range). A request may ask for a priority numerically >= its tier, never below.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec
from msgspec import Meta
from typing_extensions import Annotated

TenantId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
KeyId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Tier = Annotated[int, Meta(ge=1, le=5)]
Count = Annotated[int, Meta(ge=0)]
PIIPolicy = Literal["off", "mask", "reject"]
# How long a tenant's job events stay in NATS (per-message TTL), at most the stream's max age.
RetentionSeconds = Annotated[int, Meta(ge=60, le=366 * 86400)]

TIER_NAMES: dict[str, int] = {"highest": 1, "high": 2, "normal": 3, "low": 4, "lowest": 5}
DEFAULT_TIER = 3


def parse_tier(value: Union[str, int, None], default: int = DEFAULT_TIER) -> int:
    """`high`, `2`, 2 -> 2. Raises ValueError for anything outside 1..5 or an unknown name."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        name = value.strip().lower()
        if name in TIER_NAMES:
            return TIER_NAMES[name]
        if not name.isdigit():
            raise ValueError(f"unknown tier {value!r}; use 1-5 or one of {', '.join(TIER_NAMES)}")
        value = int(name)
    if isinstance(value, bool) or not 1 <= int(value) <= 5:
        raise ValueError(f"tier must be between 1 (highest) and 5 (lowest), got {value!r}")
    return int(value)


class Limits(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Every field is optional; None means unlimited. Tokens are prompt + completion."""

    rpm: Union[Count, None] = None
    tpm: Union[Count, None] = None
    concurrency: Union[Count, None] = None
    daily_tokens: Union[Count, None] = None
    monthly_tokens: Union[Count, None] = None

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency, self.daily_tokens,
                                           self.monthly_tokens))


NO_LIMITS = Limits()


class Tenant(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    id: TenantId
    name: str = ""
    tier: Tier = DEFAULT_TIER
    limits: Limits = NO_LIMITS
    pii: PIIPolicy = "off"
    # An operator tenant's admin keys manage every tenant; other admin keys only their own.
    operator: bool = False
    created: float = 0.0
    cors_origins: tuple[str, ...] = ()   # browser origins allowed besides the global list (proxy/http/cors.py)
    retention_s: Union[RetentionSeconds, None] = None  # None: SWITCHYARD_JOBS_MAX_AGE_S


class KeyRecord(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """Stored under the SHA-256 hex digest of the key; the key itself is never stored."""

    key_id: KeyId
    tenant: TenantId
    name: str = ""
    models: tuple[str, ...] = ("*",)      # fnmatch globs over model ids
    endpoints: tuple[str, ...] = ("*",)   # fnmatch globs over request paths, e.g. "/v1/chat/*"
    admin: bool = False
    limits: Limits = NO_LIMITS
    created: float = 0.0
    expires: Union[float, None] = None    # unix seconds
    revoked: bool = False
    revoked_at: Union[float, None] = None

    def usable(self, now: float) -> bool:
        return not self.revoked and (self.expires is None or now < self.expires)


# The admin API's request bodies.
class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str = ""
    tier: Union[int, str] = 3
    pii: PIIPolicy = "off"
    limits: Limits = Limits()
    operator: bool = False
    cors_origins: tuple[str, ...] = ()
    retention_s: Union[RetentionSeconds, None] = None


class TenantUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields given change. A tenant's own admin may change `cors_origins` only."""
    name: Union[str, None] = None
    tier: Union[int, str, None] = None
    pii: Union[PIIPolicy, None] = None
    limits: Union[Limits, None] = None
    cors_origins: Union[tuple[str, ...], None] = None
    retention_s: Union[RetentionSeconds, None] = None


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    tenant: Union[str, None] = None
    name: str = ""
    models: tuple[str, ...] = ("*",)
    endpoints: tuple[str, ...] = ("*",)
    admin: bool = False
    limits: Limits = Limits()
    expires_at: Union[float, None] = None          # unix seconds
    expires_in_days: Union[float, None] = None
