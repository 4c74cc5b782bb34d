"""The live catalog: model_catalog.yaml plus what NATS KV adds to it, shared by every proxy and worker.

The bucket `sy_catalog` holds
- `model.<id>`: a dynamic ModelEntry (an optional `tenant` makes it that tenant's alone);
- `alias.<name>`: an AliasRecord, the version a stable name serves (and a canary share).

Every process holds a `CatalogView`: an immutable `CatalogSnapshot` that a KV watcher replaces as a
whole on each change. The request path reads `view.current` once (the atomic reference) and looks up
in plain dicts. Aliases move only by compare-and-set on the key's last revision (`ModelRegistry.flip`):
a writer that lost the race re-reads, and refuses when the alias no longer serves what it expected.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from adapters.registry import engine_capabilities
from orchestration.streams import ensure_kv
from schemas.catalog import Catalog, ModelEntry
from schemas.rollout import AliasRecord, FlipInput

log = structlog.get_logger("switchyard.catalog")
CATALOG_BUCKET = "sy_catalog"
MODEL_PREFIX = "model."
ALIAS_PREFIX = "alias."
_alias_decoder = msgspec.json.Decoder(AliasRecord)
_entry_decoder = msgspec.json.Decoder(ModelEntry)


def kv_key(prefix: str, name: str) -> str:
    # KV keys take [-/_=.A-Za-z0-9]; catalog names also take ':', never '=': the mapping is one-to-one.
    return prefix + name.replace(":", "=")


class AliasConflict(Exception):
    """The alias no longer serves what the caller expected (another flip won the race)."""


class CatalogConflict(ValueError):
    """A name already taken, or an entry the catalog cannot serve."""


class CatalogSnapshot:
    """One immutable state of the catalog. Never changed after construction."""

    __slots__ = ("by_id", "by_name", "aliases", "models", "revision")

    def __init__(self, base: Catalog, dynamic: dict[str, ModelEntry], aliases: dict[str, AliasRecord],
                 revision: int = 0):
        self.by_id: dict[str, ModelEntry] = {m.id: m for m in base.models}
        for model_id, entry in dynamic.items():
            self.by_id.setdefault(model_id, entry)  # a file entry wins: its name was taken first
        self.by_name: dict[str, ModelEntry] = {a: m for m in base.models for a in m.aliases}
        self.aliases = {name: rec for name, rec in aliases.items() if name not in self.by_id}
        self.models: list[ModelEntry] = list(self.by_id.values())
        self.revision = revision

    def get(self, name: str) -> ModelEntry | None:
        """The entry a name serves: a model id, a file alias, or a KV alias (its canary by chance)."""
        entry = self.by_id.get(name)
        if entry is not None:
            return entry
        alias = self.aliases.get(name)
        if alias is None:
            return self.by_name.get(name)
        target = alias.target
        if alias.canary_target and random.random() * 100 < alias.canary_percent:
            target = alias.canary_target
        return self.by_id.get(target) or self.by_id.get(alias.target)

    def task_queues(self) -> list[str]:
        return sorted({m.task_queue for m in self.models})

    def visible_to(self, tenant: str) -> list[tuple[str, ModelEntry]]:
        """(name, entry) of every model and alias this tenant may use (before its key's globs)."""
        out = [(m.id, m) for m in self.models if not m.tenant or m.tenant == tenant]
        for name, rec in sorted(self.aliases.items()):
            entry = self.by_id.get(rec.target)
            if entry is not None and rec.tenant in ("", tenant) and entry.tenant in ("", tenant):
                out.append((name, entry))
        return out


class CatalogView:
    """The catalog as this process sees it now. `get` and `models` answer as Catalog's do."""

    def __init__(self, base: Catalog):
        self.base = base
        self.current = CatalogSnapshot(base, {}, {})
        self._dynamic: dict[str, ModelEntry] = {}
        self._aliases: dict[str, AliasRecord] = {}
        self._listeners: list[Callable[[CatalogSnapshot], None]] = []
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set on every new snapshot (tests and benchmarks wait on it)

    @classmethod
    async def open(cls, js: JetStreamContext, base: Catalog, *, replicas: int = 1,
                   sync_timeout: float = 10.0) -> "CatalogView":
        view = cls(base)
        kv = await open_catalog_bucket(js, replicas=replicas)
        view._watcher = await kv.watchall()
        synced = asyncio.Event()
        view._task = asyncio.create_task(view._follow(synced), name="catalog-watch")
        await asyncio.wait_for(synced.wait(), sync_timeout)
        return view

    def get(self, name: str) -> ModelEntry | None:
        return self.current.get(name)

    @property
    def models(self) -> list[ModelEntry]:
        return self.current.models

    def task_queues(self) -> list[str]:
        return self.current.task_queues()

    def on_change(self, listener: Callable[[CatalogSnapshot], None]) -> None:
        self._listeners.append(listener)

    def alive(self) -> bool:
        return self._task is None or not self._task.done()

    async def _follow(self, synced: asyncio.Event) -> None:
        try:
            async for entry in self._watcher:
                if entry is None:  # the initial replay is over
                    self._publish(0)
                    synced.set()
                    continue
                try:
                    self._apply(entry)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("catalog_entry_skipped", key=entry.key, error_type=type(exc).__name__)
                    continue
                if synced.is_set():
                    self._publish(entry.revision)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("catalog_watch_stopped", error_type=type(exc).__name__)

    def _apply(self, entry: Any) -> None:
        deleted = entry.operation in ("DEL", "PURGE") or not entry.value
        if entry.key.startswith(MODEL_PREFIX):
            name = entry.key[len(MODEL_PREFIX):].replace("=", ":")
            if deleted:
                self._dynamic.pop(name, None)
            else:
                self._dynamic[name] = _entry_decoder.decode(entry.value)
        elif entry.key.startswith(ALIAS_PREFIX):
            name = entry.key[len(ALIAS_PREFIX):].replace("=", ":")
            if deleted:
                self._aliases.pop(name, None)
            else:
                self._aliases[name] = _alias_decoder.decode(entry.value)

    def _publish(self, revision: int) -> None:
        self.current = CatalogSnapshot(self.base, dict(self._dynamic), dict(self._aliases), revision)
        for listener in self._listeners:
            try:
                listener(self.current)
            except Exception as exc:  # one listener's failure must not stop the watcher
                log.error("catalog_listener_failed", error_type=type(exc).__name__)
        self.changed.set()
        self.changed = asyncio.Event()

    async def close(self) -> None:
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:
                pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def open_catalog_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    return await ensure_kv(js, CATALOG_BUCKET, replicas=replicas, history=5)


class ModelRegistry:
    """Writes to the catalog bucket. Reads of what is served go through a CatalogView."""

    def __init__(self, kv: KeyValue, base: Catalog):
        self.kv = kv
        self.base = base

    @classmethod
    async def open(cls, js: JetStreamContext, base: Catalog, *, replicas: int = 1) -> "ModelRegistry":
        return cls(await open_catalog_bucket(js, replicas=replicas), base)

    def _taken_by_file(self, name: str) -> bool:
        return any(m.id == name or name in m.aliases for m in self.base.models)

    def file_entry(self, model_id: str) -> ModelEntry | None:
        return next((m for m in self.base.models if m.id == model_id), None)

    async def put_model(self, entry: ModelEntry) -> bool:
        """Registers a dynamic entry; False when the same entry is there already. A name the file
        catalog or an alias holds, or a different entry under this id: CatalogConflict."""
        if self._taken_by_file(entry.id) or await self.get_alias(entry.id) is not None:
            raise CatalogConflict(f"the name {entry.id!r} is taken")
        if entry.engine is None:
            raise CatalogConflict("a dynamic model needs an engine (pipelines come from the catalog file)")
        try:
            engine_capabilities(entry.engine)
        except ValueError as exc:
            raise CatalogConflict(str(exc)) from None
        existing = await self.get_model(entry.id)
        if existing is not None:
            if existing == entry:
                return False
            raise CatalogConflict(f"a different model {entry.id!r} is registered already")
        try:
            await self.kv.create(kv_key(MODEL_PREFIX, entry.id), msgspec.json.encode(entry))
        except KeyWrongLastSequenceError:
            raise CatalogConflict(f"the model {entry.id!r} was registered meanwhile") from None
        return True

    async def get_model(self, model_id: str) -> ModelEntry | None:
        try:
            got = await self.kv.get(kv_key(MODEL_PREFIX, model_id))
        except KeyNotFoundError:
            return None
        return _entry_decoder.decode(got.value) if got.value else None

    async def remove_model(self, model_id: str) -> None:
        """Removes a dynamic entry (no-op when absent). An alias still serving it: CatalogConflict."""
        for name, (rec, _) in (await self.aliases()).items():
            if model_id in (rec.target, rec.canary_target):
                raise CatalogConflict(f"the alias {name!r} still serves {model_id!r}")
        try:
            await self.kv.delete(kv_key(MODEL_PREFIX, model_id))
        except KeyNotFoundError:
            pass

    async def get_alias(self, name: str) -> tuple[AliasRecord, int] | None:
        try:
            got = await self.kv.get(kv_key(ALIAS_PREFIX, name))
        except KeyNotFoundError:
            return None
        if not got.value or got.revision is None:
            return None
        return _alias_decoder.decode(got.value), got.revision

    async def aliases(self) -> dict[str, tuple[AliasRecord, int]]:
        out: dict[str, tuple[AliasRecord, int]] = {}
        try:
            keys = await self.kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return out
        for key in keys:
            if key.startswith(ALIAS_PREFIX):
                name = key[len(ALIAS_PREFIX):].replace("=", ":")
                got = await self.get_alias(name)
                if got is not None:
                    out[name] = got
        return out

    async def flip(self, change: FlipInput, *, attempts: int = 5) -> AliasRecord:
        """One compare-and-set of the alias. Refused (AliasConflict) when the alias does not serve
        `change.expect` any more; a write lost to a concurrent one is re-read and decided again.
        `change.to` "" removes the alias."""
        if self._taken_by_file(change.alias):
            raise CatalogConflict(f"{change.alias!r} is a model of the catalog file, not a movable alias")
        for _ in range(attempts):
            got = await self.get_alias(change.alias)
            current, revision = got if got is not None else (None, 0)
            if not change.to:  # removal: only of an alias still serving `expect`
                if current is None:
                    return AliasRecord(target="")
                if current.target != change.expect:
                    raise AliasConflict(f"the alias {change.alias!r} serves {current.target!r}, not {change.expect!r}")
                try:
                    await self.kv.delete(kv_key(ALIAS_PREFIX, change.alias), last=revision)
                    return AliasRecord(target="")
                except KeyWrongLastSequenceError:
                    continue
            new = _flipped(current, change)
            if new is None:  # already as asked: a retried activity
                assert current is not None
                return current
            if (current.target if current else "") != change.expect:
                raise AliasConflict(f"the alias {change.alias!r} serves {current.target if current else None!r}, "
                                    f"not {change.expect!r}")
            try:
                if revision:
                    await self.kv.update(kv_key(ALIAS_PREFIX, change.alias), msgspec.json.encode(new), last=revision)
                else:
                    await self.kv.create(kv_key(ALIAS_PREFIX, change.alias), msgspec.json.encode(new))
                return new
            except KeyWrongLastSequenceError:
                continue  # someone wrote between our read and write: decide again on what is there now
        raise AliasConflict(f"the alias {change.alias!r} kept changing; gave up after {attempts} tries")


def _flipped(current: AliasRecord | None, c: FlipInput) -> AliasRecord | None:
    """The record after `c`, or None when `current` already is what `c` asks for."""
    now = time.time()
    if c.canary_percent > 0:
        if current is not None and current.canary_target == c.to and current.canary_percent == c.canary_percent:
            return None
        base = current or AliasRecord(target=c.expect)
        return msgspec.structs.replace(base, canary_target=c.to, canary_percent=c.canary_percent, status="canary",
                                       rollout_id=c.rollout_id, updated_at=now, reason=c.reason)
    if current is not None and current.target == c.to:
        if not current.canary_target and current.status == c.status:
            return None
        previous = current.previous  # a status change, or a canary ended: the target stays
    else:
        previous = current.target if current else ""
    return AliasRecord(target=c.to, previous=previous, tenant=c.tenant or (current.tenant if current else ""),
                       status=c.status, rollout_id=c.rollout_id or (current.rollout_id if current else ""),
                       updated_at=now, reason=c.reason)
