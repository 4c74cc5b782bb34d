"""The claim-check object store: payloads too large for Temporal's history travel by reference.

Keys are `<job id>/<name>` (e.g. `chatcmpl-…/request.json`, `embd-…/result.json`); a reference is
the key itself, so the proxy and the workers resolve it against the same configured store.

- `LocalObjectStore`: a directory (`SWITCHYARD_OBJECT_DIR`, default `var/objects`), one node.
  Writes are atomic (a temporary file in the same directory, then `os.replace`), so a reader sees
  the whole object or none. `sweep` removes jobs' objects older than the retention (never `files/`).
- `S3ObjectStore`: any S3 API (AWS, MinIO) through aiobotocore (`SWITCHYARD_OBJECT_STORE=s3`).
  A PUT is atomic by S3's own contract; expiry is the bucket's lifecycle rule (scope it to leave
  `files/` alone: the Files API's objects live until deleted).

The claim-check rule (ARCHITECTURE.md §3): an activity input or output over
`SWITCHYARD_CLAIM_CHECK_BYTES` (default 1 MB, never above 1.5 MB) goes by reference.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Mapping, NamedTuple, Protocol

from orchestration.telemetry import record_claim_check

DEFAULT_CLAIM_CHECK_BYTES = 1_000_000
MAX_CLAIM_CHECK_BYTES = 1_500_000  # Temporal refuses payloads over 2 MB; keep a margin
CHUNK = 256 * 1024
PART_BYTES = 8 * 1024 * 1024  # S3 multipart parts (S3 wants >= 5 MiB but the last)
FILES_PREFIX = "files"  # the Files API's objects (orchestration/files.py): kept until deleted, never swept
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,80}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})*$")


class ObjectNotFound(KeyError):
    pass


class StoredObject(NamedTuple):
    key: str
    modified: float  # unix seconds


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"invalid object key {key!r}")
    return key


def claim_check_bytes(env: Mapping[str, str] | None = None) -> int:
    """The threshold over which a payload travels by reference (capped at 1.5 MB)."""
    e = os.environ if env is None else env
    value = int(e.get("SWITCHYARD_CLAIM_CHECK_BYTES", str(DEFAULT_CLAIM_CHECK_BYTES)))
    if value < 1:
        raise ValueError("SWITCHYARD_CLAIM_CHECK_BYTES must be positive")
    return min(value, MAX_CLAIM_CHECK_BYTES)


def request_key(job_id: str, digest: str = "") -> str:
    """A request body's key. With the body's digest in the name, a second request under the same
    job id (an Idempotency-Key reused with another body, refused with 409) cannot replace it."""
    return check_key(f"{job_id}/request{'-' + digest if digest else ''}.json")


def result_key(job_id: str, suffix: str = "json") -> str:
    """A job's result; the suffix says what it is (json, txt, srt, vtt, mp3, wav ...)."""
    return check_key(f"{job_id}/result.{suffix}")


def upload_key(job_id: str, digest: str, suffix: str) -> str:
    """A file the client uploaded (an audio file to transcribe), named by its content's digest."""
    return check_key(f"{job_id}/upload-{digest}{'.' + suffix if suffix else ''}")


class ObjectStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Stores `data` under `key` (replacing any object there); returns its reference."""
        ...

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes],
                         content_type: str = "application/octet-stream") -> str:
        """Stores the chunks as one object without holding them all in memory. If `chunks` raises,
        nothing is left under `key` (nor half-written elsewhere) and the error propagates."""
        ...

    async def get(self, ref: str) -> bytes:
        """The whole object; ObjectNotFound if there is none."""
        ...

    def stream(self, ref: str) -> AsyncIterator[bytes]:
        """The object in chunks, for sending large results on without holding them in memory."""
        ...

    async def size(self, ref: str) -> int: ...

    async def delete(self, ref: str) -> None: ...

    def list_objects(self) -> AsyncIterator[StoredObject]:
        """Every object, in no particular order (for sweeps)."""
        ...

    async def aclose(self) -> None: ...


class LocalObjectStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        await asyncio.to_thread(self._write, self._path(key), data)
        record_claim_check("put", len(data))
        return key

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes],
                         content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        f = await asyncio.to_thread(self._create, tmp)
        size = 0
        try:
            buf = bytearray()
            async for chunk in chunks:
                buf += chunk
                size += len(chunk)
                if len(buf) >= CHUNK * 4:
                    await asyncio.to_thread(f.write, buf)
                    buf = bytearray()
            await asyncio.to_thread(self._finish, f, bytes(buf), tmp, path)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        record_claim_check("put", size)
        return key

    @staticmethod
    def _create(tmp: Path):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        return open(tmp, "wb")

    @staticmethod
    def _finish(f, rest: bytes, tmp: Path, path: Path) -> None:
        with f:
            f.write(rest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old object or the new one, never half
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def get(self, ref: str) -> bytes:
        path = self._path(ref)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ObjectNotFound(ref) from None
        record_claim_check("get", len(data))
        return data

    async def size(self, ref: str) -> int:
        try:
            return self._path(ref).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(ref) from None

    async def stream(self, ref: str) -> AsyncIterator[bytes]:
        path = self._path(ref)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(ref) from None
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                record_claim_check("get", len(chunk))
                yield chunk
        finally:
            f.close()

    async def delete(self, ref: str) -> None:
        self._path(ref).unlink(missing_ok=True)

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        for job_dir in await asyncio.to_thread(lambda: [d for d in self.root.iterdir() if d.is_dir()]):
            for obj in await asyncio.to_thread(self._list_dir, job_dir):
                yield obj

    def _list_dir(self, job_dir: Path) -> list[StoredObject]:
        out = []
        try:
            for p in job_dir.iterdir():
                if not p.name.startswith("."):  # a write in progress
                    try:
                        out.append(StoredObject(f"{job_dir.name}/{p.name}", p.stat().st_mtime))
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            pass
        return out

    async def sweep(self, max_age_s: float, now: float | None = None) -> int:
        """Removes the objects of jobs whose newest object is older than `max_age_s`; returns how
        many job folders went."""
        return await asyncio.to_thread(self._sweep, max_age_s, time.time() if now is None else now)

    def _sweep(self, max_age_s: float, now: float) -> int:
        removed = 0
        for job_dir in self.root.iterdir():
            if not job_dir.is_dir() or job_dir.name == FILES_PREFIX:
                continue
            try:
                newest = max((p.stat().st_mtime for p in job_dir.iterdir()), default=job_dir.stat().st_mtime)
            except FileNotFoundError:
                continue
            if now - newest > max_age_s:
                shutil.rmtree(job_dir, ignore_errors=True)
                removed += 1
        return removed

    async def aclose(self) -> None:
        pass


class S3ObjectStore:
    """Objects in an S3 bucket under an optional prefix. Credentials and region come from the usual
    AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) or the instance."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, prefix: str = "",
                 region: str | None = None, create_bucket: bool = False):
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.region = region
        self.create_bucket = create_bucket
        self._stack = AsyncExitStack()
        self._client = None
        self._lock = asyncio.Lock()

    async def _s3(self):
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    from aiobotocore.session import get_session

                    client = await self._stack.enter_async_context(get_session().create_client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region))
                    if self.create_bucket:
                        await self._ensure_bucket(client)
                    self._client = client
        return self._client

    async def _ensure_bucket(self, client) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
        except client.exceptions.ClientError:
            await client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def put(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        s3 = await self._s3()
        await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        record_claim_check("put", len(data))
        return key

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes],
                         content_type: str = "application/octet-stream") -> str:
        """One PUT for an object under PART_BYTES, else a multipart upload, aborted on error."""
        s3 = await self._s3()
        where = {"Bucket": self.bucket, "Key": self._key(key)}
        buf, size, upload_id = bytearray(), 0, None
        parts: list[dict] = []
        try:
            async for chunk in chunks:
                buf += chunk
                size += len(chunk)
                if len(buf) >= PART_BYTES:
                    if upload_id is None:
                        upload_id = (await s3.create_multipart_upload(**where, ContentType=content_type))["UploadId"]
                    parts.append(await self._part(s3, where, upload_id, len(parts) + 1, bytes(buf)))
                    buf = bytearray()
            if upload_id is None:
                await s3.put_object(**where, Body=bytes(buf), ContentType=content_type)
            else:
                if buf:
                    parts.append(await self._part(s3, where, upload_id, len(parts) + 1, bytes(buf)))
                await s3.complete_multipart_upload(**where, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            if upload_id is not None:
                try:
                    await asyncio.shield(s3.abort_multipart_upload(**where, UploadId=upload_id))
                except Exception:
                    pass  # the bucket's lifecycle rule for incomplete uploads is the backstop
            raise
        record_claim_check("put", size)
        return key

    @staticmethod
    async def _part(s3, where: dict[str, str], upload_id: str, number: int, data: bytes) -> dict:
        part = await s3.upload_part(**where, UploadId=upload_id, PartNumber=number, Body=data)
        return {"ETag": part["ETag"], "PartNumber": number}

    async def _get(self, ref: str):
        s3 = await self._s3()
        try:
            return await s3.get_object(Bucket=self.bucket, Key=self._key(ref))
        except s3.exceptions.NoSuchKey:
            raise ObjectNotFound(ref) from None

    async def get(self, ref: str) -> bytes:
        response = await self._get(ref)
        async with response["Body"] as body:
            data = await body.read()
        record_claim_check("get", len(data))
        return data

    async def size(self, ref: str) -> int:
        s3 = await self._s3()
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=self._key(ref))
        except s3.exceptions.ClientError:
            raise ObjectNotFound(ref) from None
        return int(head["ContentLength"])

    async def stream(self, ref: str) -> AsyncIterator[bytes]:
        response = await self._get(ref)
        async with response["Body"] as body:
            while chunk := await body.read(CHUNK):
                record_claim_check("get", len(chunk))
                yield chunk

    async def delete(self, ref: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=self._key(ref))

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        s3 = await self._s3()
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                yield StoredObject(obj["Key"][len(self.prefix):], obj["LastModified"].timestamp())

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None


async def sweep_forever(store: ObjectStore, env: Mapping[str, str] | None = None) -> None:
    """Expires a local store's objects after `SWITCHYARD_OBJECT_RETENTION_S` (default 24 h, the
    job events' retention), checking hourly. S3 buckets expire objects with a lifecycle rule."""
    sweep = getattr(store, "sweep", None)
    if sweep is None:
        return
    e = os.environ if env is None else env
    retention = float(e.get("SWITCHYARD_OBJECT_RETENTION_S", str(24 * 3600)))
    while True:
        try:
            await sweep(retention)
        except OSError:
            pass
        await asyncio.sleep(min(3600.0, max(1.0, retention / 4)))


def object_store_from_env(env: Mapping[str, str] | None = None) -> ObjectStore:
    """`SWITCHYARD_OBJECT_STORE`: `local` (default; `SWITCHYARD_OBJECT_DIR`, default var/objects)
    or `s3` (`SWITCHYARD_S3_BUCKET`, `SWITCHYARD_S3_ENDPOINT_URL`, `SWITCHYARD_S3_PREFIX`,
    `SWITCHYARD_S3_REGION`, `SWITCHYARD_S3_CREATE_BUCKET=1` to create a missing bucket)."""
    e = os.environ if env is None else env
    kind = e.get("SWITCHYARD_OBJECT_STORE", "local").strip().lower() or "local"
    if kind == "local":
        return LocalObjectStore(e.get("SWITCHYARD_OBJECT_DIR", "var/objects"))
    if kind == "s3":
        bucket = e.get("SWITCHYARD_S3_BUCKET", "").strip()
        if not bucket:
            raise ValueError("SWITCHYARD_OBJECT_STORE=s3 needs SWITCHYARD_S3_BUCKET")
        return S3ObjectStore(bucket, e.get("SWITCHYARD_S3_ENDPOINT_URL") or None,
                             e.get("SWITCHYARD_S3_PREFIX", ""), e.get("SWITCHYARD_S3_REGION") or None,
                             e.get("SWITCHYARD_S3_CREATE_BUCKET", "") in ("1", "true", "yes"))
    raise ValueError(f"SWITCHYARD_OBJECT_STORE must be local or s3, not {kind!r}")
