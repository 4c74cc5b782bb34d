"""Beyond one machine: a 3-node NATS cluster (every stream and KV bucket with 3 replicas), its own
Temporal dev server, two proxies and two workers given all three NATS URLs. A NATS node is killed
(SIGKILL) in the middle of a streamed chat completion: the node the streaming proxy is connected to,
made the leader of the job events stream first, so both a client reconnect and a stream leader
election happen under the stream. The stream still ends with the whole text, every event once;
the job's events resume exactly from the other proxy; an RPM limit stays exact across both proxies
on the two surviving nodes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import APIError

from orchestration.streams import SETTLE_STREAM, STREAM, ensure_kv, ensure_stream
from orchestration.webhooks import SECRETS_BUCKET
from proxy.config import ProxySettings
from gatekeeping.keystore import BUCKET_KEYS, BUCKET_TENANTS
from gatekeeping.limits import BUCKET_LIMITS, BUCKET_USAGE
from switchyard.processes import ROOT, Managed, start_python, start_temporal, stop_all, wait_http
from tests.conftest import scenario
from tests.eventually import eventually, eventually_async
from tests.fakes.vllm import REPLY, FakeVLLM
from tests.jobclient import chunk_text, read_events, wait_finished
from tests.nats_cluster import NatsCluster, free_ports, make_cluster
from tests.nats_fixture import running_nats

CHAT = "/v1/chat/completions"
REPLICATED = [STREAM, SETTLE_STREAM, *(f"KV_{b}" for b in (BUCKET_TENANTS, BUCKET_KEYS, BUCKET_LIMITS,
                                                           BUCKET_USAGE, SECRETS_BUCKET))]


def test_nats_settings_are_read_once_into_the_frozen_struct():
    s = ProxySettings.from_env({"SWITCHYARD_NATS_URL": " nats://a:4222, nats://b:4222,,nats://c:4222 ",
                                "SWITCHYARD_NATS_REPLICAS": "3"})
    assert s.nats_servers == ("nats://a:4222", "nats://b:4222", "nats://c:4222") and s.nats_replicas == 3
    default = ProxySettings.from_env({})
    assert default.nats_servers == ("nats://127.0.0.1:4222",) and default.nats_replicas == 1
    with pytest.raises(AttributeError):
        s.nats_replicas = 1
    for bad in ("0", "6", "three"):
        with pytest.raises(ValueError, match="SWITCHYARD_NATS_REPLICAS"):
            ProxySettings.from_env({"SWITCHYARD_NATS_REPLICAS": bad})


async def test_replicas_a_single_node_cannot_hold_are_refused_plainly(tmp_path: Path):
    with running_nats(tmp_path) as url:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            with pytest.raises(APIError, match="replicas > 1 not supported"):
                await ensure_stream(js, replicas=3)
            with pytest.raises(APIError, match="replicas > 1 not supported"):
                await ensure_kv(js, "sy_test", replicas=3)
            await ensure_kv(js, "sy_test", replicas=1, history=1)
            assert (await js.stream_info("KV_sy_test")).config.num_replicas == 1
            await ensure_stream(js, replicas=1)
            await ensure_stream(js, replicas=1, max_age_s=3600)  # an existing stream is updated
            assert (await js.stream_info(STREAM)).config.max_age == 3600
        finally:
            await nc.close()


def nats_peer_ports(pid: int) -> set[int]:
    """The remote ports of the process's established TCP connections (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[9] in inodes and parts[3] == "01":  # ESTABLISHED
                ports.add(int(parts[2].rsplit(":", 1)[1], 16))
    return ports


def node_of(cluster: NatsCluster, proc: Managed) -> str:
    peers = nats_peer_ports(proc.proc.pid)
    names = [n.name for n in cluster.nodes if n.port in peers]
    assert len(names) == 1, f"{proc.name} is connected to {names}"
    return names[0]


async def _stream_infos(cluster: NatsCluster, names: list[str]) -> dict:
    nc = await nats.connect(servers=[n.url for n in cluster.nodes if n not in cluster.stopped])
    try:
        js = nc.jetstream()
        return {name: await js.stream_info(name) for name in names}
    finally:
        await nc.close()


async def _replicas_only_go_up(cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream()
        await ensure_stream(js, replicas=1)  # e.g. a CLI run without SWITCHYARD_NATS_REPLICAS
        await ensure_kv(js, BUCKET_KEYS, replicas=1)
        for name in (STREAM, f"KV_{BUCKET_KEYS}"):
            assert (await js.stream_info(name)).config.num_replicas == 3, name
        await ensure_kv(js, "sy_scaled", replicas=1, history=1)
        await ensure_kv(js, "sy_scaled", replicas=3, history=1)
        assert (await js.stream_info("KV_sy_scaled")).config.num_replicas == 3
    finally:
        await nc.close()


async def _move_leader(cluster: NatsCluster, stream: str, to: str, timeout: float = 15.0) -> None:
    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream()

        async def moved() -> bool:
            if (await js.stream_info(stream)).cluster.leader == to:
                return True
            try:
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                                 json.dumps({"placement": {"preferred": to}}).encode(), timeout=2)
            except Exception:
                pass
            return False

        await eventually_async(moved, timeout, interval=0.3, what=f"{stream}'s leader moving to {to}")
    finally:
        await nc.close()


async def _wait_leaders(cluster: NatsCluster, timeout: float = 30.0) -> dict:
    """Until every replicated stream has a leader among the live nodes."""
    alive = {n.name for n in cluster.nodes if n not in cluster.stopped}

    async def elected() -> dict | None:
        try:
            infos = await _stream_infos(cluster, REPLICATED)
        except Exception:  # a node's answer lost in the election: ask again
            return None
        return infos if all(i.cluster.leader in alive for i in infos.values()) else None

    return await eventually_async(elected, timeout, interval=0.25,
                                  what="every stream electing a leader on the surviving nodes")


def sse_frames(lines: Iterable[str]) -> Iterator[dict]:
    """SSE frames as they arrive (a generator over the response's lines)."""
    current: dict = {}
    for line in lines:
        if not line:
            if current:
                yield current
                current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        current[name] = value[1:] if value.startswith(" ") else value
    if current:
        yield current


def chat(base: str, key: str) -> int:
    r = httpx.post(base + CHAT, headers={"authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "fake-vllm", "messages": scenario("ok")})
    return r.status_code


def key_known_everywhere(urls: list[str], key: str, timeout: float = 30.0) -> float:
    """Seconds until every proxy accepts the key (GET /v1/models admits nothing against its limits).
    Each proxy learns keys from a KV watcher; one whose watcher lived on the killed node only
    recovers after its heartbeats are missed (about 10 s), so this is not instantaneous here."""
    start = time.monotonic()
    for url in urls:
        eventually(lambda: httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code
                   == 200, max(0.0, timeout - (time.monotonic() - start)), what=f"{url} learning the new key")
    return time.monotonic() - start


def test_a_nats_node_dies_under_a_stream(tmp_path: Path):
    began = time.monotonic()
    log_dir = tmp_path / "log"
    picked = free_ports(11)  # all different: 6 for the cluster, 5 here
    cluster = make_cluster(tmp_path, ports=picked[:6])
    fake = FakeVLLM()
    procs: list[Managed] = []
    key = "sk-sy-test-" + uuid.uuid4().hex
    ports = dict(zip(("temporal", "fake", "dead", "proxy1", "proxy2"), picked[6:]))
    dead = f"http://127.0.0.1:{ports['dead']}"
    env = {
        "SWITCHYARD_TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "SWITCHYARD_NATS_URL": cluster.env_url,
        "SWITCHYARD_NATS_REPLICAS": "3",
        "SWITCHYARD_CATALOG": str(ROOT / "tests" / "catalog.yaml"),
        "FAKE_ENGINE_URL": f"http://127.0.0.1:{ports['fake']}/v1",
        # Only fake-vllm is used: every other engine of the catalog points at a closed port.
        "SWITCHYARD_ENGINE_URL": dead + "/v1", "EMBED_ENGINE_URL": dead + "/v1", "FAKE_TGI_URL": dead,
        "FAKE_TRITON_URL": dead, "VICTIM_ENGINE_URL": dead + "/v1", "DEAD_ENGINE_PORT": str(ports["dead"]),
        "SWITCHYARD_OBJECT_DIR": str(tmp_path / "objects"),
        "SWITCHYARD_DEMO_KEY": key,
        "SWITCHYARD_QUEUES": "gpu.test",
        "SWITCHYARD_KEEPALIVE_S": "1",
        "SWITCHYARD_LOG_LEVEL": "INFO",
    }
    try:
        cluster.start()
        procs.append(start_temporal(ports["temporal"], None, log_dir))
        fake.start(ports["fake"])
        for i in (1, 2):
            procs.append(start_python(f"worker-{i}", ["worker"], log_dir, None, env))
        proxies = [start_python(f"proxy-{i}", ["proxy"], log_dir, None,
                                {**env, "SWITCHYARD_PORT": str(ports[f"proxy{i}"])}) for i in (1, 2)]
        procs.extend(proxies)
        urls = [f"http://127.0.0.1:{ports['proxy1']}", f"http://127.0.0.1:{ports['proxy2']}"]
        for proxy, url in zip(proxies, urls):
            wait_http(proxy, url + "/readyz", 60)
        for url in urls:  # the whole path works through either proxy (and the workers are polling)
            assert chat(url, key) == 200
        print(f"[{time.monotonic() - began:.1f}s] stack up")

        infos = asyncio.run(_stream_infos(cluster, REPLICATED))
        assert {name: i.config.num_replicas for name, i in infos.items()} == {name: 3 for name in REPLICATED}
        asyncio.run(_replicas_only_go_up(cluster))

        # The victim: the node proxy 1 is connected to, made the leader of the job events stream.
        victim = node_of(cluster, proxies[0])
        asyncio.run(_move_leader(cluster, STREAM, victim))

        auth = {"authorization": f"Bearer {key}"}
        frames: list[dict] = []
        killed_after = None
        with httpx.Client(timeout=60, headers=auth) as h, \
                h.stream("POST", urls[0] + CHAT, json={"model": "fake-vllm", "messages": scenario("slow"),
                                                       "stream": True,
                                                       "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200
            job_id = r.headers["x-job-id"]
            for frame in sse_frames(r.iter_lines()):
                frames.append(frame)
                if killed_after is None and len(frames) == 2:  # the role chunk and the first word
                    cluster.kill(victim)
                    killed_after = len(frames)
        assert killed_after == 2 and len(frames) > 4
        print(f"[{time.monotonic() - began:.1f}s] stream done, {victim} killed after frame 2 of {len(frames)}")

        # The stream ended normally with the whole text, each frame once and in order.
        assert frames[-1]["data"] == "[DONE]"
        payloads = [json.loads(f["data"]) for f in frames[:-1]]
        assert not [p for p in payloads if "error" in p], payloads
        text = "".join((c["delta"].get("content") or "") for p in payloads for c in p["choices"])
        assert text == REPLY
        assert payloads[-1]["usage"]["completion_tokens"] == len(REPLY.split())
        ids = [int(f["id"]) for f in frames]
        assert ids == sorted(set(ids))

        # Resumed from proxy 2 (on a surviving node): the stored events, exactly what follows any cut.
        with httpx.Client(base_url=urls[1], headers=auth, timeout=60) as h2:
            job = wait_finished(h2, job_id)
            assert job["status"] == "succeeded"
            full = read_events(h2, job_id)
            print(f"[{time.monotonic() - began:.1f}s] job: attempts {job.get('attempts')}, events "
                  f"{[e.get('event', 'chunk') for e in full]}")
            assert full[-1]["event"] == "job.succeeded" and chunk_text(full) == REPLY
            full_ids = [int(e["id"]) for e in full]
            assert full_ids == sorted(set(full_ids))
            # What was stored is what the client was sent: every frame of the chat stream (but
            # [DONE]) is the jobs stream's frame of the same id, byte for byte.
            stored = {int(e["id"]): e["data"] for e in full}
            assert {int(f["id"]): f["data"] for f in frames[:-1]}.items() <= stored.items()
            rng = random.Random()
            for cut in rng.sample(range(len(full) - 1), min(3, len(full) - 1)):
                after = full[cut]["id"]
                assert read_events(h2, job_id, after) == [e for e in full if int(e["id"]) > int(after)], after
            cut = rng.choice(ids[:-1])  # a cut among the chat stream's own ids
            assert read_events(h2, job_id, str(cut)) == [e for e in full if int(e["id"]) > cut], cut

        # Limits stay exact across both proxies, on the two surviving nodes.
        asyncio.run(_wait_leaders(cluster))
        print(f"[{time.monotonic() - began:.1f}s] every stream has a leader again")
        with httpx.Client(base_url=urls[0], headers=auth, timeout=30) as a:
            tenant = f"t-{uuid.uuid4().hex[:10]}"
            assert a.post("/admin/tenants", json={"id": tenant, "limits": {"rpm": 6}}).status_code == 201
            r = a.post("/admin/keys", json={"tenant": tenant})
            assert r.status_code == 201
            limited = r.json()["key"]
        known = key_known_everywhere(urls, limited)
        print(f"[{time.monotonic() - began:.1f}s] the new key reached both proxies in {known:.1f}s")
        targets = urls * 9  # a 3x burst split across the two proxies
        with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
            codes = list(pool.map(lambda base: chat(base, limited), targets))
        assert codes.count(200) == 6 and codes.count(429) == 12, codes
    finally:
        stopped_at = time.monotonic()
        needed_kill = stop_all(procs, grace=5.0)
        print(f"stopped in {time.monotonic() - stopped_at:.1f}s; needed SIGKILL: {needed_kill}; "
              f"test took {time.monotonic() - began:.1f}s")
        fake.stop()
        cluster.stop()
