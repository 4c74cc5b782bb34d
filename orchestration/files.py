"""The Files API's store: bytes in the object store, metadata in NATS KV, every file a tenant's own.

- Bytes: `files/<sha256(tenant)[:16]>/<file id>` in the configured object store (local directory or
  S3), written as a stream (`ObjectStore.put_stream`), so an upload is never held in memory.
- Metadata: KV bucket `sy_files`, key `<sha256(tenant)[:16]>.<file id>`, value a `FileRecord` (JSON).
  A tenant's listing reads its keys' last values (one ordered consumer, filtered by the prefix).
- Ids are `file-` + 32 hex digits: 12 of milliseconds since the epoch, 20 random. Sorting by id is
  sorting by creation time, which gives `after` pagination a total order without a lookup.

Another tenant's id is answered exactly as an unknown one (FileNotFound). A file past its
`expires_at` is gone: reads answer FileNotFound and remove it. No proxy, no HTTP here: the
Batches and fine-tuning workflows' activities use this store too.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import NamedTuple

import msgspec
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from orchestration.objectstore import FILES_PREFIX, ObjectNotFound, ObjectStore
from orchestration.streams import ensure_kv, kv_values
from schemas.errors import InvalidRequest, NotFound, PayloadTooLarge
from schemas.files import OUTPUT_PURPOSES, UPLOAD_PURPOSES, FileDeleted, FileList, FileObject, FileRecord

FILES_BUCKET = "sy_files"
MAX_LIST_LIMIT = 10_000
MAX_FILENAME_CHARS = 255
_FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
_record_decoder = msgspec.json.Decoder(FileRecord)


class FileNotFound(NotFound):
    code = "file_not_found"

    def __init__(self, file_id: str):
        super().__init__(f"No such File object: {file_id[:64]}", param="file_id")


class FileTooLarge(PayloadTooLarge):
    code = "file_too_large"

    def __init__(self, max_bytes: int):
        super().__init__(f"The file is larger than the limit of {max_bytes} bytes.", param="file")


class StagedFile(NamedTuple):
    """Bytes stored under a new file id, not yet a file (no metadata): see FileStore.stage."""

    tenant: str
    file_id: str
    key: str
    bytes: int

    @property
    def created_at(self) -> int:
        return int(self.file_id[5:17], 16) // 1000  # the id's milliseconds


def tenant_hash(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:16]


def new_file_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"file-{ms:012x}{secrets.token_hex(10)}"


def object_key(tenant: str, file_id: str) -> str:
    return f"{FILES_PREFIX}/{tenant_hash(tenant)}/{file_id}"


def _kv_key(tenant: str, file_id: str) -> str:
    return f"{tenant_hash(tenant)}.{file_id}"


def check_purpose(purpose: str, allowed: tuple[str, ...] = UPLOAD_PURPOSES + OUTPUT_PURPOSES) -> str:
    if purpose not in allowed:
        raise InvalidRequest(f"Invalid purpose '{str(purpose)[:64]}'. Supported: {', '.join(allowed)}.",
                             param="purpose", code="invalid_value")
    return purpose


async def _limited(chunks: AsyncIterable[bytes], max_bytes: int, seen: list[int]) -> AsyncIterator[bytes]:
    """The chunks, counted into seen[0]; FileTooLarge as soon as they pass `max_bytes`."""
    async for chunk in chunks:
        seen[0] += len(chunk)
        if seen[0] > max_bytes:
            raise FileTooLarge(max_bytes)
        yield chunk


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class FileStore:
    def __init__(self, kv: KeyValue, objects: ObjectStore):
        self.kv = kv
        self.objects = objects

    @classmethod
    async def open(cls, js: JetStreamContext, objects: ObjectStore, replicas: int = 1) -> "FileStore":
        kv = await ensure_kv(js, FILES_BUCKET, replicas=replicas, history=1, storage=StorageType.FILE)
        return cls(kv, objects)

    async def stage(self, tenant: str, chunks: AsyncIterable[bytes], max_bytes: int,
                    content_type: str = "application/octet-stream") -> StagedFile:
        """Streams the bytes of a file to be under a new id (FileTooLarge past `max_bytes`, nothing
        left behind). Not listed until `commit`; `discard` removes it (an upload whose form turns
        out bad after its file part)."""
        file_id = new_file_id()
        key = object_key(tenant, file_id)
        seen = [0]
        await self.objects.put_stream(key, _limited(chunks, max_bytes, seen), content_type)
        return StagedFile(tenant, file_id, key, seen[0])

    async def commit(self, staged: StagedFile, purpose: str, filename: str,
                     expires_at: int | None = None) -> FileObject:
        check_purpose(purpose)
        file = FileObject(id=staged.file_id, bytes=staged.bytes, created_at=staged.created_at,
                          filename=filename[:MAX_FILENAME_CHARS] or "file", purpose=purpose,
                          expires_at=expires_at)
        record = FileRecord(file=file, tenant=staged.tenant, key=staged.key)
        try:
            await self.kv.put(_kv_key(staged.tenant, staged.file_id), msgspec.json.encode(record))
        except BaseException:
            await self.discard(staged)
            raise
        return file

    async def discard(self, staged: StagedFile) -> None:
        await self.objects.delete(staged.key)

    async def create(self, tenant: str, purpose: str, filename: str, chunks: AsyncIterable[bytes],
                     max_bytes: int, expires_at: int | None = None) -> FileObject:
        check_purpose(purpose)
        staged = await self.stage(tenant, chunks, max_bytes)
        return await self.commit(staged, purpose, filename, expires_at)

    async def put_bytes(self, tenant: str, purpose: str, filename: str, data: bytes,
                        expires_at: int | None = None) -> FileObject:
        """A file Switchyard writes itself (a batch's output or error file)."""
        return await self.create(tenant, purpose, filename, _one(data), len(data), expires_at)

    async def _record(self, tenant: str, file_id: str) -> FileRecord:
        if not isinstance(file_id, str) or not _FILE_ID.match(file_id):
            raise FileNotFound(str(file_id))
        try:
            entry = await self.kv.get(_kv_key(tenant, file_id))
        except KeyNotFoundError:  # KeyDeletedError too
            raise FileNotFound(file_id) from None
        record = _record_decoder.decode(entry.value or b"")
        if record.tenant != tenant:
            raise FileNotFound(file_id)
        if _expired(record.file):
            await self._remove(record)
            raise FileNotFound(file_id)
        return record

    async def get(self, tenant: str, file_id: str) -> FileObject:
        return (await self._record(tenant, file_id)).file

    async def list(self, tenant: str, purpose: str | None = None, after: str | None = None, limit: int = 20,
                   order: str = "desc") -> FileList:
        """The tenant's files, newest first (`order="asc"`: oldest first), `limit` at most, after the
        file `after` in that order."""
        limit = max(1, min(int(limit), MAX_LIST_LIMIT))
        files = [f for f in await self._all(tenant) if purpose is None or f.purpose == purpose]
        files.sort(key=lambda f: f.id, reverse=order != "asc")
        if after:
            files = [f for f in files if (f.id < after if order != "asc" else f.id > after)]
        page = files[:limit]
        return FileList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                        has_more=len(files) > limit)

    async def _all(self, tenant: str) -> builtins.list[FileObject]:
        records = [r for r in map(_record_decoder.decode, await kv_values(self.kv, tenant_hash(tenant)))
                   if r.tenant == tenant]
        live = []
        for record in records:
            if _expired(record.file):
                await self._remove(record)
            else:
                live.append(record.file)
        return live

    async def content(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        record = await self._record(tenant, file_id)
        try:
            async for chunk in self.objects.stream(record.key):
                yield chunk
        except ObjectNotFound:
            raise FileNotFound(file_id) from None

    async def read_all(self, tenant: str, file_id: str) -> bytes:
        record = await self._record(tenant, file_id)
        try:
            return await self.objects.get(record.key)
        except ObjectNotFound:
            raise FileNotFound(file_id) from None

    async def delete(self, tenant: str, file_id: str) -> FileDeleted:
        await self._remove(await self._record(tenant, file_id))
        return FileDeleted(id=file_id, deleted=True)

    async def _remove(self, record: FileRecord) -> None:
        """Metadata first (the file is gone for every reader at once), then the bytes."""
        await self.kv.delete(_kv_key(record.tenant, record.file.id))
        await self.objects.delete(record.key)


def _expired(file: FileObject, now: float | None = None) -> bool:
    return file.expires_at is not None and file.expires_at <= (time.time() if now is None else now)
