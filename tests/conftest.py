"""Starts the real stack once per session: Temporal dev server, NATS JetStream, llama-server,
fakes of vLLM, TGI and Triton, one worker and the proxy, all on free loopback ports, all stopped at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import openai
import pytest
from temporalio.client import Client

from orchestration.codec import new_key_entry
from orchestration.converter import data_converter
from switchyard.processes import (
    ROOT,
    Managed,
    free_port,
    start_embedding_engine,
    start_engine,
    start_nats,
    start_python,
    start_temporal,
    wait_http,
)
from tests.eventually import eventually
from tests.fakes.receiver import Receiver
from tests.fakes.tgi import FakeTGI
from tests.fakes.triton import FakeTriton
from tests.fakes.vllm import FakeVLLM
from tests.nats_fixture import running_nats
from tests.triton_server import start_triton, stop_triton

MODEL = "smollm2-135m-instruct"
OTHER_KEY = "sk-sy-other-" + uuid.uuid4().hex
# Payloads in Temporal are encrypted in tests too: the stack's processes inherit this key, and this
# process's clients (the `temporal` fixture, replays) read it through orchestration.converter.
os.environ.setdefault("SWITCHYARD_PAYLOAD_KEYS", new_key_entry("test"))


@dataclass
class Stack:
    base: Path
    key: str
    proxy_url: str
    temporal_address: str
    nats_url: str
    victim_port: int
    env: dict[str, str]
    procs: dict[str, Managed] = field(default_factory=dict)
    fake: FakeVLLM | None = None
    tgi: FakeTGI | None = None
    triton: FakeTriton | None = None
    triton_url: str = ""  # the real Triton (compose/triton/serve.py)

    def restart_proxy(self) -> None:
        self.procs["proxy"].stop()
        proxy = start_python("proxy", ["proxy"], self.base / "log", None, self.env)
        self.procs["proxy"] = proxy
        wait_http(proxy, self.proxy_url + "/healthz", 60)

    def restart_worker(self, kill: bool = False) -> None:
        old = self.procs["worker"]
        old.kill() if kill else old.stop()
        self.procs["worker"] = start_python("worker", ["worker"], self.base / "log", None, self.env)

    def logs(self) -> str:
        return "".join((self.base / "log" / f"{name}.log").read_text(errors="replace")
                       for name in ("proxy", "worker") if (self.base / "log" / f"{name}.log").exists())


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("stack")
    log_dir = base / "log"
    ports = {name: free_port() for name in ("temporal", "nats", "engine", "embed", "fake", "tgi", "triton",
                                            "dead", "victim", "proxy")}
    started: list[Managed] = []
    fake = FakeVLLM()
    tgi = FakeTGI()
    triton = FakeTriton()
    key = "sk-sy-test-" + uuid.uuid4().hex
    env = {
        "SWITCHYARD_TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "SWITCHYARD_NATS_URL": f"nats://127.0.0.1:{ports['nats']}",
        "SWITCHYARD_ENGINE_URL": f"http://127.0.0.1:{ports['engine']}/v1",
        "EMBED_ENGINE_URL": f"http://127.0.0.1:{ports['embed']}/v1",
        "SWITCHYARD_OBJECT_DIR": str(base / "objects"),
        "FAKE_ENGINE_URL": f"http://127.0.0.1:{ports['fake']}/v1",
        "FAKE_TGI_URL": f"http://127.0.0.1:{ports['tgi']}",
        "FAKE_TRITON_URL": f"http://127.0.0.1:{ports['triton']}",
        "DEAD_ENGINE_PORT": str(ports["dead"]),
        "VICTIM_ENGINE_URL": f"http://127.0.0.1:{ports['victim']}/v1",
        "SWITCHYARD_CATALOG": str(ROOT / "tests" / "catalog.yaml"),
        "SWITCHYARD_PORT": str(ports["proxy"]),
        "SWITCHYARD_DEMO_KEY": key,
        "SWITCHYARD_PAYLOAD_KEYS": os.environ["SWITCHYARD_PAYLOAD_KEYS"],
        "SWITCHYARD_API_KEYS": f"other-tenant:user:{OTHER_KEY}",
        "SWITCHYARD_KEEPALIVE_S": "1",
        "SWITCHYARD_HEADER_WAIT_S": "4",
        "SWITCHYARD_LOG_LEVEL": "DEBUG",
        "SWITCHYARD_QUEUES": "gpu.test,gpu.single,gpu.audio",
        "SWITCHYARD_WEBHOOK_ALLOW": "127.0.0.1/32",
        "SWITCHYARD_WEBHOOK_BASE_DELAY_S": "0.2",
        "SWITCHYARD_METRICS_PORT": str(free_port()),  # the worker's Prometheus /metrics
        "SWITCHYARD_DEPLOY_LOG_DIR": str(base / "deploys"),  # engines the worker deploys: their pid files
    }
    real_triton = None
    try:
        triton_url, real_triton = start_triton(log_dir)
        env["TRITON_URL"] = triton_url
        started.append(start_temporal(ports["temporal"], base / "temporal.db", log_dir))
        started.append(start_nats(ports["nats"], base / "js", log_dir))
        started.append(start_engine(ports["engine"], log_dir))
        started.append(start_embedding_engine(ports["embed"], log_dir))
        fake.start(ports["fake"])
        tgi.start(ports["tgi"])
        triton.start(ports["triton"])
        started.append(start_python("worker", ["worker"], log_dir, None, env))
        proxy = start_python("proxy", ["proxy"], log_dir, None, env)
        started.append(proxy)
        wait_http(proxy, f"http://127.0.0.1:{ports['proxy']}/healthz", 60)
        s = Stack(base, key, f"http://127.0.0.1:{ports['proxy']}", env["SWITCHYARD_TEMPORAL_ADDRESS"],
                  env["SWITCHYARD_NATS_URL"], ports["victim"], env, {m.name: m for m in started}, fake, tgi, triton,
                  triton_url)
        yield s
    finally:
        for m in reversed(started):
            m.stop()
        if "s" in locals():
            for m in s.procs.values():
                m.stop()
        fake.stop()
        tgi.stop()
        triton.stop()
        if real_triton is not None:
            stop_triton(real_triton)
        stop_deployed(base / "deploys")


def stop_deployed(pid_dir: Path) -> None:
    """The engines the worker deployed (hot swaps, fine-tuned models) outlive it by design; the
    session stops them by their pid files."""
    for pid_file in pid_dir.glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            if "llama-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (ValueError, OSError):
            pass


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=stack.key, max_retries=0, timeout=60)


@pytest.fixture
def http(stack: Stack):
    with httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"},
                      timeout=60) as c:
        yield c


@pytest.fixture
async def temporal(stack: Stack) -> Client:
    return await Client.connect(stack.temporal_address, data_converter=data_converter)


@pytest.fixture
async def js(stack: Stack):
    nc = await nats.connect(stack.nats_url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture(scope="module")
def receiver():
    """A webhook receiver on a free loopback port (`.base` is its URL) recording what it is sent."""
    r = Receiver()
    port = free_port()
    r.start(port)
    r.base = f"http://127.0.0.1:{port}"
    yield r
    r.stop()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory):
    """A nats-server with JetStream shared by one test module (its own, so that modules do not see each
    other's streams and buckets)."""
    with running_nats(tmp_path_factory.mktemp("nats")) as url:
        yield url


def scenario(name: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"scenario={name};nonce={uuid.uuid4().hex}"}]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 API server on loopback (moto's standalone server)."""
    pytest.importorskip("moto.server")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    def answering() -> bool:
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            return True
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited") from None
            return False

    try:
        eventually(answering, timeout=30, what="the moto server")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
