"""Hot swap figures (issue #15): alias flip -> first request served by the new version on each of two
proxy processes; the request-path lookup cost; failed requests under c=16 streaming load during a swap
and during a rollback; SLO breach -> completed automatic rollback.

Starts a private stack (Temporal dev server, NATS, one worker, two proxies) with two fake vLLM engines
in this process (old version: "one ...", new version: "two ...": which version served a request shows
in its `model` and its text). Writes benchmarks/results/rollout.json.

    .venv/bin/python benchmarks/rollout.py [--flips 5] [--load-s 12]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

import httpx
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration.codec import new_key_entry  # noqa: E402
from orchestration.model_registry import CatalogView, ModelRegistry  # noqa: E402
from orchestration.catalog import load_catalog  # noqa: E402
from schemas.catalog import ModelEntry  # noqa: E402
from schemas.rollout import FlipInput  # noqa: E402
from switchyard.processes import ROOT, free_port, start_nats, start_python, start_temporal, stop_all, wait_http  # noqa: E402
from tests.fakes.vllm import FakeVLLM  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rollout.json"
CATALOG = """version: 1
models:
  - id: bench-placeholder
    engine: {kind: openai, url: "http://127.0.0.1:9/v1"}
    task_queue: gpu.bench
"""


def log(msg: str) -> None:
    print(f"[rollout-bench] {msg}", file=sys.stderr, flush=True)


def entry(model_id: str, url: str, served: str) -> ModelEntry:
    import msgspec

    return msgspec.convert({"id": model_id, "task_queue": "gpu.bench", "max_concurrency": 32,
                            "engine": {"kind": "openai", "url": url, "served_name": served},
                            "timeouts": {"schedule_to_start_s": 20, "start_to_close_s": 60, "heartbeat_s": 5},
                            "retry": {"initial_interval_s": 0.1, "backoff": 2.0, "maximum_interval_s": 0.3,
                                      "maximum_attempts": 1}}, ModelEntry)


def chat_body(model: str, stream: bool = False) -> dict:
    return {"model": model, "stream": stream,
            "messages": [{"role": "user", "content": f"scenario=ok;nonce={uuid.uuid4().hex}"}]}


async def served_by(http: httpx.AsyncClient, proxy: str, model: str) -> str:
    r = await http.post(proxy + "/v1/chat/completions", json=chat_body(model))
    r.raise_for_status()
    return str(r.json()["model"])


async def flip_to_first_served(registry: ModelRegistry, http: httpx.AsyncClient, proxies: list[str], alias: str,
                               frm: str, to: str, watch: CatalogView | None = None) -> dict[str, float]:
    """Seconds from the CAS write to the first response of each proxy served by `to` (each proxy
    asked back to back, one request at a time)."""
    firsts: dict[str, float] = {}
    flipped = asyncio.Event()
    seen = asyncio.ensure_future(watch.changed.wait()) if watch is not None else None
    t_flip = 0.0

    async def ask(proxy: str) -> None:
        while True:
            sent = time.monotonic()
            model = await served_by(http, proxy, alias)
            if flipped.is_set() and model == to:
                firsts[proxy] = time.monotonic() - t_flip
                firsts[proxy + " (request sent)"] = max(0.0, sent - t_flip)
                return

    askers = [asyncio.ensure_future(ask(p)) for p in proxies]
    await asyncio.sleep(0.3)
    t_flip = time.monotonic()
    await registry.flip(FlipInput(alias=alias, to=to, expect=frm))
    flipped.set()
    if seen is not None:
        await asyncio.wait_for(seen, 10)
        firsts["watch"] = time.monotonic() - t_flip
    await asyncio.wait_for(asyncio.gather(*askers), 30)
    return firsts


async def stream_load(proxies: list[str], key: str, alias: str, seconds: float, at: dict[float, object]) -> dict:
    """16 streaming clients (8 per proxy) for `seconds`; the callables in `at` run at their offsets.
    Requests count in the phase (before, swap, rollback) they started in."""
    failures: list[tuple[float, str]] = []
    served: dict[str, int] = {}
    started: list[float] = []
    t0 = time.monotonic()
    stop = t0 + seconds
    headers = {"authorization": f"Bearer {key}"}

    async def client(proxy: str) -> None:
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            while time.monotonic() < stop:
                begun = time.monotonic() - t0
                started.append(begun)
                try:
                    async with http.stream("POST", proxy + "/v1/chat/completions", json=chat_body(alias, True)) as r:
                        if r.status_code != 200:
                            failures.append((begun, f"HTTP {r.status_code}"))
                            await r.aread()
                            continue
                        model, done = "", False
                        async for line in r.aiter_lines():
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: "):
                                model = json.loads(line[6:]).get("model", model)
                        if not done:
                            failures.append((begun, "stream ended without [DONE]"))
                        served[model] = served.get(model, 0) + 1
                except httpx.HTTPError as exc:
                    failures.append((begun, type(exc).__name__))

    async def schedule() -> None:
        for offset, action in sorted(at.items()):
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            await action()  # type: ignore[operator]

    await asyncio.gather(schedule(), *(client(proxies[i % 2]) for i in range(16)))
    marks = [0.0, *sorted(at), float("inf")]
    phases = {}
    for name, lo, hi in zip(("before", "swap", "rollback"), marks, marks[1:]):
        phases[name] = {"requests": sum(1 for b in started if lo <= b < hi),
                        "failed": sum(1 for b, _ in failures if lo <= b < hi)}
    return {"concurrency": 16, "seconds": seconds, "requests": len(started), "failed": len(failures),
            "phases": phases, "failures": [f for _, f in failures[:10]], "served_by": served}


def lookup_cost(base) -> dict[str, float]:
    """The request path's part of a swap: one attribute read of the snapshot and a dict lookup."""
    from orchestration.model_registry import CatalogSnapshot
    from schemas.rollout import AliasRecord

    models = {f"m{i}": entry(f"m{i}", "http://127.0.0.1:9/v1", "x") for i in range(200)}
    aliases = {f"a{i}": AliasRecord(target=f"m{i}") for i in range(200)}
    view = CatalogView(base)
    view.current = CatalogSnapshot(base, models, aliases)
    canary = CatalogSnapshot(base, models, {"c": AliasRecord(target="m1", canary_target="m2", canary_percent=10)})
    n = 200_000
    plain = min(timeit.repeat(lambda: view.get("a150"), number=n, repeat=5)) / n
    with_canary = min(timeit.repeat(lambda: canary.get("c"), number=n, repeat=5)) / n
    build = min(timeit.repeat(lambda: CatalogSnapshot(base, models, aliases), number=200, repeat=3)) / 200
    return {"alias_lookup_us": round(plain * 1e6, 3), "canary_lookup_us": round(with_canary * 1e6, 3),
            "snapshot_rebuild_us_400_names": round(build * 1e6, 1),
            "note": "the view's get(): one read of `current` and dict lookups; the watcher builds the "
                    "snapshot off the request path"}


async def bench(args: argparse.Namespace, env: dict[str, str], proxies: list[str], key: str,
                old: FakeVLLM, new: FakeVLLM, base) -> dict:
    nc = await nats.connect(env["SWITCHYARD_NATS_URL"])
    registry = await ModelRegistry.open(nc.jetstream(), base)
    url = {id(f): f"http://127.0.0.1:{f.server.config.port}/v1" for f in (old, new)}  # type: ignore[union-attr]
    alias, v1, v2 = "bench-chat", "bench-chat-v1", "bench-chat-v2"
    await registry.put_model(entry(v1, url[id(old)], "v-old"))
    await registry.put_model(entry(v2, url[id(new)], "v-new"))
    await registry.flip(FlipInput(alias=alias, to=v1, expect=""))
    out: dict = {}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
        for p in proxies:  # both proxies see the alias, the worker has both adapters
            for model in (v1, v2, alias):
                for _ in range(100):
                    try:
                        await served_by(http, p, model)
                        break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.1)
        rtt = []
        for _ in range(20):
            t = time.monotonic()
            await served_by(http, proxies[0], alias)
            rtt.append(time.monotonic() - t)
        out["request_latency_ms_median"] = round(statistics.median(rtt) * 1000, 1)
        flips = []
        current, other = v1, v2
        watch = await CatalogView.open(nc.jetstream(), base)  # a third watcher, in this process
        for _ in range(args.flips):
            flips.append(await flip_to_first_served(registry, http, proxies, alias, current, other, watch))
            current, other = other, current
        await watch.close()
        out["flip_to_kv_watcher_ms_median"] = round(statistics.median(f["watch"] for f in flips) * 1000, 2)
        out["flip_to_first_served_s"] = {
            f"proxy{i + 1}": {"median": round(statistics.median(f[p] for f in flips), 4),
                              "max": round(max(f[p] for f in flips), 4),
                              "request_sent_after_flip_median": round(statistics.median(f[p + " (request sent)"]
                                                                                        for f in flips), 4)}
            for i, p in enumerate(proxies)}
        if current != v1:
            await registry.flip(FlipInput(alias=alias, to=v1, expect=current))

        async def swap() -> None:
            await registry.flip(FlipInput(alias=alias, to=v2, expect=v1))

        async def roll_back() -> None:
            r = await http.post(proxies[0] + f"/admin/models/{alias}/rollback", json={"reason": "bench"})
            r.raise_for_status()

        third = args.load_s / 3
        out["c16_swap_and_rollback"] = await stream_load(proxies, key, alias, args.load_s,
                                                         {third: swap, 2 * third: roll_back})
        out["breach"] = await breach(http, proxies[0], alias, v1, v2, new)
    await nc.close()
    return out


async def breach(http: httpx.AsyncClient, proxy: str, alias: str, v1: str, v2: str, new: FakeVLLM) -> dict:
    monitor = {"duration_s": 300, "window_s": 5, "max_error_rate": 0.2, "min_requests": 3, "poll_s": 0.2}
    r = await http.post(proxy + f"/admin/models/{alias}/rollouts", json={"to": v2, "monitor": monitor})
    r.raise_for_status()
    while (await http.get(proxy + f"/admin/models/{alias}")).json()["target"] != v2:
        await asyncio.sleep(0.05)
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            try:
                await http.post(proxy + "/v1/chat/completions", json=chat_body(alias))
            except httpx.HTTPError:
                pass

    load = [asyncio.ensure_future(traffic()) for _ in range(4)]
    await asyncio.sleep(1)
    new.failing = True
    t_breach = time.monotonic()
    while (state := (await http.get(proxy + f"/admin/models/{alias}")).json())["target"] != v1:
        await asyncio.sleep(0.05)
    took = time.monotonic() - t_breach
    stop.set()
    new.failing = False
    await asyncio.gather(*load)
    while (state := (await http.get(proxy + f"/admin/models/{alias}")).json()).get("rollout", {}).get("status") == "running":
        await asyncio.sleep(0.2)
    result = state["rollout"].get("result", {})
    return {"engine_failing_to_alias_back_s": round(took, 3),
            "detected_to_rolled_back_s": round(result.get("breach_to_rollback_s", -1), 3),
            "reason": state.get("reason"), "rollout_status": result.get("status"),
            "monitor": monitor}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flips", type=int, default=5)
    parser.add_argument("--load-s", type=float, default=12.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-rollout-"))
    log_dir = tmp / "log"
    (tmp / "catalog.yaml").write_text(CATALOG)
    base = load_catalog(tmp / "catalog.yaml")
    key = "sk-bench-" + os.urandom(8).hex()
    tport, nport = free_port(), free_port()
    common = {"SWITCHYARD_TEMPORAL_ADDRESS": f"127.0.0.1:{tport}", "SWITCHYARD_NATS_URL": f"nats://127.0.0.1:{nport}",
              "SWITCHYARD_DEMO_KEY": key, "SWITCHYARD_PAYLOAD_KEYS": new_key_entry("bench"),
              "SWITCHYARD_CATALOG": str(tmp / "catalog.yaml"), "SWITCHYARD_LOG_LEVEL": "WARNING",
              "SWITCHYARD_QUEUES": "gpu.bench", "SWITCHYARD_OBJECT_DIR": str(tmp / "objects")}
    old, new = FakeVLLM(), FakeVLLM()
    old.replies["v-old"], new.replies["v-new"] = "one one one", "two two two"
    started = []
    try:
        old.start(free_port())
        new.start(free_port())
        started.append(start_temporal(tport, tmp / "temporal.db", log_dir))
        started.append(start_nats(nport, tmp / "js", log_dir))
        started.append(start_python("worker", ["worker"], log_dir, None, common))
        proxies = []
        for name in ("proxy1", "proxy2"):
            port = free_port()
            proc = start_python(name, ["proxy"], log_dir, None, {**common, "SWITCHYARD_PORT": str(port)})
            started.append(proc)
            proxies.append(f"http://127.0.0.1:{port}")
            wait_http(proc, proxies[-1] + "/healthz", 60)
        log("stack up")
        measured = asyncio.run(bench(args, common, proxies, key, old, new, base))
        result = {"benchmark": "rollout", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
                  "setup": "Temporal dev server, NATS, 1 worker, 2 proxy processes, 2 fake vLLM engines (in the "
                           "benchmark's process), all on one host",
                  "lookup": lookup_cost(base), **measured}
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        stop_all(started)
        old.stop()
        new.stop()


if __name__ == "__main__":
    sys.exit(main())
