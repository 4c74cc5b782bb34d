"""Hot swap, rollout and rollback over the catalog held in NATS KV (issue #15, deploy half), on the
session stack (the registry's own guarantees: tests/test_catalog_kv.py), with two fake vLLM engines
started here (the old version answers "one ...", the new one "two ..."), so that which
version served a request shows in its text as well as in the response's `model`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import httpx
import msgspec
import nats
import openai
import pytest

from orchestration.model_registry import ModelRegistry
from schemas.catalog import ModelEntry
from schemas.rollout import FlipInput
from switchyard.processes import ROOT, free_port
from tests.conftest import OTHER_KEY, Stack, scenario
from tests.test_catalog_kv import BASE, entry
from tests.eventually import eventually, eventually_async
from tests.fakes.vllm import FakeVLLM


@pytest.fixture(scope="module")
def engines():
    """Two fake vLLMs: the version in service ("old") and the candidate ("new")."""
    old, new = FakeVLLM(), FakeVLLM()
    old.replies["v-old"], new.replies["v-new"] = "one one one", "two two two"
    old.start(free_port())
    new.start(free_port())
    yield old, new
    old.stop()
    new.stop()


def _url(fake: FakeVLLM) -> str:
    return f"http://127.0.0.1:{fake.server.config.port}/v1"


async def _registry(stack: Stack) -> tuple[ModelRegistry, nats.NATS]:
    nc = await nats.connect(stack.nats_url)
    return await ModelRegistry.open(nc.jetstream(), BASE), nc


async def _versions(stack: Stack, engines, tenant: str = "", attempts: int = 3) -> tuple[str, str, str]:
    """A fresh alias on an old version, and a new version registered beside it: (alias, old, new)."""
    tag = uuid.uuid4().hex[:8]
    alias, old_id, new_id = f"chat-{tag}", f"chat-{tag}-v1", f"chat-{tag}-v2"
    registry, nc = await _registry(stack)
    await registry.put_model(entry(old_id, _url(engines[0]), "v-old", tenant))
    await registry.put_model(entry(new_id, _url(engines[1]), "v-new", tenant, attempts=attempts))
    await registry.flip(FlipInput(alias=alias, to=old_id, expect="", tenant=tenant))
    await nc.close()
    return alias, old_id, new_id


def _client(stack: Stack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=key or stack.key, max_retries=0, timeout=60)


def _served(client: openai.OpenAI, model: str, name: str = "ok") -> tuple[str, str]:
    """(response model, text) of one chat."""
    r = client.chat.completions.create(model=model, messages=scenario(name))
    return r.model, r.choices[0].message.content or ""


def _admin(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.proxy_url, headers={"authorization": f"Bearer {stack.key}"}, timeout=60)


async def replays(temporal, alias: str) -> None:
    """The rollout's history replays on today's workflow code (it stayed deterministic)."""
    from temporalio.worker import Replayer

    from orchestration.converter import data_converter
    from orchestration.rollout_workflow import RolloutWorkflow
    from proxy.endpoints.rollouts import rollout_workflow_id

    history = await temporal.get_workflow_handle(rollout_workflow_id(alias)).fetch_history()
    await Replayer(workflows=[RolloutWorkflow], data_converter=data_converter).replay_workflow(history)


def _messages(**params: object) -> list[dict[str, str]]:
    text = ";".join(f"{k}={v}" for k, v in {**params, "nonce": uuid.uuid4().hex}.items())
    return [{"role": "user", "content": text}]


def _alias(stack: Stack, alias: str) -> dict:
    with _admin(stack) as admin:
        r = admin.get(f"/admin/models/{alias}")
        assert r.status_code == 200, r.text
        return r.json()


def _rollout(stack: Stack, alias: str, body: dict) -> dict:
    with _admin(stack) as admin:
        r = admin.post(f"/admin/models/{alias}/rollouts", json=body)
        assert r.status_code == 202, r.text
        return r.json()


def _ended(stack: Stack, alias: str, timeout: float = 120) -> dict:
    def done() -> dict | None:
        rollout = _alias(stack, alias).get("rollout") or {}
        return rollout.get("result") if rollout.get("status") == "completed" else None

    return eventually(done, timeout=timeout, interval=0.25, what="the rollout's end")


async def test_a_flip_moves_new_requests_while_in_flight_streams_finish_on_the_old_version(stack: Stack, engines):
    alias, old_id, new_id = await _versions(stack, engines)
    client = _client(stack)
    assert await asyncio.to_thread(eventually, lambda: _served(client, alias) == (old_id, "one one one"))
    chunks: list = []

    def stream() -> None:
        for chunk in client.chat.completions.create(model=alias, messages=_messages(scenario="slow", delay=1),
                                                    stream=True):
            chunks.append(chunk)

    reader = threading.Thread(target=stream)
    reader.start()
    await eventually_async(lambda: any(c.choices and c.choices[0].delta.content for c in chunks))
    registry, nc = await _registry(stack)
    await registry.flip(FlipInput(alias=alias, to=new_id, expect=old_id))
    await nc.close()
    assert await asyncio.to_thread(eventually, lambda: _served(client, alias) == (new_id, "two two two"))
    await asyncio.to_thread(reader.join, 30)
    assert {c.model for c in chunks} == {old_id}  # the stream opened before the flip ended on the old version
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one one one"
    assert _alias(stack, alias)["previous"] == old_id


async def test_c16_streams_across_a_swap_and_a_rollback_do_not_fail(stack: Stack, engines):
    alias, old_id, new_id = await _versions(stack, engines)
    client = _client(stack)
    await asyncio.to_thread(eventually, lambda: _served(client, alias)[0] == old_id)
    stop, failures, served = threading.Event(), [], Counter()

    def load() -> None:
        while not stop.is_set():
            try:
                text, model = "", ""
                for chunk in client.chat.completions.create(model=alias, messages=scenario("ok"), stream=True):
                    model = chunk.model
                    text += chunk.choices[0].delta.content or "" if chunk.choices else ""
                served[(model, text)] += 1
            except Exception as exc:  # any failed request counts
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(16)]
    for t in threads:
        t.start()
    try:
        await eventually_async(lambda: sum(served.values()) >= 32, timeout=60)
        registry, nc = await _registry(stack)
        await registry.flip(FlipInput(alias=alias, to=new_id, expect=old_id))
        await nc.close()
        await eventually_async(lambda: served[(new_id, "two two two")] >= 32, timeout=60)
        with _admin(stack) as admin:
            r = await asyncio.to_thread(admin.post, f"/admin/models/{alias}/rollback", json={"reason": "test"})
        assert r.status_code == 200 and r.json()["target"] == old_id, r.text
        after = served[(old_id, "one one one")]
        await eventually_async(lambda: served[(old_id, "one one one")] >= after + 32, timeout=60)
    finally:
        stop.set()
        for t in threads:
            await asyncio.to_thread(t.join, 60)
    assert failures == []
    assert set(served) == {(old_id, "one one one"), (new_id, "two two two")}  # nothing else, nothing mixed


async def test_a_breach_after_the_flip_rolls_back_automatically(stack: Stack, engines, temporal):
    alias, old_id, new_id = await _versions(stack, engines, attempts=1)
    client = _client(stack)
    await asyncio.to_thread(eventually, lambda: _served(client, new_id)[0] == new_id)  # the worker has it
    monitor = {"duration_s": 300, "window_s": 5, "max_error_rate": 0.2, "min_requests": 3, "poll_s": 0.2}
    _rollout(stack, alias, {"to": new_id, "monitor": monitor})
    await asyncio.to_thread(eventually, lambda: _alias(stack, alias)["target"] == new_id, 60)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                _served(client, alias)
            except openai.APIError:
                pass  # the candidate's failures are the point

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        await asyncio.sleep(0)  # let traffic reach the new version before it breaks
        engines[1].failing = True
        broke = time.monotonic()
        state = await asyncio.to_thread(eventually, lambda: (s := _alias(stack, alias))["target"] == old_id and s,
                                        60, 0.1)
        took = time.monotonic() - broke
    finally:
        stop.set()
        engines[1].failing = False
        for t in threads:
            await asyncio.to_thread(t.join, 60)
    print(f"breach -> rollback: {took:.2f} s")
    assert state["status"] == "rolled_back" and "error rate" in state["reason"]
    result = await asyncio.to_thread(_ended, stack, alias)
    assert result["status"] == "rolled_back" and result["stage"] == "monitor"
    assert await asyncio.to_thread(_served, client, alias) == (old_id, "one one one")
    await replays(temporal, alias)


async def test_a_tenant_only_model_is_invisible_to_other_tenants(stack: Stack, engines):
    alias, old_id, _ = await _versions(stack, engines, tenant="other-tenant")
    owner, stranger = _client(stack, OTHER_KEY), _client(stack)
    assert await asyncio.to_thread(eventually, lambda: _served(owner, alias) == (old_id, "one one one"))
    assert {alias, old_id} <= {m.id for m in owner.models.list()}
    assert not {alias, old_id} & {m.id for m in stranger.models.list()}
    for name in (alias, old_id):
        with pytest.raises(openai.NotFoundError) as refused:
            stranger.chat.completions.create(model=name, messages=scenario("ok"))
        assert refused.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            stranger.models.retrieve(name)
    with _admin(stack) as h:  # the jobs API too
        r = h.post("/v1/jobs", json={"endpoint": "/v1/chat/completions",
                                     "body": {"model": alias, "messages": scenario("ok")}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


async def test_a_candidate_that_fails_verification_is_never_served(stack: Stack, engines):
    alias, old_id, new_id = await _versions(stack, engines)
    client = _client(stack)
    verify = {"cases": [{"messages": [{"role": "user", "content": "count"}], "expect": "one"}],
              "metric": "contains", "min_score": 1.0}
    _rollout(stack, alias, {"to": new_id, "verify": verify})
    result = await asyncio.to_thread(_ended, stack, alias)
    assert result["status"] == "failed" and result["stage"] == "verify" and result["score"] == 0.0
    state = _alias(stack, alias)
    assert state["target"] == old_id and not state.get("canary_target")
    assert await asyncio.to_thread(_served, client, alias) == (old_id, "one one one")


async def test_a_passing_candidate_goes_through_canary_and_flip(stack: Stack, engines, temporal):
    alias, old_id, new_id = await _versions(stack, engines)
    verify = {"cases": [{"messages": [{"role": "user", "content": "count"}], "expect": "two"}], "metric": "contains"}
    _rollout(stack, alias, {"to": new_id, "verify": verify, "canary_percent": 50, "canary_s": 1,
                            "monitor": {"duration_s": 1, "min_requests": 1000}})
    await asyncio.to_thread(eventually, lambda: _alias(stack, alias).get("canary_target") == new_id, 60, 0.05)
    result = await asyncio.to_thread(_ended, stack, alias)
    assert result["status"] == "deployed" and result["score"] == 1.0, result
    state = _alias(stack, alias)
    assert (state["target"], state["previous"], state["status"]) == (new_id, old_id, "deployed")
    await replays(temporal, alias)  # verify's child jobs, the canary, the flip and the monitor


async def test_a_vllm_lora_adapter_is_deployed_served_and_refused_with_vllms_errors(stack: Stack, engines, tmp_path):
    alias, old_id, _ = await _versions(stack, engines)
    new = engines[1]
    lora = f"lora-{uuid.uuid4().hex[:6]}"
    new.replies[lora] = "lora lora"
    spec = {"kind": "vllm_lora", "model_path": str(tmp_path),
            "entry": {"id": f"{alias}-{lora}", "task_queue": "gpu.test",
                      "engine": {"kind": "openai", "url": _url(new), "served_name": lora}}}
    _rollout(stack, alias, {"deploy": spec, "monitor": {"duration_s": 0.5, "min_requests": 1000}})
    assert (await asyncio.to_thread(_ended, stack, alias))["status"] == "deployed"
    assert new.loras[lora] == str(tmp_path)
    assert await asyncio.to_thread(_served, _client(stack), alias) == (f"{alias}-{lora}", "lora lora")
    missing = {**spec, "model_path": str(tmp_path / "absent"), "entry": {**spec["entry"], "id": f"{alias}-bad"}}
    missing["entry"]["engine"] = {**spec["entry"]["engine"], "served_name": lora + "-bad"}
    _rollout(stack, alias, {"deploy": missing})
    result = await asyncio.to_thread(_ended, stack, alias)
    assert result["status"] == "failed" and result["stage"] == "deploy" and "No adapter found" in result["reason"]
    assert _alias(stack, alias)["target"] == f"{alias}-{lora}"


async def test_rollout_and_rollback_from_the_cli_with_a_local_llama_server(stack: Stack, engines, tmp_path):
    from switchyard.processes import default_model_file

    alias, old_id, _ = await _versions(stack, engines)
    local_id = f"{alias}-local"
    spec = tmp_path / "candidate.yaml"
    spec.write_text(f"""kind: local_process
model_path: {default_model_file()}
engine_args: ["-c", "1024", "--parallel", "1"]
entry:
  id: {local_id}
  task_queue: gpu.test
  engine: {{kind: openai, url: "http://127.0.0.1:1/v1", served_name: smollm2-local, capabilities: [chat]}}
""")
    env = {"SWITCHYARD_BASE_URL": stack.proxy_url, "SWITCHYARD_API_KEY": stack.key, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "switchyard.cli", "models", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    out = await asyncio.to_thread(cli, "rollout", alias, "--to", str(spec), "--monitor-s", "1", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"status": "deployed"' in out.stdout
    client = _client(stack)
    r = await asyncio.to_thread(client.chat.completions.create, model=alias, max_tokens=8,
                                messages=[{"role": "user", "content": "Say hello."}])
    assert r.model == local_id and r.choices[0].message.content  # a real llama-server answered
    out = await asyncio.to_thread(cli, "rollback", alias, "--reason", "by hand")
    assert out.returncode == 0 and f"{alias} -> {old_id} (rolled_back)" in out.stdout, out.stdout + out.stderr
    assert await asyncio.to_thread(_served, client, alias) == (old_id, "one one one")
    out = await asyncio.to_thread(cli, "show", alias)
    assert '"previous": "%s"' % local_id in out.stdout and '"reason": "by hand"' in out.stdout


async def test_the_triton_deployer_drives_the_repository_api_of_a_real_triton(stack: Stack, tmp_path, monkeypatch):
    """On a PyTriton of its own (the session's serves other tests). PyTriton guards the repository API
    with an access token, which the deployer takes from the environment. A PyTriton model unloaded
    cannot be loaded again (its Python handler is not reattached), so the serving part runs on the model
    as PyTriton loaded it, and the load path is checked on a model the repository lacks."""
    from orchestration.deployers import DeployError, TritonDeployer
    from schemas.rollout import DeploySpec
    from tests.triton_server import start_triton, stop_triton

    monkeypatch.setenv("SWITCHYARD_TRITON_ACCESS_TOKEN", uuid.uuid4().hex)
    url, server = await asyncio.to_thread(start_triton, tmp_path, ("minilm",))
    try:
        model_id = f"minilm-{uuid.uuid4().hex[:6]}"
        spec = DeploySpec(kind="triton", entry=msgspec.convert({
            "id": model_id, "task_queue": "gpu.test", "embeddings": {"dimensions": 384},
            "engine": {"kind": "triton", "url": url, "served_name": "minilm", "capabilities": ["embeddings"],
                       "triton_token_count_output": "prompt_tokens", "triton_max_batch": 32}}, ModelEntry))
        deployer = TritonDeployer()
        deployed = await deployer.deploy(spec)  # ready already: nothing to load
        registry, nc = await _registry(stack)
        await registry.put_model(deployed)
        await registry.flip(FlipInput(alias=f"embed-{model_id}", to=model_id, expect=""))
        await nc.close()
        client = _client(stack)

        def embedded():
            r = client.embeddings.create(model=f"embed-{model_id}", input="hot swap")
            return r.model == model_id and len(r.data[0].embedding) == 384

        assert await asyncio.to_thread(eventually, embedded, 60)
        async with httpx.AsyncClient() as h:
            ready = f"{url}/v2/models/minilm/ready"
            await deployer.undeploy(spec, model_id)  # POST .../unload
            assert (await h.get(ready)).status_code == 400
            await deployer.undeploy(spec, model_id)  # again: a compensation may repeat
            # Loading it again is left out: PyTriton cannot re-initialise a model it unloaded (its
            # Python stub is gone; the load answers 400 "version 1 is at UNAVAILABLE state").
            assert (await h.post(f"{url}/v2/repository/models/minilm/unload")).status_code == 403  # no token
        absent = DeploySpec(kind="triton", entry=msgspec.structs.replace(spec.entry, engine=msgspec.structs.replace(
            spec.entry.engine, served_name="not-in-the-repository")))
        with pytest.raises(DeployError, match="failed to load"):
            await deployer.deploy(absent)
    finally:
        await asyncio.to_thread(stop_triton, server)


async def test_a_cancelled_rollout_puts_the_alias_back(stack: Stack, engines, temporal):
    from temporalio.client import WorkflowExecutionStatus

    from proxy.endpoints.rollouts import rollout_workflow_id

    alias, old_id, new_id = await _versions(stack, engines)
    _rollout(stack, alias, {"to": new_id, "monitor": {"duration_s": 300, "min_requests": 1000}})
    await asyncio.to_thread(eventually, lambda: _alias(stack, alias)["target"] == new_id, 60)
    handle = temporal.get_workflow_handle(rollout_workflow_id(alias))
    await handle.cancel()
    await eventually_async(lambda: _alias(stack, alias)["target"] == old_id, 60)
    await eventually_async(lambda: _status_is(handle, WorkflowExecutionStatus.CANCELED), 30)
    await replays(temporal, alias)


async def _status_is(handle, status) -> bool:
    return (await handle.describe()).status == status
