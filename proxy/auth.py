"""API key check. Keys are held only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

import msgspec


class Principal(msgspec.Struct, frozen=True):
    tenant: str
    key_id: str


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: tuple[str, ...], tenant: str = "demo"):
        self._entries = [(digest(k), Principal(tenant=tenant, key_id=digest(k).hex()[:12])) for k in keys]

    def verify(self, presented: str) -> Principal | None:
        d = digest(presented)
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, d):
                found = principal
        return found


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
