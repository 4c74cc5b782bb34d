"""The Files API's store (orchestration/files.py) on a real NATS and a real object store (a local
directory, and S3 through moto's server): streamed writes, multipart uploads and their abort, tenant
isolation, pagination, expiry, and the sweepers leaving `files/` alone."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from orchestration.files import FileNotFound, FileStore, FileTooLarge, object_key
from orchestration.objectstore import PART_BYTES, LocalObjectStore, ObjectNotFound, S3ObjectStore, upload_key
from proxy.jobs.orphans import MISSING, sweep_orphans
from schemas.errors import InvalidRequest


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def failing_after(data: bytes) -> AsyncIterator[bytes]:
    async for chunk in chunks_of(data):
        yield chunk
    raise ConnectionResetError("the client went away")


@pytest.fixture
async def js(nats_url: str):
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def files(js, tmp_path: Path) -> FileStore:
    return await FileStore.open(js, LocalObjectStore(tmp_path / "objects"))


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def stored_paths(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_a_file_round_trips_and_is_its_tenants_alone(files: FileStore, tmp_path: Path):
    owner, other = tenant(), tenant()
    data = os.urandom(3 * 1024 * 1024 + 5)
    f = await files.create(owner, "batch", "input.jsonl", chunks_of(data), max_bytes=len(data))
    assert f.id.startswith("file-") and len(f.id) == 37 and f.bytes == len(data) and f.purpose == "batch"
    assert abs(f.created_at - time.time()) < 60 and f.status == "processed" and f.expires_at is None
    assert await files.get(owner, f.id) == f
    assert b"".join([c async for c in files.content(owner, f.id)]) == data
    assert await files.read_all(owner, f.id) == data
    for call in (files.get(other, f.id), files.read_all(other, f.id), files.delete(other, f.id)):
        with pytest.raises(FileNotFound):
            await call
    assert (await files.list(other)).data == []
    assert (await files.delete(owner, f.id)).deleted is True
    with pytest.raises(FileNotFound):
        await files.get(owner, f.id)
    assert stored_paths(tmp_path / "objects") == []


async def test_listing_pages_by_creation_order_and_filters_by_purpose(files: FileStore):
    t = tenant()
    made = [await files.put_bytes(t, "fine-tune" if i % 2 else "batch", f"f{i}.jsonl", b"{}\n") for i in range(5)]
    newest_first = [f.id for f in reversed(made)]
    page = await files.list(t, limit=2)
    assert [f.id for f in page.data] == newest_first[:2] and page.has_more
    assert (page.first_id, page.last_id) == (newest_first[0], newest_first[1])
    rest = await files.list(t, after=page.last_id, limit=10)
    assert [f.id for f in rest.data] == newest_first[2:] and not rest.has_more
    assert [f.id for f in (await files.list(t, order="asc")).data] == [f.id for f in made]
    assert [f.filename for f in (await files.list(t, purpose="fine-tune")).data] == ["f3.jsonl", "f1.jsonl"]


async def test_too_large_leaves_nothing_behind(files: FileStore, tmp_path: Path):
    t = tenant()
    with pytest.raises(FileTooLarge):
        await files.create(t, "batch", "big.jsonl", chunks_of(os.urandom(2 * 1024 * 1024)), max_bytes=1024 * 1024)
    with pytest.raises(ConnectionResetError):
        await files.create(t, "batch", "cut.jsonl", failing_after(os.urandom(300_000)), max_bytes=10**9)
    assert stored_paths(tmp_path / "objects") == []
    assert (await files.list(t)).data == []
    with pytest.raises(InvalidRequest):
        await files.create(t, "nonsense", "x", chunks_of(b"x"), max_bytes=10)


async def test_an_expired_file_is_gone(files: FileStore, tmp_path: Path):
    t = tenant()
    f = await files.put_bytes(t, "user_data", "old.txt", b"x", expires_at=int(time.time()) - 1)
    assert (await files.list(t)).data == []
    with pytest.raises(FileNotFound):
        await files.get(t, f.id)
    assert stored_paths(tmp_path / "objects") == []


async def test_bad_ids_are_not_found(files: FileStore):
    for bad in ("file-x", "file-" + "0" * 31 + ">", "*", "../etc", "file-" + "A" * 32):
        with pytest.raises(FileNotFound):
            await files.get("t", bad)


async def test_the_sweepers_never_delete_files(files: FileStore, tmp_path: Path):
    store = files.objects
    assert isinstance(store, LocalObjectStore)
    owner = tenant()
    f = await files.put_bytes(owner, "batch", "keep.jsonl", b"{}\n")

    async def orphan() -> str:
        key = upload_key(f"trsc-{uuid.uuid4().hex}", "a" * 32, "wav")
        await store.put(key, b"x")
        old = time.time() - 10 * 24 * 3600
        for path in store.root.rglob("*"):
            os.utime(path, (old, old))
        return key

    async def never_started(job_id: str) -> str:
        return MISSING

    first = await orphan()
    assert await store.sweep(3600) == 1  # the retention sweep: the orphan's job folder, not files/
    second = await orphan()
    assert await sweep_orphans(store, never_started, ttl_s=3600) == 1  # the orphaned upload only
    for key in (first, second):
        with pytest.raises(ObjectNotFound):
            await store.get(key)
    assert await files.read_all(owner, f.id) == b"{}\n"


@pytest.fixture
async def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = S3ObjectStore(f"files-{uuid.uuid4().hex[:12]}", s3_server, prefix="sy", region="us-east-1", create_bucket=True)
    yield store
    await store.aclose()


async def test_s3_streams_large_files_as_multipart_uploads(s3: S3ObjectStore, js):
    files = FileStore((await FileStore.open(js, s3)).kv, s3)
    t = tenant()
    data = os.urandom(2 * PART_BYTES + 12345)  # three parts
    f = await files.create(t, "fine-tune", "train.jsonl", chunks_of(data), max_bytes=len(data))
    client = await s3._s3()
    head = await client.head_object(Bucket=s3.bucket, Key=s3._key(object_key(t, f.id)))
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of an object assembled from 3 parts
    assert b"".join([c async for c in files.content(t, f.id)]) == data
    small = await files.put_bytes(t, "batch_output", "out.jsonl", b"{}\n")  # one plain PUT
    assert await files.read_all(t, small.id) == b"{}\n"


async def test_s3_aborts_a_failed_multipart_upload(s3: S3ObjectStore, js):
    files = FileStore((await FileStore.open(js, s3)).kv, s3)
    t = tenant()
    with pytest.raises(FileTooLarge):
        await files.create(t, "batch", "big.jsonl", chunks_of(os.urandom(PART_BYTES + 1024 * 1024)),
                           max_bytes=PART_BYTES + 1000)
    with pytest.raises(ConnectionResetError):
        await files.create(t, "batch", "cut.jsonl", failing_after(os.urandom(PART_BYTES + 10)), max_bytes=10**9)
    client = await s3._s3()
    assert (await client.list_multipart_uploads(Bucket=s3.bucket)).get("Uploads", []) == []
    assert [o async for o in s3.list_objects()] == []
    assert (await files.list(t)).data == []
