"""API key check. Keys are held only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

import msgspec

from schemas.tenancy import DEFAULT_TIER, NO_LIMITS, Limits


class Principal(msgspec.Struct, frozen=True):
    tenant: str
    key_id: str
    # Scopes and limits (gatekeeping/keystore.py fills them from the key's and the tenant's records).
    models: tuple[str, ...] = ("*",)
    endpoints: tuple[str, ...] = ("*",)
    admin: bool = False
    operator: bool = False          # admin over every tenant (an admin key of an operator tenant)
    tier: int = DEFAULT_TIER        # Temporal priority key: 1 most urgent .. 5 least
    pii: str = "off"                # off | mask | reject
    tenant_limits: Limits = NO_LIMITS
    key_limits: Limits = NO_LIMITS
    retention_s: int = 0            # the tenant's job event retention; 0: the stream's max age

    def allows_model(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, g) for g in self.models)

    def allows_endpoint(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in self.endpoints)

    def sees_job(self, endpoint: str, model: str) -> bool:
        """Whether a job made on `endpoint` for `model` is within this key's scopes (else: 404)."""
        return self.allows_endpoint(endpoint) and self.allows_model(model)

    def priority(self, requested: int | None = None) -> int:
        """The Temporal priority key for a request: the asked one, never more urgent than the tier."""
        if requested is None:
            return self.tier
        return min(5, max(self.tier, int(requested)))


def glob_covers(outer: str, inner: str) -> bool:
    """Whether everything the glob `inner` matches is matched by `outer`. Exact for a literal `inner`,
    for `outer` "*" and for a literal prefix + "*"; otherwise only equal globs count (a safe no)."""
    if outer in (inner, "*"):
        return True
    if not any(c in inner for c in "*?["):
        return fnmatch.fnmatchcase(inner, outer)
    prefix = outer[:-1]
    return outer.endswith("*") and not any(c in prefix for c in "*?[") and inner.startswith(prefix)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


ROLES = ("user", "admin", "operator")
OPERATOR_TENANT = "demo"   # SWITCHYARD_DEMO_KEY's tenant
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def parse_key_entries(entries: Iterable[str], source: str = "SWITCHYARD_API_KEYS") -> list[tuple[str, str, str]]:
    """`<tenant>:<role>:<key>` entries -> (tenant, role, key), split at the first two ':' (a tenant id
    and a role hold none). Raises ValueError naming the entry by position (from 1), never its text."""
    out: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries, 1):
        entry = entry.strip()
        if not entry:
            continue
        tenant, _, rest = entry.partition(":")
        role, sep, key = rest.partition(":")
        problem = None
        if not sep:
            problem = "it is not <tenant>:<role>:<key>"
        elif not _TENANT_ID.match(tenant):
            problem = "the tenant id must be 1-64 of a-z 0-9 _ -, starting with a letter or digit"
        elif role not in ROLES:
            problem = f"the role must be one of {', '.join(ROLES)}"
        elif not key or any(c.isspace() for c in key):
            problem = "the key is empty or holds whitespace"
        elif key in seen:
            problem = f"it repeats the key of entry {seen[key]}"
        if problem:
            raise ValueError(f"{source}: entry {i} is refused: {problem} (the entry is not shown: it holds a key)")
        seen[key] = i
        out.append((tenant, role, key))
    return out


def key_id_of(key: str, id_secret: bytes) -> str:
    """A bootstrap key's non-secret id: a keyed hash, so the id cannot be used to guess the key."""
    return "boot_" + hmac.new(id_secret, key.encode(), hashlib.sha256).hexdigest()[:12]


class KeyRing:
    """Bootstrap keys from configuration, `<tenant>:<role>:<key>` (role user, admin or operator).

    `id_secret` keys the ids (`key_id_of`); the runtime passes the one every replica shares
    (gatekeeping.keystore.key_id_secret). Without it the ids are only stable within this process."""

    def __init__(self, entries: Iterable[str], id_secret: bytes | None = None):
        id_secret = id_secret or secrets.token_bytes(32)
        self._entries = []
        for tenant, role, key in parse_key_entries(entries):
            admin = role != "user"
            self._entries.append((digest(key), Principal(tenant=tenant, key_id=key_id_of(key, id_secret),
                                                         admin=admin, operator=role == "operator")))

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
