"""API key check. Keys are held only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac

import msgspec

from schemas.tenancy import DEFAULT_TIER, NO_LIMITS, Limits


class Principal(msgspec.Struct, frozen=True):
    tenant: str
    key_id: str
    # Scopes and limits (proxy/keystore.py fills them from the key's and the tenant's records).
    models: tuple[str, ...] = ("*",)
    endpoints: tuple[str, ...] = ("*",)
    admin: bool = False
    operator: bool = False          # admin over every tenant (an admin key of an operator tenant)
    tier: int = DEFAULT_TIER        # Temporal priority key: 1 most urgent .. 5 least
    pii: str = "off"                # off | mask | reject
    tenant_limits: Limits = NO_LIMITS
    key_limits: Limits = NO_LIMITS

    def allows_model(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, g) for g in self.models)

    def allows_endpoint(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in self.endpoints)

    def priority(self, requested: int | None = None) -> int:
        """The Temporal priority key for a request: the asked one, never more urgent than the tier."""
        if requested is None:
            return self.tier
        return min(5, max(self.tier, int(requested)))


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Bootstrap keys from configuration: `key` (tenant "demo") or `tenant=key`."""

    def __init__(self, keys: tuple[str, ...], tenant: str = "demo"):
        self._entries = []
        for entry in keys:
            owner, sep, key = entry.partition("=")
            if not sep or owner.startswith("sk-"):
                owner, key = tenant, entry
            # Keys of the default tenant are the operator's bootstrap admin keys.
            admin = owner == tenant
            self._entries.append((digest(key), Principal(tenant=owner, key_id=digest(key).hex()[:12],
                                                         admin=admin, operator=admin)))

    def verify(self, presented: str) -> Principal | None:
        d = digest(presented)
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, d):
                found = principal
        return found

    def principals(self) -> list[Principal]:
        return [p for _, p in self._entries]


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
