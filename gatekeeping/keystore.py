"""Tenants and API keys in NATS JetStream key-value buckets, shared by every proxy replica.

- `sy_tenants`: KV key = tenant id, value = `schemas.tenancy.Tenant` (JSON).
- `sy_keys`: KV key = SHA-256 hex digest of the API key, value = `schemas.tenancy.KeyRecord` (JSON).
  The key itself (`sk-sy-` + 32 random bytes, base64url) is returned once by `create_key` and never
  stored; `key_id` (`key_` + 12 hex) is the non-secret handle used to list and revoke it.

Each `KeyStore` keeps both buckets in memory, kept fresh by a KV watcher (`watchall`, an ordered push
consumer), so `verify()` on the request path is a dict lookup with no I/O. A revocation written by any
replica or by the CLI reaches every watcher within milliseconds (the test asserts < 1 s). Entries carry
their stream revision; an update older than what the cache holds is ignored, so a local write followed
by a lagging watcher delivery never resurrects a revoked key.

Why NATS KV rather than a database: NATS is already a required part of the embedded stack, the KV is
durable (file storage) and shared, has compare-and-set (`update(last=revision)`), and the watcher gives
push invalidation for free; there is nothing else to run. Nothing here logs a key, a digest or a body.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from orchestration.streams import ensure_kv, patiently
from gatekeeping.auth import KeyRing, Principal
from schemas.errors import Conflict, InvalidRequest, NotFound
from schemas.tenancy import NO_LIMITS, KeyRecord, Limits, Tenant

BUCKET_TENANTS = "sy_tenants"
BUCKET_KEYS = "sy_keys"
BUCKET_SERVER = "sy_server"
KEY_ID_SECRET = "key_id_secret"
KEY_PREFIX = "sk-sy-"

log = structlog.get_logger("switchyard.keystore")
_encoder = msgspec.json.Encoder()
_tenant_decoder = msgspec.json.Decoder(Tenant)
_key_decoder = msgspec.json.Decoder(KeyRecord)


def new_key() -> str:
    """`sk-sy-` + 32 random bytes, base64url without padding (43 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def ensure_bucket(js: JetStreamContext, bucket: str, *, replicas: int = 1, **config: Any) -> KeyValue:
    """Opens a KV bucket, creating it on first use (safe when several replicas race to create it),
    with `replicas` copies (SWITCHYARD_NATS_REPLICAS; an existing bucket is scaled to it)."""
    return await ensure_kv(js, bucket, replicas=replicas, **config)


def _principal(rec: KeyRecord, tenant: Tenant) -> Principal:
    return Principal(tenant=rec.tenant, key_id=rec.key_id, models=rec.models, endpoints=rec.endpoints,
                     admin=rec.admin, operator=rec.admin and tenant.operator, tier=tenant.tier,
                     pii=tenant.pii, tenant_limits=tenant.limits, key_limits=rec.limits,
                     retention_s=tenant.retention_s or 0)


S = TypeVar("S")


def _validated(struct_type: type[S], **fields: Any) -> S:
    try:
        return msgspec.convert(fields, struct_type)
    except msgspec.ValidationError as exc:
        param = None
        msg = str(exc)
        if "at `$." in msg:
            param = msg.rsplit("at `$.", 1)[1].rstrip("`")
        raise InvalidRequest(f"Invalid value: {msg}", param=param) from None


async def key_id_secret(js: JetStreamContext, configured: str = "", *, replicas: int = 1) -> bytes:
    """The HMAC key of bootstrap key ids (gatekeeping.auth.key_id_of): SWITCHYARD_KEY_ID_SECRET when set,
    else 32 random bytes kept in KV `sy_server`, written once by the first replica to start, so every
    replica on the same NATS (and every restart) derives the same ids."""
    if configured:
        return configured.encode()
    kv = await ensure_bucket(js, BUCKET_SERVER, replicas=replicas, history=1)

    async def create_or_read() -> bytes:
        try:
            await kv.create(KEY_ID_SECRET, secrets.token_bytes(32))
        except KeyWrongLastSequenceError:
            pass  # there is one already
        entry = await kv.get(KEY_ID_SECRET)
        assert entry.value is not None  # get raises for a missing or deleted key
        return entry.value

    return await patiently(create_or_read)  # a new replicated bucket may have no leader yet


class KeyStore:
    """See the module docstring. Open with `await KeyStore.open(js, bootstrap=KeyRing(...))`."""

    def __init__(self, tenants: KeyValue, keys: KeyValue, bootstrap: KeyRing | None = None,
                 clock: Callable[[], float] = time.time):
        self._tenants_kv = tenants
        self._keys_kv = keys
        self._bootstrap = bootstrap
        self._clock = clock
        self._tenants: dict[str, tuple[Tenant, int]] = {}
        self._keys: dict[bytes, tuple[bytes, KeyRecord, int]] = {}   # digest -> (digest, record, rev)
        self._key_ids: dict[str, bytes] = {}                         # key_id -> digest
        self._deleted: dict[str, int] = {}                           # KV key -> revision of its delete
        self._principals: dict[bytes, Principal] = {}
        self._watchers: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    @classmethod
    async def open(cls, js: JetStreamContext, *, bootstrap: KeyRing | None = None,
                   clock: Callable[[], float] = time.time, sync_timeout: float = 10.0,
                   replicas: int = 1) -> "KeyStore":
        tenants = await ensure_bucket(js, BUCKET_TENANTS, replicas=replicas, history=1)
        keys = await ensure_bucket(js, BUCKET_KEYS, replicas=replicas, history=1)
        store = cls(tenants, keys, bootstrap, clock)
        await store._start(sync_timeout)
        if bootstrap is not None:
            await store._ensure_bootstrap_tenants(bootstrap)
        return store

    async def _start(self, sync_timeout: float) -> None:
        ready = []
        for name, kv, apply in ((BUCKET_TENANTS, self._tenants_kv, self._apply_tenant),
                                (BUCKET_KEYS, self._keys_kv, self._apply_key)):
            watcher = await kv.watchall()
            self._watchers.append(watcher)
            synced = asyncio.Event()
            ready.append(synced)
            self._tasks.append(asyncio.create_task(self._follow(watcher, apply, synced),
                                                   name=f"keystore-watch-{name}"))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), sync_timeout)

    async def _follow(self, watcher: Any, apply: Callable[[Any], None], synced: asyncio.Event) -> None:
        try:
            async for entry in watcher:
                if entry is None:          # end of the initial replay
                    synced.set()
                    continue
                try:
                    apply(entry)
                except Exception as exc:    # a malformed entry must not stop the watcher
                    log.warning("keystore_entry_skipped", bucket=entry.bucket, error_type=type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("keystore_watch_stopped", error_type=type(exc).__name__)

    def alive(self) -> bool:
        """False once a watcher stopped (the cache would go stale): for /readyz."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def close(self) -> None:
        for watcher in self._watchers:
            try:
                await watcher.stop()
            except Exception:
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._watchers.clear()
        self._tasks.clear()

    async def _ensure_bootstrap_tenants(self, ring: KeyRing) -> None:
        for p in ring.principals():
            if p.tenant in self._tenants:
                continue
            try:
                await self.create_tenant(p.tenant, name=p.tenant, operator=p.operator)
            except (Conflict, InvalidRequest):
                pass

    # ---- cache maintenance (watcher and local writes) --------------------------------------------
    def _stale(self, key: str, rev: int, current: int | None) -> bool:
        return (current is not None and rev < current) or rev < self._deleted.get(key, 0)

    def _apply_tenant(self, entry: Any) -> None:
        current = self._tenants.get(entry.key)
        if self._stale(entry.key, entry.revision, current[1] if current else None):
            return
        if entry.operation in ("DEL", "PURGE"):
            self._deleted[entry.key] = entry.revision
            self._tenants.pop(entry.key, None)
        else:
            self._tenants[entry.key] = (_tenant_decoder.decode(entry.value), entry.revision)
        self._principals.clear()

    def _apply_key(self, entry: Any) -> None:
        d = bytes.fromhex(entry.key)
        current = self._keys.get(d)
        if self._stale(entry.key, entry.revision, current[2] if current else None):
            return
        if entry.operation in ("DEL", "PURGE"):
            self._deleted[entry.key] = entry.revision
            if current is not None:
                self._key_ids.pop(current[1].key_id, None)
            self._keys.pop(d, None)
        else:
            rec = _key_decoder.decode(entry.value)
            self._keys[d] = (d, rec, entry.revision)
            self._key_ids[rec.key_id] = d
        self._principals.pop(d, None)

    def _set_tenant(self, tenant: Tenant, rev: int) -> None:
        current = self._tenants.get(tenant.id)
        if not self._stale(tenant.id, rev, current[1] if current else None):
            self._tenants[tenant.id] = (tenant, rev)
            self._principals.clear()

    def _set_key(self, d: bytes, rec: KeyRecord, rev: int) -> None:
        current = self._keys.get(d)
        if not self._stale(d.hex(), rev, current[2] if current else None):
            self._keys[d] = (d, rec, rev)
            self._key_ids[rec.key_id] = d
            self._principals.pop(d, None)

    # ---- the request path: in memory, no I/O ------------------------------------------------------
    def verify(self, presented: str) -> Principal | None:
        """The principal for a presented API key, or None (unknown, revoked, expired, or its tenant is
        gone). Same signature as `KeyRing.verify`, so the auth middleware can take either."""
        d = key_digest(presented)
        found = self._keys.get(d)
        if found is not None:
            stored, rec, _ = found
            if not hmac.compare_digest(stored, d) or not rec.usable(self._clock()):
                return None
            cached = self._principals.get(d)
            if cached is not None:
                return cached
            tenant = self._tenants.get(rec.tenant)
            if tenant is None:
                return None
            principal = _principal(rec, tenant[0])
            self._principals[d] = principal
            return principal
        if self._bootstrap is None:
            return None
        booted = self._bootstrap.verify(presented)
        if booted is None:
            return None
        tenant = self._tenants.get(booted.tenant)
        if tenant is None:
            return booted
        t = tenant[0]
        return msgspec.structs.replace(booted, tier=t.tier, pii=t.pii, tenant_limits=t.limits,
                                       retention_s=t.retention_s or 0,
                                       operator=booted.admin and (t.operator or booted.operator))

    authenticate = verify

    # ---- tenants ------------------------------------------------------------------------------------
    def get_tenant(self, tenant_id: str) -> Tenant | None:
        found = self._tenants.get(tenant_id)
        return found[0] if found else None

    def list_tenants(self) -> list[Tenant]:
        return sorted((t for t, _ in self._tenants.values()), key=lambda t: (t.created, t.id))

    async def create_tenant(self, tenant_id: str, *, name: str = "", tier: int = 3,
                            limits: Limits = NO_LIMITS, pii: str = "off", operator: bool = False,
                            cors_origins: Iterable[str] = (), retention_s: int | None = None) -> Tenant:
        tenant = _validated(Tenant, id=tenant_id, name=name or tenant_id, tier=tier,
                            limits=msgspec.to_builtins(limits), pii=pii, operator=operator,
                            created=round(self._clock(), 3), cors_origins=list(cors_origins),
                            retention_s=retention_s)
        try:
            rev = await self._tenants_kv.create(tenant.id, _encoder.encode(tenant))
        except KeyWrongLastSequenceError:
            raise Conflict(f"Tenant '{tenant.id}' already exists.", param="id") from None
        self._set_tenant(tenant, rev)
        return tenant

    async def update_tenant(self, tenant_id: str, **changes: Any) -> Tenant:
        """Changes some of name, tier, limits, pii, operator, cors_origins, retention_s (compare-and-set,
        retried on a race)."""
        allowed = {"name", "tier", "limits", "pii", "operator", "cors_origins", "retention_s"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRequest(f"Unknown tenant field(s): {', '.join(sorted(unknown))}.")
        while True:
            try:
                entry = await self._tenants_kv.get(tenant_id)
            except KeyNotFoundError:
                raise NotFound(f"No tenant '{tenant_id}'.", param="tenant", code="tenant_not_found") from None
            assert entry.value is not None
            current = msgspec.to_builtins(_tenant_decoder.decode(entry.value))
            current.update({k: msgspec.to_builtins(v) for k, v in changes.items()})
            tenant = _validated(Tenant, **current)
            try:
                rev = await self._tenants_kv.update(tenant_id, _encoder.encode(tenant), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            self._set_tenant(tenant, rev)
            return tenant

    async def _require_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.get_tenant(tenant_id)
        if tenant is not None:
            return tenant
        try:  # created by another process a moment ago, before our watcher saw it
            entry = await self._tenants_kv.get(tenant_id)
        except (KeyNotFoundError, Exception):
            raise NotFound(f"No tenant '{tenant_id}'.", param="tenant", code="tenant_not_found") from None
        assert entry.value is not None and entry.revision is not None
        tenant = _tenant_decoder.decode(entry.value)
        self._set_tenant(tenant, entry.revision)
        return tenant

    # ---- keys ---------------------------------------------------------------------------------------
    async def create_key(self, tenant: str, *, name: str = "", models: Iterable[str] = ("*",),
                         endpoints: Iterable[str] = ("*",), admin: bool = False,
                         limits: Limits = NO_LIMITS, expires: float | None = None) -> tuple[str, KeyRecord]:
        """Returns (the key, its record). The key is not stored anywhere and cannot be shown again."""
        await self._require_tenant(tenant)
        now = self._clock()
        if expires is not None and expires <= now:
            raise InvalidRequest("The expiry must be in the future.", param="expires")
        rec = _validated(KeyRecord, key_id=new_key_id(), tenant=tenant, name=name,
                         models=tuple(models) or ("*",), endpoints=tuple(endpoints) or ("*",),
                         admin=admin, limits=msgspec.to_builtins(limits), created=round(now, 3),
                         expires=expires)
        key = new_key()
        d = key_digest(key)
        rev = await self._keys_kv.create(d.hex(), _encoder.encode(rec))
        self._set_key(d, rec, rev)
        return key, rec

    def get_key(self, key_id: str) -> KeyRecord | None:
        d = self._key_ids.get(key_id)
        found = self._keys.get(d) if d is not None else None
        return found[1] if found else None

    def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        recs = (r for _, r, _ in self._keys.values() if tenant is None or r.tenant == tenant)
        return sorted(recs, key=lambda r: (r.created, r.key_id))

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Marks the key revoked (kept for the audit trail); every replica refuses it within a second."""
        d = self._key_ids.get(key_id)
        if d is None:
            raise NotFound(f"No API key '{key_id}'.", param="key_id", code="key_not_found")
        while True:
            try:
                entry = await self._keys_kv.get(d.hex())
            except KeyNotFoundError:
                raise NotFound(f"No API key '{key_id}'.", param="key_id", code="key_not_found") from None
            assert entry.value is not None and entry.revision is not None
            rec = _key_decoder.decode(entry.value)
            if rec.revoked:
                self._set_key(d, rec, entry.revision)
                return rec
            rec = msgspec.structs.replace(rec, revoked=True, revoked_at=round(self._clock(), 3))
            try:
                rev = await self._keys_kv.update(d.hex(), _encoder.encode(rec), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            self._set_key(d, rec, rev)
            return rec


def key_view(rec: KeyRecord) -> dict[str, Any]:
    """A key record as shown to operators (no secret, no digest)."""
    out: dict[str, Any] = msgspec.to_builtins(rec)
    out["object"] = "api_key"
    out.setdefault("limits", {})
    out.setdefault("revoked", False)
    out.setdefault("expires", None)
    return out


def tenant_view(tenant: Tenant) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(tenant)
    out["object"] = "tenant"
    out.setdefault("limits", {})
    out.setdefault("tier", tenant.tier)
    out.setdefault("pii", tenant.pii)
    return out
