"""The catalog held in NATS KV (issue #15): compare-and-set flips, every process's view following
them, the canary split, and the per-version monitor. On a module NATS; tests/test_rollout.py has the
rest on the stack."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import msgspec
import nats
import pytest

from orchestration.model_registry import AliasConflict, CatalogSnapshot, CatalogView, ModelRegistry
from orchestration.version_stats import OutcomeRecorder, ensure_stats_stream, watch_version
from schemas.catalog import Catalog, EngineSpec, ModelEntry
from schemas.rollout import AliasRecord, FlipInput, MonitorSpec
from tests.eventually import eventually_async

BASE = Catalog(version=1, models=[ModelEntry(id="file-model", task_queue="gpu.test",
                                             engine=EngineSpec(kind="openai", url="http://127.0.0.1:1/v1"))])


def entry(model_id: str, url: str, served: str, tenant: str = "", attempts: int = 3) -> ModelEntry:
    return msgspec.convert({
        "id": model_id, "task_queue": "gpu.test", "tenant": tenant,
        "engine": {"kind": "openai", "url": url, "served_name": served},
        "timeouts": {"schedule_to_start_s": 20, "start_to_close_s": 60, "heartbeat_s": 5},
        "retry": {"initial_interval_s": 0.1, "backoff": 2.0, "maximum_interval_s": 0.3,
                  "maximum_attempts": attempts}}, ModelEntry)


async def test_a_lost_compare_and_set_race_is_refused_never_overwritten(nats_url: str):
    nc = await nats.connect(nats_url)
    registry = await ModelRegistry.open(nc.jetstream(), BASE)
    await registry.flip(FlipInput(alias="race", to="v1", expect=""))
    results = await asyncio.gather(
        *(registry.flip(FlipInput(alias="race", to=f"v{n}", expect="v1")) for n in (2, 3, 4)),
        return_exceptions=True)
    won = [r for r in results if isinstance(r, AliasRecord)]
    lost = [r for r in results if isinstance(r, AliasConflict)]
    assert len(won) == 1 and len(lost) == 2, results
    rec, _ = await registry.get_alias("race")
    assert rec.target == won[0].target and rec.previous == "v1"  # the winner's write stands
    with pytest.raises(AliasConflict):  # a stale writer is refused, whatever it wanted
        await registry.flip(FlipInput(alias="race", to="v5", expect="v1"))
    with pytest.raises(AliasConflict):  # removing it too
        await registry.flip(FlipInput(alias="race", to="", expect="v1"))
    await registry.flip(FlipInput(alias="race", to="", expect=rec.target))
    assert await registry.get_alias("race") is None
    await registry.flip(FlipInput(alias="race", to="v6", expect=""))  # and made anew
    assert (await registry.get_alias("race"))[0].target == "v6"
    await nc.close()


async def test_every_view_sees_a_flip_and_the_request_path_reads_one_snapshot(nats_url: str):
    conns = [await nats.connect(nats_url) for _ in range(3)]
    registry = await ModelRegistry.open(conns[0].jetstream(), BASE)
    views = [await CatalogView.open(nc.jetstream(), BASE) for nc in conns[1:]]  # two "processes"
    await registry.put_model(entry("snap-v1", "http://127.0.0.1:1/v1", "a"))
    await registry.put_model(entry("snap-v2", "http://127.0.0.1:1/v1", "b"))
    await registry.flip(FlipInput(alias="snap", to="snap-v1", expect=""))
    for view in views:
        await eventually_async(lambda v=view: v.get("snap") is not None and v.get("snap").id == "snap-v1")
    before = views[0].current
    await registry.flip(FlipInput(alias="snap", to="snap-v2", expect="snap-v1"))
    for view in views:
        await eventually_async(lambda v=view: v.get("snap").id == "snap-v2")
    assert before.get("snap").id == "snap-v1"  # a snapshot once read never changes under its reader
    assert views[0].get("file-model") is not None and views[0].get("nope") is None
    with pytest.raises(ValueError):  # a file model's name cannot become an alias or a dynamic model
        await registry.put_model(entry("file-model", "http://127.0.0.1:1/v1", "x"))
    for view in views:
        await view.close()
    for nc in conns:
        await nc.close()


def test_a_canary_takes_its_share_of_requests():
    snapshot = CatalogSnapshot(BASE, {m.id: m for m in (entry("c-v1", "http://h/v1", "a"), entry("c-v2", "http://h/v1", "b"))},
                               {"c": AliasRecord(target="c-v1", canary_target="c-v2", canary_percent=25)})
    served = Counter(snapshot.get("c").id for _ in range(4000))
    assert 800 < served["c-v2"] < 1200, served


async def test_the_monitor_calls_a_breach_on_the_error_rate(nats_url: str):
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stats_stream(js)
    recorder = OutcomeRecorder(nc)
    spec = MonitorSpec(window_s=5, max_error_rate=0.3, min_requests=5, poll_s=0.1)

    async def feed(ok_every: int) -> None:
        for i in range(40):
            await recorder.record("mon-v2", i % ok_every == 0, 0.01)
            await asyncio.sleep(0.01)

    feeding = asyncio.ensure_future(feed(ok_every=1))  # all fine
    assert (await watch_version(js, "mon-v2", spec, 1.0, since=time.time())).healthy
    await feeding
    since = time.time()
    feeding = asyncio.ensure_future(feed(ok_every=3))  # two in three fail
    verdict = await watch_version(js, "mon-v2", spec, 10.0, since=since)
    assert not verdict.healthy and "error rate" in verdict.reason and verdict.requests >= 5
    await feeding
    await nc.close()


async def test_a_worker_waits_a_moment_for_a_model_just_added(nats_url: str, tmp_path):
    """A proxy may resolve a new version before this worker's watcher built its adapter: the attempt
    waits for it rather than failing the job with NoAdapter; a model that never comes is still refused."""
    from orchestration.activities import InferenceActivities
    from orchestration.objectstore import LocalObjectStore
    from orchestration.worker import sync_adapters

    nc = await nats.connect(nats_url)
    registry = await ModelRegistry.open(nc.jetstream(), BASE)
    view = await CatalogView.open(nc.jetstream(), BASE)
    adapters: dict = {}
    view.on_change(lambda snapshot: sync_adapters(adapters, snapshot, ("gpu.test",)))
    activities = InferenceActivities(nc.jetstream(), adapters, objects=LocalObjectStore(tmp_path))
    waiting = asyncio.ensure_future(activities.adapter_within("late-v1", 5.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await registry.put_model(entry("late-v1", "http://127.0.0.1:1/v1", "late"))
    assert await asyncio.wait_for(waiting, 10) is adapters["late-v1"]
    assert await activities.adapter_within("never-added", 0.3) is None
    await view.close()
    await nc.close()
