"""Switchyard side by side with LiteLLM, over one paced mock engine.

Starts a mock OpenAI engine of its own (20 ms to the first token, then a token every 10 ms, 64
tokens), LiteLLM's proxy (pinned version, in its own venv under .cache/bench/litellm-venv, created
on the first run) and a private Switchyard stack (Temporal dev server, NATS JetStream, one worker,
one proxy), all on free 127.0.0.1 ports. Each proxy, with every process it needs, is pinned to one
CPU; the mock and this load generator share the other. It then sends the same streamed chat request
(`stream_options.include_usage`) at concurrency 1, 16 and 64 to the mock directly and through each
proxy, in alternating rounds (direct, litellm, switchyard, direct, ...). Optional phases: a
sustained c=64 load through Switchyard with leak checks (JetStream consumers, NATS subscriptions,
RSS, open files) and 1,000 concurrent streams through each proxy process.

    .venv/bin/python benchmarks/peer.py --quick            # smoke run (~2 min; ~5 on a busy host)
    .venv/bin/python benchmarks/peer.py                    # full run (~25 min)
    .venv/bin/python benchmarks/peer.py --sustained 0 --no-concurrent-1000   # latency rounds only

Writes benchmarks/results/peer-<UTC timestamp>.json and prints a Markdown summary, which also
replaces the block between `<!-- peer:begin -->` and `<!-- peer:end -->` in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import datetime as _dt
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

try:
    import msgspec

    _loads = msgspec.json.decode
    _dumps = msgspec.json.encode
except ImportError:  # pragma: no cover
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


# =========================================================================== the mock engine
#
# Runs as its own process (`peer.py _mock ...`) so that it can be pinned, and so that its CPU time
# can be read apart from the load generator's. A bare asyncio.Protocol HTTP/1.1 server (keep-alive,
# Content-Length request bodies, chunked responses) with uvloop: a stream is a chain of loop.call_at
# callbacks on an absolute schedule (t0 + ttft + i * itl), each writing one pre-encoded chunk.


class Schedule:
    def __init__(self, spec: str):
        """`name:ttft_ms:itl_ms:tokens`."""
        name, ttft, itl, tokens = spec.split(":")
        self.name = name
        self.ttft = float(ttft) / 1000.0
        self.itl = float(itl) / 1000.0
        self.tokens = int(tokens)
        created = int(time.time())
        head = {"id": f"chatcmpl-{name}", "object": "chat.completion.chunk", "created": created, "model": name}
        self.head = head

        def chunk(choices: list, **extra: Any) -> bytes:
            return _http_chunk(b"data: " + _dumps({**head, "choices": choices, **extra}) + b"\n\n")

        self.role = chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None}])
        self.token_text = [f" t{i}" for i in range(self.tokens)]
        self.token_chunks = [chunk([{"index": 0, "delta": {"content": t}, "logprobs": None,
                                     "finish_reason": None}]) for t in self.token_text]
        self.finish = {fr: chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": fr}])
                       for fr in ("stop", "length")}
        self.done = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


class MockEngine:
    def __init__(self, schedules: list[Schedule]):
        self.schedules = {s.name: s for s in schedules}
        self.default = schedules[0]
        self.active = 0
        self.peak_active = 0
        self.started = 0
        self.completed = 0
        self.aborted = 0

    def stats(self) -> dict:
        return {"active": self.active, "peak_active": self.peak_active, "streams_started": self.started,
                "streams_completed": self.completed, "streams_aborted": self.aborted}


class MockConn(asyncio.Protocol):
    def __init__(self, engine: MockEngine):
        self.e = engine
        self.loop = asyncio.get_running_loop()
        self.t: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.keep = True
        self.closed = False
        self.handle: asyncio.TimerHandle | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.streaming:
            self.streaming = False
            self.e.active -= 1
            self.e.aborted += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        buf = self.buf
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            if len(buf) > 65536:
                self.t.close()
            return
        lines = bytes(buf[:i]).decode("latin-1").split("\r\n")
        try:
            method, path, version = lines[0].split(" ", 2)
        except ValueError:
            self.t.close()
            return
        clen = 0
        keep = version == "HTTP/1.1"
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                clen = int(v.strip())
            elif k == "connection":
                v = v.strip().lower()
                keep = False if v == "close" else (True if v == "keep-alive" else keep)
        if len(buf) < i + 4 + clen:
            return
        body = bytes(buf[i + 4:i + 4 + clen])
        del buf[:i + 4 + clen]
        self.keep = keep
        self.busy = True
        try:
            self._dispatch(method, path.split("?", 1)[0], path, body)
        except Exception as exc:  # a bad request must not kill the server
            self._respond(400, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "invalid_request"}})

    def _respond(self, status: int, obj: Any) -> None:
        body = _dumps(obj)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        self.t.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (status, reason.encode(), len(body), body))
        self._finish()

    def _finish(self) -> None:
        self.busy = False
        if self.closed:
            return
        if not self.keep:
            self.t.close()
        elif self.buf:
            self._next()

    def _dispatch(self, method: str, path: str, full_path: str, body: bytes) -> None:
        e = self.e
        if method == "GET" and path == "/health":
            return self._respond(200, {"status": "ok"})
        if method == "GET" and path in ("/v1/models", "/models"):
            return self._respond(200, {"object": "list", "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "mock"} for n in e.schedules]})
        if method == "GET" and path == "/stats":
            out = e.stats()
            if "reset" in full_path:
                e.peak_active = e.active
            return self._respond(200, out)
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            req = _loads(body)
            s = e.schedules.get(req.get("model"), e.default)
            max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
            n = min(s.tokens, int(max_tokens)) if max_tokens else s.tokens
            n = max(n, 1)
            finish = "length" if max_tokens and int(max_tokens) <= s.tokens else "stop"
            prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in req.get("messages") or [])
            t0 = self.loop.time()
            if req.get("stream"):
                usage = bool((req.get("stream_options") or {}).get("include_usage"))
                self.t.write(SSE_HEAD)
                self.streaming = True
                e.active += 1
                e.started += 1
                if e.active > e.peak_active:
                    e.peak_active = e.active
                self.handle = self.loop.call_at(t0 + s.ttft, self._tick, s, t0, 0, n, finish, usage, prompt_tokens)
            else:
                self.handle = self.loop.call_at(t0 + s.ttft + (n - 1) * s.itl, self._whole, s, n, finish,
                                                prompt_tokens)
            return None
        return self._respond(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})

    def _tick(self, s: Schedule, t0: float, k: int, n: int, finish: str, usage: bool, prompt: int) -> None:
        self.handle = None
        if self.closed:
            return
        out = s.token_chunks[k] if k else s.role + s.token_chunks[0]
        k += 1
        if k < n:
            self.t.write(out)
            self.handle = self.loop.call_at(t0 + s.ttft + k * s.itl, self._tick, s, t0, k, n, finish, usage, prompt)
            return
        parts = [out, s.finish[finish]]
        if usage:
            parts.append(_http_chunk(b"data: " + _dumps({**s.head, "choices": [], "usage": {
                "prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}}) + b"\n\n"))
        parts.append(s.done)
        self.t.write(b"".join(parts))
        self.streaming = False
        self.e.active -= 1
        self.e.completed += 1
        self._finish()

    def _whole(self, s: Schedule, n: int, finish: str, prompt: int) -> None:
        self.handle = None
        if self.closed:
            return
        self._respond(200, {"id": f"chatcmpl-{s.name}", "object": "chat.completion", "created": s.head["created"],
                            "model": s.name, "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                                                          "message": {"role": "assistant",
                                                                      "content": "".join(s.token_text[:n])}}],
                            "usage": {"prompt_tokens": prompt, "completion_tokens": n,
                                      "total_tokens": prompt + n}})


def mock_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="peer.py _mock", description="the paced mock OpenAI engine")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", action="append", required=True, help="name:ttft_ms:itl_ms:tokens (first: default)")
    args = ap.parse_args(argv)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    engine = MockEngine([Schedule(m) for m in args.model])
    server = loop.run_until_complete(loop.create_server(lambda: MockConn(engine), args.host, args.port,
                                                        backlog=4096, reuse_address=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print(f"mock engine on {args.host}:{args.port}: " + ", ".join(args.model), flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_mock":
    sys.exit(mock_main(sys.argv[2:]))


# =========================================================================== the benchmark

for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from chat_latency import NoiseWatch, clean_up, event_loop_runner, log, machine_info, summary  # noqa: E402

from orchestration.codec import new_key_entry  # noqa: E402
from switchyard.processes import (  # noqa: E402
    Managed,
    free_port,
    spawn,
    start_python,
    start_temporal,
    tool,
    wait_http,
    wait_port,
)

LITELLM_VERSION = "1.106.2"
LITELLM_UPSTREAM_CONNECTIONS = 2000
LITELLM_VENV = ROOT / ".cache" / "bench" / "litellm-venv"
RESULTS_DIR = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- peer:begin -->", "<!-- peer:end -->"
MODEL, SLOW_MODEL = "mock", "mock-slow"
TARGETS = ("direct", "litellm", "switchyard")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the load generator
#
# A bare asyncio.Protocol HTTP/1.1 client: keep-alive connection pool per target, chunked /
# Content-Length / close-delimited bodies, SSE parsed by line; every read is stamped with
# perf_counter() as it arrives. Lighter than httpx, since it shares a CPU with the mock.


class Rec:
    """One streamed request. `times` holds one arrival time per token: a content chunk carrying k of
    the mock's tokens (" t<i>" each; a proxy may coalesce them) adds k equal times."""

    __slots__ = ("t0", "t_headers", "status", "times", "chunks", "usage_tokens", "done", "error", "t_end",
                 "err_body")

    def __init__(self) -> None:
        self.t0 = 0.0
        self.t_headers: float | None = None
        self.status = 0
        self.times: list[float] = []
        self.chunks = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.error: str | None = None
        self.t_end: float | None = None
        self.err_body = bytearray()

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None and bool(self.times)

    def failure(self) -> str:
        if self.error:
            return self.error
        if self.status != 200:
            return f"HTTP {self.status}: {bytes(self.err_body[:160]).decode('utf-8', 'replace')}"
        if not self.done:
            return "stream ended without [DONE]"
        return "no content chunk"


class ClientConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.rec: Rec | None = None
        self.fut: asyncio.Future | None = None
        self.buf = bytearray()
        self.sse = bytearray()
        self.state = 0
        self.remaining = 0
        self.keep = True
        self.got_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            if self.state == 5:
                self._complete()
            else:
                self.rec.error = "connection lost" + (f": {exc}" if exc else "")
                self.fut.set_result(False)

    def send(self, request: bytes, rec: Rec) -> asyncio.Future:
        self.rec = rec
        self.fut = asyncio.get_running_loop().create_future()
        self.buf.clear()
        self.sse.clear()
        self.state = 0
        self.keep = True
        self.got_bytes = False
        rec.t0 = time.perf_counter()
        self.transport.write(request)
        return self.fut

    def reusable(self) -> bool:
        return self.keep and not self.closed and self.state == 7

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.fut is None or self.fut.done():
            return
        self.got_bytes = True
        buf = self.buf
        buf += data
        rec = self.rec
        while True:
            st = self.state
            if st == 0:  # status line and headers
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                lines = bytes(buf[:i]).decode("latin-1").split("\r\n")
                del buf[:i + 4]
                rec.status = int(lines[0].split(" ", 2)[1])
                rec.t_headers = now - rec.t0
                chunked, clen = False, None
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    k = k.strip().lower()
                    if k == "transfer-encoding" and "chunked" in v.lower():
                        chunked = True
                    elif k == "content-length":
                        clen = int(v.strip())
                    elif k == "connection" and v.strip().lower() == "close":
                        self.keep = False
                if chunked:
                    self.state = 1
                elif clen is not None:
                    self.state, self.remaining = 4, clen
                    if clen == 0:
                        return self._complete()
                else:
                    self.state, self.keep = 5, False
            elif st == 1:  # chunk size line
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
                del buf[:i + 2]
                if size == 0:
                    self.state = 3
                else:
                    self.state, self.remaining = 2, size
            elif st == 2:  # chunk data
                if not buf:
                    return
                n = min(self.remaining, len(buf))
                self._body(buf[:n], now)
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    self.state = 6
            elif st == 6:  # CRLF after chunk data
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = 1
            elif st == 3:  # trailers, up to an empty line
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                del buf[:i + 2]
                if i == 0:
                    return self._complete()
            elif st == 4:  # Content-Length body
                n = min(self.remaining, len(buf))
                self._body(buf[:n], now)
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    return self._complete()
                return
            elif st == 5:  # body until the connection closes
                self._body(buf, now)
                buf.clear()
                return
            else:
                return

    def _body(self, piece: bytearray, now: float) -> None:
        rec = self.rec
        if rec.status != 200:
            if len(rec.err_body) < 4096:
                rec.err_body += piece
            return
        sse = self.sse
        sse += piece
        while True:
            j = sse.find(b"\n")
            if j < 0:
                return
            line = bytes(sse[:j])
            del sse[:j + 1]
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                rec.done = True
                continue
            try:
                obj = _loads(payload)
            except Exception:
                rec.error = rec.error or f"undecodable chunk: {payload[:80]!r}"
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):
                rec.error = rec.error or f"error event: {str(obj['error'])[:160]}"
                continue
            choices = obj.get("choices")
            if choices:
                delta = choices[0].get("delta") or {}
                content = delta.get("content")
                if content:
                    rec.chunks += 1
                    k = content.count(" t")
                    if k <= 1:
                        rec.times.append(now)
                    else:
                        rec.times.extend([now] * k)
            usage = obj.get("usage")
            if usage:
                rec.usage_tokens = usage.get("completion_tokens")

    def _complete(self) -> None:
        self.state = 7
        self.rec.t_end = time.perf_counter()
        if not self.fut.done():
            self.fut.set_result(True)


class Target:
    def __init__(self, name: str, port: int, model: str, max_tokens: int, key: str | None = None,
                 prompt: str = "Say hello."):
        self.name = name
        self.port = port
        body = _dumps({"model": model, "stream": True, "stream_options": {"include_usage": True},
                       "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]})
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.request_bytes = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                              f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
                              f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.idle: list[ClientConn] = []
        self.opened = 0
        self.live: set[ClientConn] | None = None  # connections with a request in flight, when tracked

    async def _acquire(self) -> tuple[ClientConn, bool]:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(ClientConn, "127.0.0.1", self.port)
        self.opened += 1
        return conn, False

    async def request(self, timeout: float) -> Rec:
        rec = Rec()
        for attempt in (0, 1):
            try:
                conn, reused = await self._acquire()
            except OSError as exc:
                rec.t0 = time.perf_counter()
                rec.error = f"connect: {exc}"
                return rec
            fut = conn.send(self.request_bytes, rec)
            live = self.live
            if live is not None:
                live.add(conn)
            try:
                async with asyncio.timeout(timeout):
                    await fut
            except TimeoutError:
                rec.error = f"timeout after {timeout:.0f}s"
                conn.transport.abort()
                return rec
            finally:
                if live is not None:
                    live.discard(conn)
            if conn.reusable():
                self.idle.append(conn)
            elif not conn.closed:
                conn.transport.close()
            # A keep-alive connection the server closed just as we sent: try once on a fresh one.
            if reused and attempt == 0 and not conn.got_bytes and rec.error and rec.error.startswith("connection lost"):
                rec = Rec()
                continue
            return rec
        return rec

    def close(self) -> None:
        for conn in self.idle:
            if not conn.closed:
                conn.transport.close()
        self.idle.clear()


async def closed_loop(target: Target, concurrency: int, duration: float, timeout: float,
                      keep: list[Rec] | None = None, sink: Any = None) -> tuple[list[Rec], float]:
    """`concurrency` clients, each sending its next request as soon as the last one ends, until
    `duration` is up; requests in flight then are finished and counted."""
    records: list[Rec] = [] if keep is None else keep
    t_start = time.perf_counter()
    deadline = t_start + duration

    async def client() -> None:
        while time.perf_counter() < deadline:
            rec = await target.request(timeout)
            if sink is not None:
                sink(rec)
            else:
                records.append(rec)
            if not rec.ok:
                await asyncio.sleep(0.05)  # no hot loop on a failing target

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return records, time.perf_counter() - t_start


# --------------------------------------------------------------------------- stats over records


class Agg:
    """Streams of one target at one concurrency, over all its rounds."""

    def __init__(self) -> None:
        self.ttft = array.array("d")
        self.itl = array.array("d")
        self.total = array.array("d")
        self.tpot = array.array("d")
        self.max_gap = array.array("d")
        self.requests = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.chunks = 0
        self.tokens = 0
        self.usage_missing = 0
        self.usage_tokens = 0
        self.elapsed = 0.0
        self.cpu: dict[str, float] = {}

    def add(self, rec: Rec) -> None:
        self.requests += 1
        if not rec.ok:
            err = rec.failure()[:160]
            self.errors[err] = self.errors.get(err, 0) + 1
            return
        self.ok += 1
        t = rec.times
        self.ttft.append(t[0] - rec.t0)
        self.itl.extend(b - a for a, b in zip(t, t[1:]))
        self.total.append(rec.t_end - rec.t0)
        if len(t) > 1:
            self.tpot.append((t[-1] - t[0]) / (len(t) - 1))
            self.max_gap.append(max(b - a for a, b in zip(t, t[1:])))
        self.chunks += rec.chunks
        self.tokens += len(t)
        if rec.usage_tokens is None:
            self.usage_missing += 1
        else:
            self.usage_tokens += rec.usage_tokens

    def report(self) -> dict:
        n_err = self.requests - self.ok
        cpu_ms = {k: round(v * 1000.0 / self.ok, 3) if self.ok else None for k, v in self.cpu.items()}
        return {
            "requests": self.requests, "ok": self.ok, "errors": n_err,
            "error_kinds": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])[:5]),
            "req_per_s": round(self.ok / self.elapsed, 2) if self.elapsed else None,
            "elapsed_s": round(self.elapsed, 2),
            "ttft_ms": summary(list(self.ttft)),
            "itl_ms": summary(list(self.itl)),
            "tpot_ms": summary(list(self.tpot)),
            "max_gap_ms": summary(list(self.max_gap)),
            "total_ms": summary(list(self.total)),
            "content_chunks_mean": round(self.chunks / self.ok, 2) if self.ok else None,
            "tokens_seen_mean": round(self.tokens / self.ok, 2) if self.ok else None,
            "completion_tokens_mean": (round(self.usage_tokens / (self.ok - self.usage_missing), 2)
                                       if self.ok > self.usage_missing else None),
            "usage_missing": self.usage_missing,
            "cpu_ms_per_stream": cpu_ms,
            "cpu_s": {k: round(v, 3) for k, v in self.cpu.items()},
        }


def added(direct: dict, proxy: dict) -> dict:
    def diff(metric: str, stat: str) -> float | None:
        a, b = direct[metric].get(stat), proxy[metric].get(stat)
        return None if a is None or b is None else round(b - a, 2)

    return {"ttft_p50_ms": diff("ttft_ms", "p50"), "ttft_p99_ms": diff("ttft_ms", "p99"),
            "itl_p50_ms": diff("itl_ms", "p50"), "itl_p99_ms": diff("itl_ms", "p99"),
            "tpot_p50_ms": diff("tpot_ms", "p50"), "total_p50_ms": diff("total_ms", "p50")}


# --------------------------------------------------------------------------- processes


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = _children_map() if kids is None else kids
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime (fields 14, 15)
    except (OSError, ValueError, IndexError):
        return 0.0


class Group:
    """The processes of one side: {name: root pid}; each name's CPU counts its whole process tree,
    except the names in `alone` (this process: its children are the servers under test)."""

    def __init__(self, procs: dict[str, int], alone: tuple[str, ...] = ()):
        self.procs = procs
        self.alone = alone

    def cpu(self) -> dict[str, float]:
        kids = _children_map()
        return {name: (cpu_seconds(pid) if name in self.alone else sum(cpu_seconds(p) for p in tree(pid, kids)))
                for name, pid in self.procs.items()}


def proc_status(pid: int) -> dict:
    out: dict[str, Any] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
        out["open_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError as exc:
        out["error"] = str(exc)
    return {"rss_mib": round(out["VmRSS"] / 1024, 1) if "VmRSS" in out else None,
            "hwm_mib": round(out["VmHWM"] / 1024, 1) if "VmHWM" in out else None,
            "threads": out.get("Threads"), "open_fds": out.get("open_fds"), **({"error": out["error"]} if "error" in out else {})}


def set_affinity_tree(pid: int, cpus: set[int]) -> None:
    for p in tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    os.sched_setaffinity(int(tid), cpus)
                except OSError:
                    pass
        except OSError:
            pass


def affinity_of_tree(pid: int) -> list[int]:
    cpus: set[int] = set()
    for p in tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    cpus |= os.sched_getaffinity(int(tid))
                except OSError:
                    pass
        except OSError:
            pass
    return sorted(cpus)


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


# --------------------------------------------------------------------------- LiteLLM


def litellm_python() -> Path:
    return LITELLM_VENV / "bin" / "python"


def ensure_litellm(version: str) -> str:
    """LiteLLM's proxy in its own venv, made on the first run and reused after; its version."""
    marker = LITELLM_VENV / f".installed-{version}"
    if not marker.exists():
        LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
        if not litellm_python().exists():
            log(f"creating {LITELLM_VENV}")
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        log(f"installing litellm[proxy]=={version} into {LITELLM_VENV} (a few minutes, once)")
        install_log = LITELLM_VENV.parent / "litellm-install.log"
        with open(install_log, "wb") as f:
            r = subprocess.run([str(litellm_python()), "-m", "pip", "install", "--disable-pip-version-check",
                                f"litellm[proxy]=={version}"], stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise RuntimeError(f"pip install litellm[proxy]=={version} failed; see {install_log}")
        for old in LITELLM_VENV.glob(".installed-*"):
            old.unlink()
        marker.touch()
    out = subprocess.run([str(litellm_python()), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def start_litellm(port: int, mock_port: int, key: str, tmp: Path, log_dir: Path) -> Managed:
    cfg = tmp / "litellm.yaml"
    models = "".join(
        f"  - model_name: {name}\n"
        f"    litellm_params:\n"
        f"      model: openai/{name}\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        f"      api_key: sk-mock\n"
        f"      stream_timeout: 600\n"
        f"      timeout: 600\n" for name in (MODEL, SLOW_MODEL))
    cfg.write_text(f"model_list:\n{models}general_settings:\n  master_key: {key}\n"
                   f"litellm_settings:\n  request_timeout: 600\n")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION",
           "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
           # Its aiohttp pool allows 500 connections per upstream host by default: room for the
           # concurrent-streams phase, as Switchyard's catalog gives its slow model 1,000 slots.
           "AIOHTTP_CONNECTOR_LIMIT": str(LITELLM_UPSTREAM_CONNECTIONS),
           "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": str(LITELLM_UPSTREAM_CONNECTIONS)}
    for var in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL"):
        os.environ.pop(var, None)
    m = spawn("litellm", [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
                          "--port", str(port), "--num_workers", "1"], log_dir, None, env)
    wait_http(m, f"http://127.0.0.1:{port}/health/liveliness", 180)
    return m


# --------------------------------------------------------------------------- Switchyard


def switchyard_catalog(path: Path, mock_port: int, top_concurrency: int, slow_streams: int,
                       slow_stream_s: float) -> None:
    url = f"http://127.0.0.1:{mock_port}/v1"
    path.write_text(f"""# written by benchmarks/peer.py: two models on the paced mock engine
version: 1
models:
  - id: {MODEL}
    engine: {{kind: openai, url: "{url}", served_name: {MODEL}, connect_timeout_s: 2, read_timeout_s: 120}}
    task_queue: bench
    max_concurrency: {top_concurrency}
    limits: {{max_tokens: 4096}}
    timeouts: {{schedule_to_start_s: 60, start_to_close_s: 300, heartbeat_s: 5}}
  - id: {SLOW_MODEL}
    engine: {{kind: openai, url: "{url}", served_name: {SLOW_MODEL}, connect_timeout_s: 2, read_timeout_s: 120}}
    task_queue: bench
    max_concurrency: {max(slow_streams, 1)}
    limits: {{max_tokens: 4096}}
    timeouts: {{schedule_to_start_s: 300, start_to_close_s: {int(slow_stream_s + 600)}, heartbeat_s: 5}}
""")


def start_nats_monitored(port: int, monitor_port: int, store: Path, log_dir: Path) -> Managed:
    """As switchyard.processes.start_nats, plus the HTTP monitor (-m) for /jsz and /subsz."""
    store.mkdir(parents=True, exist_ok=True)
    m = spawn("nats", [tool("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor_port),
                       "-js", "-sd", str(store)], log_dir)
    wait_port(m, port, 15)
    wait_port(m, monitor_port, 15)
    return m


def nats_snapshot(monitor: str) -> dict:
    out: dict[str, Any] = {}
    try:
        jsz = get_json(f"{monitor}/jsz?consumers=true&streams=true")
        out["jetstream_streams"] = jsz.get("streams")
        out["jetstream_consumers"] = jsz.get("consumers")
        out["jetstream_messages"] = jsz.get("messages")
        out["jetstream_bytes"] = jsz.get("bytes")
        api = jsz.get("api") or {}
        out["jetstream_api_total"], out["jetstream_api_errors"] = api.get("total"), api.get("errors")
        per_stream = {}
        for acc in jsz.get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                per_stream[st.get("name")] = {"consumers": (st.get("state") or {}).get("consumer_count"),
                                              "messages": (st.get("state") or {}).get("messages")}
        out["streams"] = per_stream
        out["core_subscriptions"] = get_json(f"{monitor}/subsz").get("num_subscriptions")
        out["connections"] = get_json(f"{monitor}/connz").get("num_connections")
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# --------------------------------------------------------------------------- phases


class Ctx:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.targets: dict[str, Target] = {}
        self.groups: dict[str, Group] = {}
        self.shared = Group({})
        self.procs: dict[str, Managed] = {}
        self.nats_monitor = ""
        self.mock_url = ""
        self.noise: NoiseWatch | None = None


def _round_cpu(ctx: Ctx, name: str) -> tuple[dict, dict]:
    return ctx.groups[name].cpu(), ctx.shared.cpu()


async def latency_rounds(ctx: Ctx) -> dict:
    a = ctx.args
    names = [n for n in TARGETS if n in ctx.targets]
    # Warm-up, not counted: opens the pools, starts the lazy paths (LiteLLM's first request,
    # the Switchyard worker's first poll).
    top = max(a.concurrency)
    for name in names:
        recs, _ = await closed_loop(ctx.targets[name], top, a.warmup, a.timeout)
        bad = [r for r in recs if not r.ok]
        log(f"warm-up {name}: {len(recs) - len(bad)}/{len(recs)} ok"
            + (f" (e.g. {bad[0].failure()[:120]})" if bad else ""))
    out: dict[str, Any] = {}
    rounds_log: list[dict] = []
    for c in a.concurrency:
        aggs = {n: Agg() for n in names}
        for r in range(a.rounds):
            for name in names:
                agg = aggs[name]
                own0, sh0 = _round_cpu(ctx, name)
                recs, elapsed = await closed_loop(ctx.targets[name], c, a.duration, a.timeout)
                own1, sh1 = _round_cpu(ctx, name)
                for rec in recs:
                    agg.add(rec)
                agg.elapsed += elapsed
                for k in own1:
                    agg.cpu[k] = agg.cpu.get(k, 0.0) + own1[k] - own0[k]
                for k in sh1:
                    agg.cpu[f"shared:{k}"] = agg.cpu.get(f"shared:{k}", 0.0) + sh1[k] - sh0[k]
                n_ok = sum(1 for x in recs if x.ok)
                ttfts = [x.times[0] - x.t0 for x in recs if x.ok]
                row = {"concurrency": c, "round": r, "target": name, "requests": len(recs), "ok": n_ok,
                       "elapsed_s": round(elapsed, 2), "req_per_s": round(n_ok / elapsed, 2),
                       "ttft_p50_ms": summary(ttfts).get("p50")}
                rounds_log.append(row)
                log(f"c={c} round {r + 1}/{a.rounds} {name:<10} {n_ok}/{len(recs)} ok, "
                    f"{row['req_per_s']} req/s, TTFT p50 {row['ttft_p50_ms']} ms")
                if ctx.noise is not None:
                    ctx.noise.sample(f"c{c}_r{r}_{name}")
        block = {n: aggs[n].report() for n in names}
        for n in names:
            block[n]["proxy_cpu_ms_per_stream"] = (
                round(sum(v for k, v in block[n]["cpu_ms_per_stream"].items()
                          if not k.startswith("shared:") and v is not None), 3)
                if n != "direct" and block[n]["ok"] else None)
            if n != "direct" and "direct" in block:
                block[n]["added"] = added(block["direct"], block[n])
        out[str(c)] = block
    return {"by_concurrency": out, "rounds": rounds_log}


def leak_snapshot(ctx: Ctx, target: str) -> dict:
    snap: dict[str, Any] = {"t": round(time.monotonic(), 1)}
    if target == "switchyard":
        snap["nats"] = nats_snapshot(ctx.nats_monitor)
        snap["proxy"] = proc_status(ctx.procs["proxy"].proc.pid)
        snap["worker"] = proc_status(ctx.procs["worker"].proc.pid)
    else:
        snap["proxy"] = proc_status(ctx.procs["litellm"].proc.pid)
    try:
        snap["mock"] = get_json(ctx.mock_url + "/stats")
    except Exception as exc:
        snap["mock"] = {"error": str(exc)}
    return snap


async def sustained(ctx: Ctx, target: str) -> dict:
    a = ctx.args
    c = a.sustained_concurrency
    log(f"sustained: c={c} through {target} for {a.sustained:.0f}s")
    await asyncio.sleep(1.0)
    before = await asyncio.to_thread(leak_snapshot, ctx, target)
    agg = Agg()
    samples: list[dict] = []
    cpu0 = ctx.groups[target].cpu()
    done = asyncio.Event()

    async def sampler() -> None:
        t0 = time.monotonic()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), a.sample_every)
            except TimeoutError:
                pass
            if done.is_set():
                break
            s = await asyncio.to_thread(leak_snapshot, ctx, target)
            s["elapsed_s"] = round(time.monotonic() - t0, 1)
            s["streams_ok"], s["streams_failed"] = agg.ok, agg.requests - agg.ok
            samples.append(s)
            js = (s.get("nats") or {}).get("jetstream_consumers")
            log(f"sustained {s['elapsed_s']:.0f}s: {agg.ok} ok, {agg.requests - agg.ok} failed, proxy RSS "
                f"{s['proxy'].get('rss_mib')} MiB, fds {s['proxy'].get('open_fds')}"
                + (f", JetStream consumers {js}, subscriptions {s['nats'].get('core_subscriptions')}"
                   if target == "switchyard" else ""))

    task = asyncio.ensure_future(sampler())
    _, elapsed = await closed_loop(ctx.targets[target], c, a.sustained, a.timeout, sink=agg.add)
    done.set()
    await task
    agg.elapsed = elapsed
    cpu1 = ctx.groups[target].cpu()
    agg.cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
    right_after = await asyncio.to_thread(leak_snapshot, ctx, target)
    await asyncio.sleep(a.settle)
    settled = await asyncio.to_thread(leak_snapshot, ctx, target)
    rep = agg.report()
    log(f"sustained done: {agg.ok} ok, {agg.requests - agg.ok} failed in {elapsed:.0f}s")
    return {"target": target, "concurrency": c, "duration_s": a.sustained, "streams_ok": agg.ok,
            "streams_failed": agg.requests - agg.ok, "meets_20000_streams": agg.ok > 20000,
            **rep, "before": before, "right_after": right_after, "settle_s": a.settle, "settled": settled,
            "samples": samples}


async def concurrent_streams(ctx: Ctx, target: str) -> dict:
    """`n` streams of the slow model opened (over `ramp` seconds) through one proxy process, all held."""
    a = ctx.args
    n = a.c1000_streams
    t = ctx.targets[f"{target}:slow"]
    pid = ctx.procs["litellm" if target == "litellm" else "proxy"].proc.pid
    log(f"concurrent: {n} streams through {target} (pid {pid}), opened over {a.c1000_ramp:.0f}s, "
        f"{a.c1000_tokens} tokens at {a.c1000_itl_ms:.0f} ms")
    await asyncio.sleep(1.0)
    try:
        engine0 = await asyncio.to_thread(get_json, ctx.mock_url + "/stats?reset=1")
    except Exception:
        engine0 = {}
    before = proc_status(pid)
    peak = {"rss_mib": before.get("rss_mib") or 0.0, "open_fds": before.get("open_fds") or 0,
            "in_flight": 0, "streaming": 0}
    stop = asyncio.Event()
    t.live = set()

    async def watch() -> None:
        while not stop.is_set():
            st = proc_status(pid)
            peak["rss_mib"] = max(peak["rss_mib"], st.get("rss_mib") or 0.0)
            peak["open_fds"] = max(peak["open_fds"], st.get("open_fds") or 0)
            peak["in_flight"] = max(peak["in_flight"], len(t.live))
            # streams that have had their first token and have not ended, as the client sees them
            peak["streaming"] = max(peak["streaming"], sum(1 for conn in t.live if conn.rec.times))
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass

    async def one(delay: float) -> Rec:
        await asyncio.sleep(delay)
        return await t.request(a.c1000_timeout)

    watcher = asyncio.ensure_future(watch())
    t0 = time.perf_counter()
    recs = await asyncio.gather(*(one(a.c1000_ramp * i / max(n - 1, 1)) for i in range(n)))
    elapsed = time.perf_counter() - t0
    stop.set()
    await watcher
    t.live = None
    t.close()
    after = proc_status(pid)
    try:
        mock = await asyncio.to_thread(get_json, ctx.mock_url + "/stats")
        for k in ("streams_started", "streams_completed", "streams_aborted"):
            mock[k] -= engine0.get(k, 0)  # this phase's streams only
    except Exception as exc:
        mock = {"error": str(exc)}
    agg = Agg()
    for rec in recs:
        agg.add(rec)
    agg.elapsed = elapsed
    rep = agg.report()
    log(f"concurrent {target}: {agg.ok}/{n} ok, peak streaming at client {peak['streaming']}, at engine "
        f"{mock.get('peak_active')}, proxy peak RSS {peak['rss_mib']} MiB (before {before.get('rss_mib')})")
    return {"target": target, "streams": n, "ok": agg.ok, "failed": n - agg.ok,
            "error_kinds": rep["error_kinds"], "elapsed_s": round(elapsed, 1),
            "peak_in_flight_at_client": peak["in_flight"], "peak_streaming_at_client": peak["streaming"],
            "engine": mock, "proxy_before": before, "proxy_after": after,
            "proxy_peak_rss_mib": peak["rss_mib"], "proxy_peak_open_fds": peak["open_fds"],
            "ttft_ms": rep["ttft_ms"], "itl_ms": rep["itl_ms"], "total_ms": rep["total_ms"]}


async def idle_cpu(ctx: Ctx, seconds: float) -> dict:
    """Each process's CPU use with no load at all (Temporal's and the worker's polling, timers), in %."""
    groups = {**ctx.groups, "shared": ctx.shared}
    before = {g: grp.cpu() for g, grp in groups.items()}
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    dt = time.perf_counter() - t0
    after = {g: grp.cpu() for g, grp in groups.items()}
    return {"seconds": round(dt, 1),
            "cpu_pct": {g: {k: round((after[g][k] - before[g][k]) * 100.0 / dt, 2) for k in after[g]}
                        for g in groups if after[g]}}


async def run_all(ctx: Ctx) -> dict:
    a = ctx.args
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    if a.idle > 0:
        out["idle"] = await idle_cpu(ctx, a.idle)
        log("idle CPU %: " + "; ".join(f"{g}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                                       for g, d in out["idle"]["cpu_pct"].items()))
    if a.rounds > 0:
        out["latency"] = await latency_rounds(ctx)
        out["durations_s"] = {"latency": round(time.monotonic() - t0, 1)}
    for t in ctx.targets.values():
        t.close()
    if a.sustained > 0:
        t1 = time.monotonic()
        out["sustained"] = [await sustained(ctx, name) for name in a.sustained_targets if name in ctx.targets]
        out.setdefault("durations_s", {})["sustained"] = round(time.monotonic() - t1, 1)
        for t in ctx.targets.values():
            t.close()
    if a.c1000_streams > 0:
        t2 = time.monotonic()
        out["concurrent"] = [await concurrent_streams(ctx, name) for name in a.c1000_targets
                             if name in ctx.targets]
        out.setdefault("durations_s", {})["concurrent"] = round(time.monotonic() - t2, 1)
    return out


# --------------------------------------------------------------------------- report


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _signed(v: Any) -> str:
    return "–" if v is None else f"{v:+.1f}"


def markdown(result: dict) -> str:
    a = result["settings"]
    lines = [
        f"Run {result['date']}{' (**--quick smoke run: short rounds, not representative**)' if a['quick'] else ''}: "
        f"LiteLLM {result['versions']['litellm']} vs Switchyard {result['versions']['switchyard_commit'][:10]}"
        f"{' (dirty tree)' if result['versions'].get('switchyard_dirty') else ''}, on "
        f"{result['machine']['cpu_count']} CPUs ({result['machine']['cpu_model'] or 'unknown CPU'}).",
        f"Mock engine: {a['mock_ttft_ms']:.0f} ms to the first token, then one every {a['mock_itl_ms']:.0f} ms, "
        f"{a['mock_tokens']} tokens. "
        + (f"{a['rounds']} round(s) of {a['duration_s']:.0f} s per target and concurrency (closed loop), in the "
           "order direct → LiteLLM → Switchyard. " if a['rounds'] else "")
        + f"Pinning: {result['pinning']['summary']}.",
        "",
    ]
    lat = (result.get("latency") or {}).get("by_concurrency") or {}
    if lat:
        lines += ["| c | target | streams ok | errors | req/s | TTFT p50 | TTFT p99 | added TTFT p50 | added TTFT p99 "
                  "| ITL p50 | ITL p99 | added ITL p50 | added ITL p99 | proxy CPU ms/stream |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, block in lat.items():
            for name, r in block.items():
                ad = r.get("added") or {}
                lines.append(
                    f"| {c} | {name} | {r['ok']} | {r['errors']} | {_f(r['req_per_s'])} | "
                    f"{_f(r['ttft_ms'].get('p50'))} | {_f(r['ttft_ms'].get('p99'))} | {_signed(ad.get('ttft_p50_ms'))} | "
                    f"{_signed(ad.get('ttft_p99_ms'))} | {_f(r['itl_ms'].get('p50'), 2)} | {_f(r['itl_ms'].get('p99'), 2)} | "
                    f"{_signed(ad.get('itl_p50_ms'))} | {_signed(ad.get('itl_p99_ms'))} | "
                    f"{_f(r.get('proxy_cpu_ms_per_stream'), 2)} |")
        lines += ["", "Times in ms. TTFT: request sent → first content token. ITL: the gap before each token as it "
                  "arrives (tokens that arrive together, coalesced into one chunk or one read, count 0 after the "
                  "first). Added: proxy percentile − direct percentile. CPU time per completed stream, by process "
                  "(ms; it includes each process's idle use during the round):", "",
                  "| c | target | by process | mock engine | load generator | TPOT p50 / p99 | longest gap in a stream "
                  "p50 / p99 | content chunks/stream | errors seen |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c, block in lat.items():
            for name, r in block.items():
                cpu = r["cpu_ms_per_stream"]
                own = ", ".join(f"{k} {_f(v, 2)}" for k, v in cpu.items() if not k.startswith("shared:"))
                errs = "; ".join(f"{n}× {k}" for k, n in r["error_kinds"].items()) or ""
                lines.append(f"| {c} | {name} | {own if name != 'direct' else '(none)'} | "
                             f"{_f(cpu.get('shared:mock'), 2)} | {_f(cpu.get('shared:loadgen'), 2)} | "
                             f"{_f(r['tpot_ms'].get('p50'), 2)} / {_f(r['tpot_ms'].get('p99'), 2)} | "
                             f"{_f(r['max_gap_ms'].get('p50'))} / {_f(r['max_gap_ms'].get('p99'))} | "
                             f"{_f(r['content_chunks_mean'])} | {errs[:200].replace('|', '/')} |")
        lines.append("")
    idle = (result.get("idle") or {}).get("cpu_pct") or {}
    if idle:
        lines += ["Idle CPU use with no load (% of one CPU): " + "; ".join(
            f"{g}: " + ", ".join(f"{k} {v:.1f}" for k, v in d.items()) for g, d in idle.items()) + ".", ""]
    for s in result.get("sustained") or []:
        b, f = s["before"], s["settled"]
        bn, fn = b.get("nats") or {}, f.get("nats") or {}
        lines += [f"Sustained c={s['concurrency']} through {s['target']} for {s['duration_s']:.0f} s: "
                  f"{s['streams_ok']} streams ok, {s['streams_failed']} failed, {_f(s['req_per_s'])} req/s, "
                  f"TTFT p50 {_f(s['ttft_ms'].get('p50'))} / p99 {_f(s['ttft_ms'].get('p99'))} ms, "
                  f"ITL p50 {_f(s['itl_ms'].get('p50'), 2)} / p99 {_f(s['itl_ms'].get('p99'), 2)} ms, "
                  f"longest gap in a stream p99 {_f(s['max_gap_ms'].get('p99'))} ms; "
                  f"{'more' if s['meets_20000_streams'] else 'fewer'} than 20,000 streams.", "",
                  "| | before | right after | after settling |", "|---|---|---|---|"]
        ra = s["right_after"]
        ran = ra.get("nats") or {}
        rows = [("proxy RSS (MiB)", b["proxy"].get("rss_mib"), ra["proxy"].get("rss_mib"), f["proxy"].get("rss_mib")),
                ("proxy open files", b["proxy"].get("open_fds"), ra["proxy"].get("open_fds"), f["proxy"].get("open_fds"))]
        if s["target"] == "switchyard":
            rows += [("worker RSS (MiB)", b["worker"].get("rss_mib"), ra["worker"].get("rss_mib"),
                      f["worker"].get("rss_mib")),
                     ("worker open files", b["worker"].get("open_fds"), ra["worker"].get("open_fds"),
                      f["worker"].get("open_fds")),
                     ("JetStream consumers", bn.get("jetstream_consumers"), ran.get("jetstream_consumers"),
                      fn.get("jetstream_consumers")),
                     ("NATS subscriptions", bn.get("core_subscriptions"), ran.get("core_subscriptions"),
                      fn.get("core_subscriptions")),
                     ("NATS connections", bn.get("connections"), ran.get("connections"), fn.get("connections"))]
        lines += [f"| {k} | {_f(x)} | {_f(y)} | {_f(z)} |" for k, x, y, z in rows]
        lines.append("")
    conc = result.get("concurrent") or []
    if conc:
        lines += ["| concurrent streams | through | ok | failed | peak streaming (client / engine) | proxy RSS before "
                  "| proxy peak RSS | TTFT p50 / p99 |", "|---|---|---|---|---|---|---|---|"]
        for r in conc:
            lines.append(f"| {r['streams']} | {r['target']} | {r['ok']} | {r['failed']} | "
                         f"{r['peak_streaming_at_client']} / {(r['engine'] or {}).get('peak_active', '–')} | "
                         f"{_f(r['proxy_before'].get('rss_mib'))} MiB | {_f(r['proxy_peak_rss_mib'])} MiB | "
                         f"{_f(r['ttft_ms'].get('p50'))} / {_f(r['ttft_ms'].get('p99'))} ms |")
        lines.append(f"\nSlow model for these: {a['c1000_tokens']} tokens at {a['c1000_itl_ms']:.0f} ms, opened "
                     f"over {a['c1000_ramp_s']:.0f} s. Errors: " + "; ".join(
                         f"{r['target']}: " + (", ".join(f"{n}× {k}" for k, n in r['error_kinds'].items()) or "none")
                         for r in conc))
        lines.append("")
    lines.append(f"JSON: `{result['file']}`.")
    return "\n".join(lines)


def write_readme(md: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{md}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## `peer.py`: Switchyard vs LiteLLM on a paced mock engine\n\n" + block + "\n"
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(README)


def git_info() -> dict:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    status = run("status", "--porcelain", "--untracked-files=no")
    return {"switchyard_commit": run("rev-parse", "HEAD") or "unknown", "switchyard_dirty": bool(status)}


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return " ".join((out.stdout + out.stderr).split())[:120]
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round of 3 s, 8 s sustained, 100 concurrent streams of 3 s")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per target and concurrency (default 3; quick 1)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per round (default 10; quick 3)")
    ap.add_argument("--concurrency", default="1,16,64", help="concurrency levels, comma-separated (default 1,16,64)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="which of direct,litellm,switchyard to run (default: all; direct is always run)")
    ap.add_argument("--warmup", type=float, default=None, help="uncounted warm-up seconds per target (default 3; quick 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in s (default 60)")
    ap.add_argument("--idle", type=float, default=None, help="seconds of no load at the start, to measure each "
                    "process's idle CPU use (default 5; quick 2; 0 skips)")
    ap.add_argument("--sustained", type=float, default=None, metavar="SECONDS",
                    help="sustained load phase length; 0 skips it (default 600; quick 8)")
    ap.add_argument("--sustained-concurrency", type=int, default=64, help="(default 64)")
    ap.add_argument("--sustained-targets", default="switchyard",
                    help="comma-separated: switchyard,litellm (default switchyard)")
    ap.add_argument("--sample-every", type=float, default=None, help="leak-check sample period in the sustained phase "
                    "(default 30 s; quick 2 s)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to wait after the sustained load "
                    "before the final leak-check reading (default 10; quick 3)")
    ap.add_argument("--concurrent-1000", dest="c1000", action=argparse.BooleanOptionalAction, default=None,
                    help="the concurrent-streams phase (default: on, 1000 streams; quick: 100 streams)")
    ap.add_argument("--c1000-streams", type=int, default=None, help="streams opened together (default 1000; quick 100)")
    ap.add_argument("--c1000-targets", default="litellm,switchyard", help="(default litellm,switchyard)")
    ap.add_argument("--c1000-itl-ms", type=float, default=None, help="slow model's gap between tokens (default 2000; quick 300)")
    ap.add_argument("--c1000-tokens", type=int, default=None, help="slow model's tokens per stream (default 30; quick 10)")
    ap.add_argument("--c1000-ramp", type=float, default=None, help="seconds over which the streams are opened "
                    "(default 10; quick 2)")
    ap.add_argument("--mock-ttft-ms", type=float, default=20.0, help="(default 20)")
    ap.add_argument("--mock-itl-ms", type=float, default=10.0, help="(default 10)")
    ap.add_argument("--mock-tokens", type=int, default=64, help="(default 64)")
    ap.add_argument("--litellm-version", default=LITELLM_VERSION, help=f"pip version of litellm[proxy] "
                    f"(default {LITELLM_VERSION})")
    ap.add_argument("--coalesce-ms", default=os.environ.get("SWITCHYARD_COALESCE_MS", "5"),
                    help="Switchyard worker's SWITCHYARD_COALESCE_MS")
    ap.add_argument("--proxy-cpu", type=int, default=None, help="CPU for the proxies (default: the first allowed)")
    ap.add_argument("--client-cpu", type=int, default=None, help="CPU for the mock and the load generator "
                    "(default: the second allowed)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything")
    ap.add_argument("--no-readme", action="store_true", help="do not write the table into benchmarks/README.md")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default results/peer-<timestamp>.json)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, state)")
    a = ap.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds if a.rounds is not None else (1 if q else 3)
    a.duration = a.duration if a.duration is not None else (3.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 3.0)
    a.idle = a.idle if a.idle is not None else (2.0 if q else 5.0)
    a.sustained = a.sustained if a.sustained is not None else (8.0 if q else 600.0)
    a.sample_every = a.sample_every if a.sample_every is not None else (2.0 if q else 30.0)
    if q and a.settle == 10.0:
        a.settle = 3.0
    if a.c1000 is False:
        a.c1000_streams = 0
    elif a.c1000_streams is None:
        a.c1000_streams = 1000 if (a.c1000 or not q) else 100
    big = a.c1000_streams >= 1000 or not q
    a.c1000_itl_ms = a.c1000_itl_ms if a.c1000_itl_ms is not None else (2000.0 if big else 300.0)
    a.c1000_tokens = a.c1000_tokens if a.c1000_tokens is not None else (30 if big else 10)
    a.c1000_ramp = a.c1000_ramp if a.c1000_ramp is not None else (10.0 if big else 2.0)
    a.c1000_timeout = a.c1000_ramp + a.c1000_tokens * a.c1000_itl_ms / 1000.0 + 300.0
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    for t in a.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}")
    a.sustained_targets = [t.strip() for t in a.sustained_targets.split(",") if t.strip() in ("switchyard", "litellm")]
    a.c1000_targets = [t.strip() for t in a.c1000_targets.split(",") if t.strip() in ("switchyard", "litellm")]
    return a


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def raise_fd_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_path = args.out or RESULTS_DIR / f"peer-{stamp}.json"
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-peer-"))
    log_dir = tmp / "log"
    started: list[Managed] = []
    ctx = Ctx(args)
    ctx.noise = NoiseWatch()
    ok = interrupted = False
    t_begin = time.monotonic()
    allowed = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(allowed) >= 2
    proxy_cpu = args.proxy_cpu if args.proxy_cpu is not None else (allowed[0] if pin else None)
    client_cpu = args.client_cpu if args.client_cpu is not None else (allowed[1] if pin else None)

    def on(cpu: int | None) -> None:
        if pin and cpu is not None:
            os.sched_setaffinity(0, {cpu})

    try:
        fd_limit = raise_fd_limit()
        want = set(args.targets)
        litellm_version = ensure_litellm(args.litellm_version) if "litellm" in want else None
        mock_port = free_port()
        c1000_stream_s = args.c1000_tokens * args.c1000_itl_ms / 1000.0
        models = [f"{MODEL}:{args.mock_ttft_ms}:{args.mock_itl_ms}:{args.mock_tokens}",
                  f"{SLOW_MODEL}:{args.mock_ttft_ms}:{args.c1000_itl_ms}:{args.c1000_tokens}"]
        log(f"temp dir {tmp}; pinning: "
            + (f"proxies on CPU {proxy_cpu}, mock + load generator on CPU {client_cpu}" if pin else "off"))
        ctx.noise.sample("before_start")

        # The mock engine first (the proxies' readiness probes look at it), on the client CPU.
        on(client_cpu)
        mock = spawn("mock", [sys.executable, str(Path(__file__).resolve()), "_mock", "--port", str(mock_port),
                              *[x for m in models for x in ("--model", m)]], log_dir)
        started.append(mock)
        wait_http(mock, f"http://127.0.0.1:{mock_port}/health", 30)
        ctx.mock_url = f"http://127.0.0.1:{mock_port}"
        ctx.procs["mock"] = mock
        ctx.shared = Group({"mock": mock.proc.pid, "loadgen": os.getpid()}, alone=("loadgen",))

        # Everything a proxy needs on the proxy CPU: children inherit the affinity of the thread that forks them.
        on(proxy_cpu)
        if "litellm" in want:
            lport = free_port()
            lkey = "sk-litellm-" + os.urandom(8).hex()
            m = start_litellm(lport, mock_port, lkey, tmp, log_dir)
            started.append(m)
            ctx.procs["litellm"] = m
            ctx.groups["litellm"] = Group({"litellm": m.proc.pid})
            ctx.targets["litellm"] = Target("litellm", lport, MODEL, args.mock_tokens, lkey)
            ctx.targets["litellm:slow"] = Target("litellm", lport, SLOW_MODEL, args.c1000_tokens, lkey)
            log(f"litellm {litellm_version} up (pid {m.proc.pid})")
        if "switchyard" in want:
            tport, nport, mport, pport = free_port(), free_port(), free_port(), free_port()
            skey = "sk-bench-" + os.urandom(8).hex()
            catalog = tmp / "catalog.yaml"
            switchyard_catalog(catalog, mock_port, max(args.concurrency + [args.sustained_concurrency]),
                               args.c1000_streams, c1000_stream_s)
            env = {
                "SWITCHYARD_TEMPORAL_ADDRESS": f"127.0.0.1:{tport}",
                "SWITCHYARD_NATS_URL": f"nats://127.0.0.1:{nport}",
                "SWITCHYARD_PORT": str(pport),
                "SWITCHYARD_HOST": "127.0.0.1",
                "SWITCHYARD_DEMO_KEY": skey,
                "SWITCHYARD_PAYLOAD_KEYS": new_key_entry("bench"),  # Temporal payloads encrypted, as deployed
                "SWITCHYARD_CATALOG": str(catalog),
                "SWITCHYARD_OBJECT_DIR": str(tmp / "objects"),
                "SWITCHYARD_LOG_LEVEL": "WARNING",
                "SWITCHYARD_COALESCE_MS": str(args.coalesce_ms),
            }
            temporal = start_temporal(tport, tmp / "temporal.db", log_dir)
            started.append(temporal)
            nats = start_nats_monitored(nport, mport, tmp / "js", log_dir)
            started.append(nats)
            worker = start_python("worker", ["worker"], log_dir, None, env)
            started.append(worker)
            proxy = start_python("proxy", ["proxy"], log_dir, None, env)
            started.append(proxy)
            wait_http(proxy, f"http://127.0.0.1:{pport}/healthz", 90)
            ctx.procs.update(temporal=temporal, nats=nats, worker=worker, proxy=proxy)
            ctx.nats_monitor = f"http://127.0.0.1:{mport}"
            ctx.groups["switchyard"] = Group({"proxy": proxy.proc.pid, "worker": worker.proc.pid,
                                              "temporal": temporal.proc.pid, "nats": nats.proc.pid})
            ctx.targets["switchyard"] = Target("switchyard", pport, MODEL, args.mock_tokens, skey)
            ctx.targets["switchyard:slow"] = Target("switchyard", pport, SLOW_MODEL, args.c1000_tokens, skey)
            log(f"switchyard up (proxy pid {proxy.proc.pid})")
        on(client_cpu)
        if "direct" in want or True:  # the baseline is always measured
            ctx.targets["direct"] = Target("direct", mock_port, MODEL, args.mock_tokens)
            ctx.groups["direct"] = Group({})
        # Belt and braces: every thread of every process tree where it belongs.
        if pin:
            for group in ctx.groups.values():
                for pid in group.procs.values():
                    set_affinity_tree(pid, {proxy_cpu})
            set_affinity_tree(mock.proc.pid, {client_cpu})
        pinning = {"enabled": pin, "proxy_cpu": proxy_cpu, "client_cpu": client_cpu,
                   "observed": {f"{g}:{n}": affinity_of_tree(pid) for g, grp in ctx.groups.items()
                                for n, pid in grp.procs.items()}
                   | {"mock": affinity_of_tree(mock.proc.pid), "loadgen": sorted(os.sched_getaffinity(0))}}
        pinning["summary"] = (f"each proxy and all of its processes on CPU {proxy_cpu}; the mock engine and the "
                              f"load generator on CPU {client_cpu}" if pin else "none")
        ctx.noise.ours.update(p for m in started for p in tree(m.proc.pid))
        ctx.noise.sample("stack_up")
        log(f"stack up in {time.monotonic() - t_begin:.1f}s")

        runner = event_loop_runner()
        t_bench = time.monotonic()
        measured = runner(run_all(ctx))
        for m in started:
            if not m.alive():
                raise RuntimeError(f"{m.name} exited during the run; see {m.log_path}")
        ctx.noise.sample("done")

        result = {
            "benchmark": "peer",
            "file": (str(out_path.resolve().relative_to(ROOT)) if out_path.resolve().is_relative_to(ROOT)
                     else str(out_path)),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": {"litellm": litellm_version, **git_info(),
                         "temporal": tool_version([tool("temporal"), "--version"]),
                         "nats_server": tool_version([tool("nats-server"), "--version"])},
            "settings": {"quick": args.quick, "rounds": args.rounds, "duration_s": args.duration,
                         "warmup_s": args.warmup, "idle_s": args.idle, "concurrency": args.concurrency,
                         "targets": args.targets,
                         "mock_ttft_ms": args.mock_ttft_ms, "mock_itl_ms": args.mock_itl_ms,
                         "mock_tokens": args.mock_tokens, "timeout_s": args.timeout,
                         "sustained_s": args.sustained, "sustained_concurrency": args.sustained_concurrency,
                         "c1000_streams": args.c1000_streams, "c1000_itl_ms": args.c1000_itl_ms,
                         "c1000_tokens": args.c1000_tokens, "c1000_ramp_s": args.c1000_ramp,
                         "switchyard_coalesce_ms": float(args.coalesce_ms), "fd_limit": list(fd_limit)},
            "request": {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
                        "max_tokens": args.mock_tokens, "messages": [{"role": "user", "content": "Say hello."}]},
            "pinning": pinning,
            "setup": {
                "litellm": "litellm --config (model openai/<name>, api_base = the mock) --num_workers 1; "
                           "master_key auth, no database; LITELLM_LOG=ERROR; LITELLM_LOCAL_MODEL_COST_MAP=True; "
                           f"AIOHTTP_CONNECTOR_LIMIT(_PER_HOST)={LITELLM_UPSTREAM_CONNECTIONS} (default 1000/500)",
                "switchyard": "Temporal dev server + nats-server (JetStream, -m monitor) + 1 worker + 1 proxy; "
                              "catalog written by the benchmark: engine kind openai at the mock; "
                              "SWITCHYARD_LOG_LEVEL=WARNING",
                "client": "asyncio.Protocol HTTP/1.1 client with keep-alive pools; SSE parsed by line; closed loop",
                "metrics": "TTFT: send -> first chunk with non-empty delta.content; ITL: every gap between "
                           "content chunks; added = proxy percentile - direct percentile; CPU: utime+stime "
                           "from /proc/<pid>/stat of each process tree before/after each round, over completed "
                           "streams; 'shared:*' are the mock engine and the load generator",
            },
            "host_noise": ctx.noise.report(),
            **measured,
        }
        result.setdefault("durations_s", {}).update(bench=round(time.monotonic() - t_bench, 1),
                                                    total=round(time.monotonic() - t_begin, 1))
        md = markdown(result)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out_path.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=2) + "\n")
        tmp_out.replace(out_path)
        print(md)
        if not args.no_readme:
            write_readme(md)
        print(f"\nwrote {out_path}" + ("" if args.no_readme else f" and {README}") +
              f" ({result['durations_s']['total']}s total)")
        ok = True
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        interrupted = True
        return 130
    except (RuntimeError, TimeoutError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        clean_up(started, tmp, keep=args.keep_tmp or not (ok or interrupted))


if __name__ == "__main__":
    sys.exit(main())
