"""The compose deployment, checked without a Docker engine: the Compose Specification's JSON schema,
the shape the operations docs promise, the NATS configs with the real nats-server, and the image."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import jsonschema
import nats
import pytest
import yaml
from nats.js.api import StreamConfig
from nats.js.errors import KeyNotFoundError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from orchestration.catalog import load_catalog
from orchestration.natsconfig import auth_from_env
from orchestration.offers import dispatch_group, dispatch_subject
from orchestration.publisher import EventPublisher
from orchestration.streams import (SETTLE_STREAM, STREAM, ensure_secrets_bucket, ensure_settle_stream, ensure_stream,
                                   job_subject, read_events)
from gatekeeping.keystore import BUCKET_KEYS, BUCKET_TENANTS, KeyStore
from gatekeeping.limits import Limiter
from switchyard.processes import ROOT, free_port, tool

COMPOSE = ROOT / "compose"
SCHEMA = json.loads((ROOT / ".cache" / "compose-schema" / "compose_spec.json").read_text())
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.nats-cluster.yml"]
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def load(name: str) -> dict:
    return yaml.safe_load((COMPOSE / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_validates_against_the_compose_spec(name: str):
    jsonschema.Draft7Validator(SCHEMA).validate(load(name))


def test_the_schema_check_rejects_a_broken_file(compose: dict):
    broken = copy.deepcopy(compose)
    broken["services"]["proxy"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(broken)


def test_nginx_is_the_only_published_port(compose: dict):
    published = {name for name, svc in compose["services"].items() if svc.get("ports")}
    assert published == {"nginx"}
    assert compose["services"]["nginx"]["ports"] == ["${SWITCHYARD_HTTPS_PORT:-443}:443"]


def test_proxy_runs_two_replicas_listening_on_all_interfaces(compose: dict):
    proxy = compose["services"]["proxy"]
    assert proxy["command"] == ["switchyard", "proxy"]
    assert proxy["deploy"]["replicas"] == 2
    assert proxy["environment"]["SWITCHYARD_HOST"] == "0.0.0.0"
    assert "/readyz" in " ".join(proxy["healthcheck"]["test"])
    for name in ("SWITCHYARD_TEMPORAL_ADDRESS", "SWITCHYARD_NATS_URL", "SWITCHYARD_CATALOG"):
        assert proxy["environment"][name]


def test_long_running_services_restart_and_report_health(compose: dict):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":
            continue
        assert svc.get("restart") == "unless-stopped", name
        # Workers have no health endpoint yet; their restart policy covers a crash.
        if not name.startswith("worker-"):
            assert svc.get("healthcheck", {}).get("test"), name


def test_engines_sit_behind_profiles_except_the_cpu_default(compose: dict):
    services = compose["services"]
    for name in ("vllm", "tgi", "triton"):
        assert services[name]["profiles"] == ["gpu"]
        assert services[name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "profiles" not in services["llama"]
    assert "SmolLM2-135M" in " ".join(services["llama"]["command"])


def test_named_volumes_are_declared_and_secrets_come_from_the_environment(compose: dict):
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith("."):
                assert source in declared, f"{name}: {source}"
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|PWD|KEY|TOKEN", key) and not key.startswith(("NGINX_TLS", "NATS_TLS")):
                assert str(value).startswith("${"), f"{name}.{key} holds a literal secret"


def test_every_catalog_queue_has_a_worker_service(compose: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SWITCHYARD_ENGINE_URL", raising=False)
    catalog = load_catalog(COMPOSE / "model_catalog.yaml")
    assert compose["configs"]["catalog"]["file"] == "./model_catalog.yaml"
    polled = set()
    for name, svc in compose["services"].items():
        if name.startswith("worker-"):
            command = svc["command"]
            assert command[:2] == ["switchyard", "worker"]
            polled.add(command[command.index("--queues") + 1])
    assert {m.task_queue for m in catalog.models} <= polled


def test_nginx_template_variables_are_all_set_by_compose(compose: dict):
    template = (COMPOSE / "nginx" / "templates" / "switchyard.conf.template").read_text()
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", template))
    env = compose["services"]["nginx"]["environment"]
    assert needed <= set(env)
    allowed = re.compile(env["NGINX_ENVSUBST_FILTER"])
    assert all(allowed.search(name) for name in needed)


def test_env_example_names_every_variable_compose_reads():
    example = (COMPOSE / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    used = set()
    for name in COMPOSE_FILES:
        used |= set(_VAR.findall((COMPOSE / name).read_text()))
    assert used <= documented, used - documented


# The passwords a test gives the compose NATS config (compose/.env in a deployment).
PASSWORDS = {user: "sy" + secrets.token_hex(16) for user in ("proxy", "worker", "admin")}


@pytest.fixture(scope="module")
def nats_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nats-tls")
    subprocess.run(["sh", str(COMPOSE / "nats" / "gen-certs.sh"), str(out)], check=True, capture_output=True)
    return out


def nats_server_env(certs: Path) -> dict[str, str]:
    """What compose gives the nats service."""
    return {**os.environ, "NATS_SERVER_NAME": "nats-1", "NATS_TLS_CERT": str(certs / "server.crt"),
            "NATS_TLS_KEY": str(certs / "server.key"), "NATS_TLS_CA": str(certs / "ca.crt"),
            **{f"NATS_{user.upper()}_PASSWORD": pw for user, pw in PASSWORDS.items()}}


@contextlib.contextmanager
def compose_nats(tmp_path: Path, certs: Path) -> Iterator[tuple[int, int]]:
    """nats-server running compose/nats/nats.conf (store and ports moved): (client port, monitor port)."""
    conf = (COMPOSE / "nats" / "nats.conf").read_text().replace("store_dir: /data", f"store_dir: {tmp_path}/js")
    (tmp_path / "nats.conf").write_text(conf)
    port, monitor = free_port(), free_port()
    proc = subprocess.Popen([tool("nats-server"), "-c", str(tmp_path / "nats.conf"), "-a", "127.0.0.1",
                             "-p", str(port), "-m", str(monitor)], env=nats_server_env(certs),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=1) as r:
                    assert json.load(r) == {"status": "ok"}
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield port, monitor
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("name", ["nats.conf", "cluster.conf"])
def test_nats_config_is_accepted_by_nats_server(name: str, nats_certs: Path):
    r = subprocess.run([tool("nats-server"), "-t", "-c", str(COMPOSE / "nats" / name)],
                       env=nats_server_env(nats_certs), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nats_config_refuses_to_start_without_the_passwords(nats_certs: Path):
    env = nats_server_env(nats_certs)
    del env["NATS_WORKER_PASSWORD"]
    r = subprocess.run([tool("nats-server"), "-t", "-c", str(COMPOSE / "nats" / "nats.conf")],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "NATS_WORKER_PASSWORD" in r.stdout + r.stderr


def test_single_node_nats_config_serves_jetstream(tmp_path: Path, nats_certs: Path):
    with compose_nats(tmp_path, nats_certs) as (_, monitor):
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/jsz", timeout=1) as r:
            assert json.load(r)["config"]["store_dir"].startswith(str(tmp_path))


def test_image_is_multi_stage_non_root_and_pinned():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, re.M)
    assert stages[-1] == "runtime" and "build" in stages and "model" in stages
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001", runtime, re.M)
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "pip install -c constraints.txt ." in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".cache", "var"} <= set(ignored)


def test_constraints_pin_every_runtime_dependency():
    pins = {canonicalize_name(line.split("==")[0])
            for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    seen: set[str] = set()
    todo = ["switchyard"]
    while todo:
        dist = metadata.distribution(todo.pop())
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name not in seen:
                seen.add(name)
                todo.append(req.name)
    assert seen - pins == set()


def test_the_cluster_overlay_gives_every_switchyard_process_all_nodes_and_3_replicas(compose: dict):
    overlay = load("docker-compose.nats-cluster.yml")
    ours = {name for name, svc in compose["services"].items() if svc.get("command", [""])[0] == "switchyard"}
    assert ours and {"proxy", "worker-gpu-default"} <= ours
    nodes = {name for name, svc in overlay["services"].items() if name.startswith("nats")}
    assert nodes == {"nats", "nats-2", "nats-3"}
    for name in ours:
        env = overlay["services"][name]["environment"]
        assert env["SWITCHYARD_NATS_URL"].split(",") == [f"tls://{n}:4222" for n in sorted(nodes)], name
        assert env["SWITCHYARD_NATS_REPLICAS"] == "3", name
    assert compose["x-switchyard"]["environment"]["SWITCHYARD_NATS_REPLICAS"] == "1"


def test_every_nats_node_gets_what_its_config_reads(compose: dict):
    overlay = load("docker-compose.nats-cluster.yml")
    needed = set()
    for name in ("nats.conf", "cluster.conf"):
        text = (COMPOSE / "nats" / name).read_text()
        defined = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", text, re.M))  # the file's own variables
        needed |= set(re.findall(r":\s*\$([A-Z][A-Z0-9_]*)", text)) - defined
    assert {"NATS_TLS_CERT", "NATS_PROXY_PASSWORD", "NATS_WORKER_PASSWORD"} <= needed
    nodes = {"nats": {**compose["services"]["nats"]["environment"]},
             **{n: svc["environment"] for n, svc in overlay["services"].items() if n in ("nats-2", "nats-3")}}
    for name, env in nodes.items():
        assert needed <= set(env), (name, needed - set(env))
        for var in needed:
            if "PASSWORD" in var:
                assert str(env[var]).startswith("${") and ":?" in env[var], (name, var)  # required, no default


def test_compose_services_use_tls_their_own_nats_user_and_minio(compose: dict):
    services = compose["services"]
    ours = {name: svc for name, svc in services.items() if svc.get("command", [""])[0] == "switchyard"}
    users = {}
    for name, svc in ours.items():
        env = {**compose["x-switchyard"]["environment"], **(svc.get("environment") or {})}
        assert env["SWITCHYARD_NATS_URL"].startswith("tls://"), name
        assert env["SWITCHYARD_NATS_CA"] in {c["target"] for c in svc["configs"]}, name
        assert env["SWITCHYARD_NATS_PASSWORD"].startswith("${SWITCHYARD_NATS_"), name
        assert ":?" in env["SWITCHYARD_NATS_PASSWORD"], name
        users[name] = env["SWITCHYARD_NATS_USER"]
        # Claim checks in the shared MinIO, not in each container's own directory.
        assert env["SWITCHYARD_OBJECT_STORE"] == "s3", name
        assert env["SWITCHYARD_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["SWITCHYARD_S3_BUCKET"]
        assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_ROOT_USER")
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD")
        assert svc["depends_on"]["minio"]["condition"] == "service_healthy", name
    assert users.pop("proxy") == "proxy"
    assert set(users.values()) == {"worker"}
    assert compose["configs"]["nats_ca"]["file"] == "./nats/tls/ca.crt"


def test_generated_certificates_are_not_committed():
    tracked = subprocess.run(["git", "ls-files", "compose/nats/tls"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout.split() in ([], ["compose/nats/tls/.gitignore"])
    ignored = subprocess.run(["git", "check-ignore", "-q", "compose/nats/tls/server.key"], cwd=ROOT)
    assert ignored.returncode == 0


# ---- the compose NATS config, enforced by the real nats-server ------------------------------------------


class Conn:
    """A connection as a compose service makes it (orchestration.natsconfig), and the errors the
    server sent it (a permission violation is an async -ERR, not an exception)."""

    def __init__(self, nc: nats.aio.client.Client, errors: list[str]):
        self.nc, self.errors = nc, errors
        self.js = nc.jetstream(timeout=1.5)

    def violated(self, what: str) -> bool:
        return any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors)


async def connect_as(port: int, certs: Path, user: str | None, password: str | None = None,
                     ca: bool = True) -> Conn:
    env = {"SWITCHYARD_NATS_CA": str(certs / "ca.crt")} if ca else {}
    if user:
        env |= {"SWITCHYARD_NATS_USER": user, "SWITCHYARD_NATS_PASSWORD": password or PASSWORDS[user]}
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(f"tls://127.0.0.1:{port}", allow_reconnect=False, connect_timeout=3,
                            max_reconnect_attempts=0, error_cb=on_error, **auth_from_env(env).connect_options())
    return Conn(nc, errors)


async def test_compose_nats_refuses_clients_without_a_user_or_tls(tmp_path: Path, nats_certs: Path):
    with compose_nats(tmp_path, nats_certs) as (port, _):
        for user, password, ca in ((None, None, True), ("worker", "sy-wrong", True), ("proxy", None, False)):
            with pytest.raises(Exception):
                conn = await connect_as(port, nats_certs, user, password, ca)
                await conn.nc.close()
        conn = await connect_as(port, nats_certs, "worker")  # the right one gets in
        assert conn.nc.is_connected
        await conn.nc.close()


async def test_compose_nats_users_can_do_their_work_and_no_more(tmp_path: Path, nats_certs: Path):
    with compose_nats(tmp_path, nats_certs) as (port, _):
        proxy = await connect_as(port, nats_certs, "proxy")
        worker = await connect_as(port, nats_certs, "worker")
        try:
            await _proxy_sets_up_and_worker_works(proxy, worker)
            await _worker_cannot_reach_the_proxys_records(proxy, worker)
        finally:
            await worker.nc.close()
            await proxy.nc.close()


async def _proxy_sets_up_and_worker_works(proxy: Conn, worker: Conn) -> None:
    # The proxy's start-up (proxy/runtime.py): every stream and bucket, keys, tenants, limits.
    await ensure_stream(proxy.js)
    await ensure_settle_stream(proxy.js)
    proxy_secrets = await ensure_secrets_bucket(proxy.js)
    store = await KeyStore.open(proxy.js)
    limiter = await Limiter.open(proxy.js)
    await store.create_tenant("acme")
    key, _ = await store.create_key("acme")
    assert store.authenticate(key).tenant == "acme"
    await proxy_secrets.put("job-1", b"whsec-1")
    # A worker's start-up only looks the streams up (no create or update right).
    await ensure_stream(worker.js)
    await ensure_settle_stream(worker.js)
    worker_secrets = await ensure_secrets_bucket(worker.js)
    assert (await worker_secrets.get("job-1")).value == b"whsec-1"  # a webhook delivery signs with it
    # Job events: the worker publishes, the proxy relays them live and reads them back.
    live = await proxy.nc.subscribe(job_subject("job-1"))
    await proxy.nc.flush()
    publisher = EventPublisher(worker.js, "job-1", 1, 0)
    await publisher.started(resumed_from=0)
    await publisher.add_text("hello")
    await publisher.cancelled("done")
    assert [e.seq for e in await read_events(worker.js, "job-1")] == [1, 2, 3]
    assert [e.seq for e in await read_events(proxy.js, "job-1")] == [1, 2, 3]
    assert (await live.next_msg(timeout=2)).subject == job_subject("job-1")
    # Dispatch offers (request/reply), cancels and settlements.
    offers = await worker.nc.subscribe(dispatch_subject("gpu.x"), queue=dispatch_group("gpu.x"))
    cancels = await worker.nc.subscribe("sy.cancel.*")
    reply = asyncio.ensure_future(proxy.nc.request(dispatch_subject("gpu.x"), b"offer", timeout=3))
    offer = await offers.next_msg(timeout=3)
    await offer.respond(b"taken")
    assert (await reply).data == b"taken"
    await proxy.nc.publish("sy.cancel.job-1", b"")
    assert (await cancels.next_msg(timeout=3)).subject == "sy.cancel.job-1"
    await worker.js.publish("sy.settle.job-1", b"{}")
    settle = await proxy.js.pull_subscribe("sy.settle.>", durable="settler", stream=SETTLE_STREAM)
    msgs = await settle.fetch(1, timeout=3)
    await msgs[0].ack()
    assert limiter is not None
    await store.close()
    assert not proxy.errors and not worker.errors, (proxy.errors, worker.errors)


async def _worker_cannot_reach_the_proxys_records(proxy: Conn, worker: Conn) -> None:
    tenants = await proxy.js.key_value(BUCKET_TENANTS)
    with pytest.raises(Exception):  # the API key records
        await worker.js.key_value(BUCKET_KEYS)
    assert worker.violated(f"$JS.API.STREAM.INFO.KV_{BUCKET_KEYS}"), worker.errors
    with pytest.raises(Exception):
        await worker.js.get_msg(f"KV_{BUCKET_KEYS}", subject=f"$KV.{BUCKET_KEYS}.>", direct=True)
    with pytest.raises(Exception):  # an admin record: an operator tenant of its own
        await worker.js.publish(f"$KV.{BUCKET_TENANTS}.evil", b'{"id":"evil","operator":true}')
    assert worker.violated(f"$KV.{BUCKET_TENANTS}.evil")
    with pytest.raises(KeyNotFoundError):
        await tenants.get("evil")
    # Nor through a stream of its own making: a stream can source another stream's messages.
    with pytest.raises(Exception):
        await worker.js.add_stream(StreamConfig(name="COPY", subjects=["copy.>"]))
    info = await proxy.js.stream_info(STREAM)
    with pytest.raises(Exception):
        await worker.js.update_stream(info.config.evolve(max_msgs=10))
    assert worker.violated(f"$JS.API.STREAM.UPDATE.{STREAM}")
    # Nor the proxy's replies (KV reads of keys come back on the proxy's inbox).
    await worker.nc.subscribe("_INBOX.proxy.>")
    await worker.nc.subscribe(f"$KV.{BUCKET_KEYS}.>")
    await worker.nc.flush()
    await asyncio.sleep(0.2)
    assert worker.violated('Subscription to "_INBOX.proxy.>"')
    assert worker.violated(f'Subscription to "$KV.{BUCKET_KEYS}.>"')
    # And the proxy writes no job events (only workers do).
    with pytest.raises(Exception):
        await proxy.js.publish(job_subject("job-2"), b"{}")
    assert proxy.violated(job_subject("job-2"))
