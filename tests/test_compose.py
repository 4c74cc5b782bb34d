"""The compose deployment, checked without a Docker engine: the Compose Specification's JSON schema,
the shape the operations docs promise, the NATS configs with the real nats-server, and the image."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from orchestration.catalog import load_catalog
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
            if re.search(r"PASSWORD|PWD|KEY|TOKEN", key) and not key.startswith("NGINX_TLS"):
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


@pytest.mark.parametrize("name", ["nats.conf", "cluster.conf"])
def test_nats_config_is_accepted_by_nats_server(name: str):
    r = subprocess.run([tool("nats-server"), "-t", "-c", str(COMPOSE / "nats" / name)],
                       env={**os.environ, "NATS_SERVER_NAME": "nats-1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_single_node_nats_config_serves_jetstream(tmp_path: Path):
    conf = (COMPOSE / "nats" / "nats.conf").read_text().replace("store_dir: /data", f"store_dir: {tmp_path}/js")
    (tmp_path / "nats.conf").write_text(conf)
    monitor = free_port()
    proc = subprocess.Popen([tool("nats-server"), "-c", str(tmp_path / "nats.conf"), "-a", "127.0.0.1",
                             "-p", str(free_port()), "-m", str(monitor)],
                            env={**os.environ, "NATS_SERVER_NAME": "nats-1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=1) as r:
                    assert json.load(r) == {"status": "ok"}
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/jsz", timeout=1) as r:
                    assert json.load(r)["config"]["store_dir"].startswith(str(tmp_path))
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)


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
        assert env["SWITCHYARD_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in sorted(nodes)], name
        assert env["SWITCHYARD_NATS_REPLICAS"] == "3", name
    assert compose["x-switchyard"]["environment"]["SWITCHYARD_NATS_REPLICAS"] == "1"
