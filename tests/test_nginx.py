"""The compose edge: Debian's nginx (unpacked by scripts/fetch_nginx.sh, run unprivileged in the
foreground) with compose/nginx's template rendered as the nginx image would, in front of the real proxy."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
import yaml

from switchyard.processes import ROOT, free_port
from tests.conftest import Stack, scenario
from tests.eventually import eventually
from tests.fakes.vllm import REPLY

NGINX = ROOT / ".cache" / "nginx" / "nginx"
COMPOSE = ROOT / "compose"
TEMPLATE = COMPOSE / "nginx" / "templates" / "switchyard.conf.template"
NOBODY = 65534


def render(**overrides: str) -> str:
    """envsubst as the nginx image runs it, with the values compose gives (their defaults) and overrides."""
    env = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]["nginx"]["environment"]
    values = {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    values.update(overrides)
    return re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: values[m.group(1)], TEMPLATE.read_text())


class Nginx:
    def __init__(self, base: Path, upstream: str, tls: tuple[Path, Path], **overrides: str):
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=base))
        self.http_port, self.https_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.tls_url = f"https://localhost:{self.https_port}"
        cert, key = tls
        (self.dir / "switchyard.conf").write_text(render(
            NGINX_UPSTREAM=upstream, NGINX_HTTP_PORT=f"127.0.0.1:{self.http_port}",
            NGINX_HTTPS_PORT=f"127.0.0.1:{self.https_port}", NGINX_TLS_CERT=str(cert),
            NGINX_TLS_KEY=str(key), **overrides))
        temp = " ".join(f"{kind}_temp_path {self.dir}/{kind};" for kind in
                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(
            f"worker_processes 1;\npid {self.dir}/nginx.pid;\nevents {{ worker_connections 256; }}\n"
            f"http {{ {temp} include {self.dir}/switchyard.conf; }}\n")
        self.argv = [str(nginx_binary(base)), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                     "-e", str(self.dir / "error.log")]
        self.proc: subprocess.Popen | None = None
        (self.dir / "access.log").touch()  # the template logs to /dev/stdout, which nginx reopens
        if os.geteuid() == 0:
            for p in (self.dir, *self.dir.iterdir()):
                os.chown(p, NOBODY, NOBODY)

    def _run_as(self) -> dict:
        return {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}

    def test_config(self) -> subprocess.CompletedProcess:
        with open(self.dir / "access.log", "ab") as out:
            return subprocess.run([*self.argv, "-t"], stdout=out, stderr=subprocess.PIPE, text=True,
                                  **self._run_as())

    def start(self) -> "Nginx":
        with open(self.dir / "access.log", "ab") as out:
            self.proc = subprocess.Popen([*self.argv, "-g", "daemon off;"], stdout=out,
                                         stderr=subprocess.STDOUT, **self._run_as())
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:  # it never will
                raise RuntimeError(f"nginx exited: {(self.dir / 'error.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=0.2).close()
            except OSError:
                return False
            return True

        eventually(listening, timeout=15, interval=0.05, what=f"nginx listening on port {self.http_port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: lets open streams end
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def nginx_binary(base: Path) -> Path:
    """The unpacked nginx, or its copy in `base` when it runs as `nobody` (see `base`)."""
    copy = base / "nginx-dist" / "nginx"
    return copy if copy.exists() else NGINX


@pytest.fixture(scope="module")
def base():
    if not NGINX.exists():
        if shutil.which("apt-get") is None:
            pytest.skip("nginx comes from Debian's packages: scripts/fetch_nginx.sh needs apt-get")
        subprocess.run([str(ROOT / "scripts" / "fetch_nginx.sh")], check=True)
    d = Path(tempfile.mkdtemp(prefix="sy-edge-"))
    d.chmod(0o755)
    if os.geteuid() == 0:
        # nginx runs as `nobody`, who may not be able to enter the checkout (a 0700 temp dir, a home).
        shutil.copytree(NGINX.parent, d / "nginx-dist", symlinks=True, ignore=shutil.ignore_patterns("debs"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tls(base: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the TLS server block needs a certificate; openssl is not installed")
    cert, key = base / "tls.crt", base / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    if os.geteuid() == 0:
        os.chown(key, NOBODY, NOBODY)
    return cert, key


@pytest.fixture(scope="module")
def edge(stack: Stack, base: Path, tls):
    nginx = Nginx(base, stack.proxy_url.removeprefix("http://"), tls).start()
    yield nginx
    nginx.stop()


def logged(stack: Stack, request_id: str) -> bool:
    return f'"request_id": "{request_id}"' in stack.logs()


def proxy_saw(stack: Stack, request_id: str) -> bool:
    return eventually(lambda: logged(stack, request_id), timeout=5, what=f"the proxy logging {request_id}")


def test_nginx_t_accepts_the_rendered_template(base: Path, tls):
    r = Nginx(base, "127.0.0.1:9", tls).test_config()
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr
    conf = render()
    # Streams leave unbuffered even from an upstream that does not send `X-Accel-Buffering: no`
    # (the proxy does), and that header stays honoured.
    assert "proxy_buffering off;" in conf and "proxy_ignore_headers" not in conf


@pytest.mark.parametrize("transport", ["http/1.1", "https+h2"])
def test_first_delta_arrives_through_nginx_long_before_the_stream_ends(stack: Stack, edge: Nginx, tls,
                                                                       transport: str):
    body = json.dumps({"model": "fake-vllm", "stream": True, "messages": scenario("slow")})
    url, extra = edge.url, ["--http1.1"]
    if transport == "https+h2":
        url, extra = edge.tls_url, ["--http2", "--cacert", str(tls[0])]
    proc = subprocess.Popen(["curl", "-isN", *extra, url + "/v1/chat/completions",
                             "-H", f"Authorization: Bearer {stack.key}", "-H", "Content-Type: application/json",
                             "-d", body], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    status = proc.stdout.readline()
    arrivals = [(time.monotonic(), line) for line in proc.stdout if line.startswith(b"data: ")]
    proc.wait(10)
    assert status.startswith(b"HTTP/2 200" if transport == "https+h2" else b"HTTP/1.1 200"), status
    assert arrivals[-1][1].strip() == b"data: [DONE]"
    content = [t for t, line in arrivals if b'"content"' in line]
    # The fake engine emits one word every 0.3 s: a buffering edge would deliver them in one burst.
    assert len(content) >= 5
    assert arrivals[-1][0] - content[0] > 1.0
    assert content[-1] - content[0] > 1.0


def test_request_id_passes_through_both_ways(stack: Stack, edge: Nginx):
    auth = {"authorization": f"Bearer {stack.key}"}
    mine = f"edge-{uuid.uuid4().hex}"
    r = httpx.get(edge.url + "/v1/models", headers={**auth, "x-request-id": mine})
    assert r.status_code == 200
    assert r.headers.get_list("x-request-id") == [mine]
    assert proxy_saw(stack, mine)

    r = httpx.get(edge.url + "/v1/models", headers=auth)  # none given: nginx makes one, the proxy keeps it
    generated = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert proxy_saw(stack, generated)


def test_oversized_body_is_refused_by_nginx_before_the_proxy(stack: Stack, edge: Nginx):
    limit = int(render().split("client_max_body_size ", 1)[1].split(";", 1)[0])
    assert limit == 32 * 1024 * 1024  # the proxy's SWITCHYARD_MAX_BODY_BYTES default
    auth = {"authorization": f"Bearer {stack.key}", "content-type": "application/json"}

    def post(size: int, request_id: str) -> httpx.Response:
        head = b'{"model": "no-such-model", "messages": [], "pad": "'
        body = head + b"a" * (size - len(head) - 2) + b'"}'
        assert len(body) == size
        return httpx.post(edge.url + "/v1/chat/completions", content=body, timeout=60,
                          headers={**auth, "x-request-id": request_id})

    refused = f"edge-big-{uuid.uuid4().hex}"
    r = post(limit + 1, refused)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert r.headers["x-request-id"] == refused
    within = f"edge-fits-{uuid.uuid4().hex}"
    r = post(limit, within)
    assert r.status_code in (400, 404), r.text  # the proxy's answer to the body, not the edge's
    assert proxy_saw(stack, within)
    assert not logged(stack, refused)  # sent before `within`, whose line is there already


def test_rate_limit_per_client_address_answers_429(stack: Stack, base: Path, tls):
    nginx = Nginx(base, stack.proxy_url.removeprefix("http://"), tls,
                  NGINX_RATE_LIMIT="1r/s", NGINX_RATE_BURST="2").start()
    try:
        with httpx.Client(base_url=nginx.url) as c:
            answers = [c.get("/healthz") for _ in range(10)]
    finally:
        nginx.stop()
    codes = [r.status_code for r in answers]
    assert codes[:3] == [200, 200, 200]
    refused = [r for r in answers if r.status_code == 429]
    assert refused, codes
    assert refused[0].json()["error"]["type"] == "rate_limit_error"
    assert refused[0].headers["retry-after"] == "1"
    assert refused[0].headers["x-request-id"]


def test_unreachable_proxy_gives_an_openai_error_envelope(base: Path, tls):
    nginx = Nginx(base, f"127.0.0.1:{free_port()}", tls).start()
    try:
        r = httpx.get(nginx.url + "/v1/models")
    finally:
        nginx.stop()
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "edge_upstream_unavailable"


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_websocket_works_through_nginx(stack: Stack, edge: Nginx, tls, scheme: str):
    url = f"ws://127.0.0.1:{edge.http_port}/v1/ws"
    ssl_context = None
    if scheme == "wss":
        url, ssl_context = f"wss://localhost:{edge.https_port}/v1/ws", ssl.create_default_context(cafile=tls[0])
    async with websockets.connect(url, ssl=ssl_context, subprotocols=[f"bearer.{stack.key}"]) as ws:
        async def recv() -> dict:
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

        assert (await recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "request", "id": "a", "body": {
            "model": "fake-vllm", "messages": scenario("slow")}}))
        text, events = "", []
        while (msg := await recv())["type"] != "done":
            if msg["type"] == "event":
                events.append((time.monotonic(), msg["event"]))
                if msg["event"] == "chunk":
                    text += msg["data"]["choices"][0]["delta"].get("content") or ""
    assert text == REPLY
    assert events[-1][1] == "job.succeeded"
    chunks = [t for t, e in events if e == "chunk"]
    assert chunks[-1] - chunks[0] > 1.0  # frames pass as they come, not at the end
