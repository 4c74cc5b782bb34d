"""A new model added by YAML alone: a catalog entry plus a proxy and a worker (re)started with the
catalog, on the new model's own task queue, and the model is listed and served. No code changes."""

from __future__ import annotations

import uuid

import openai
import pytest

from switchyard.processes import ROOT, free_port, start_python, wait_http
from tests.conftest import Stack, scenario
from tests.fakes.vllm import REPLY


@pytest.fixture
def restarted(stack: Stack, tmp_path):
    """A proxy + worker pair started with a copy of the suite's catalog plus one new entry."""
    model, queue = f"yaml-only-{uuid.uuid4().hex[:6]}", f"gpu.yaml-{uuid.uuid4().hex[:8]}"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text((ROOT / "tests" / "catalog.yaml").read_text() + f"""\
  - id: {model}
    engine: {{kind: openai, url: "${{FAKE_ENGINE_URL}}", served_name: fake-model}}
    task_queue: {queue}
    max_concurrency: 2
    timeouts: {{schedule_to_start_s: 20, start_to_close_s: 60, heartbeat_s: 5}}
""")
    port = free_port()
    env = {**stack.env, "SWITCHYARD_CATALOG": str(catalog), "SWITCHYARD_PORT": str(port),
           "SWITCHYARD_QUEUES": queue, "SWITCHYARD_CPU_QUEUE": queue + ".cpu", "SWITCHYARD_METRICS_PORT": str(free_port())}
    procs = []
    try:
        procs.append(start_python("worker-yaml", ["worker"], stack.base / "log", None, env))
        procs.append(start_python("proxy-yaml", ["proxy"], stack.base / "log", None, env))
        wait_http(procs[-1], f"http://127.0.0.1:{port}/healthz", 60)
        yield model, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=stack.key, max_retries=0,
                                   timeout=60)
    finally:
        for p in reversed(procs):
            p.stop()


def test_new_model_added_by_yaml_alone_is_served_after_a_restart(client: openai.OpenAI, restarted):
    model, fresh = restarted
    with pytest.raises(openai.NotFoundError):  # the running proxy still has the old catalog
        client.chat.completions.create(model=model, messages=scenario("ok"))
    assert model not in {m.id for m in client.models.list()}

    assert model in {m.id for m in fresh.models.list()}
    done = fresh.chat.completions.create(model=model, messages=scenario("ok"))
    assert done.model == model
    assert done.choices[0].message.content == REPLY
    stream = fresh.chat.completions.create(model=model, messages=scenario("ok"), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY


def test_an_alias_serves_the_model_under_its_id(client: openai.OpenAI):
    done = client.chat.completions.create(model="fake-vllm-latest", messages=scenario("ok"))
    assert done.model == "fake-vllm" and done.choices[0].message.content == REPLY
    stream = client.chat.completions.create(model="fake-vllm-latest", messages=scenario("ok"), stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} == {"fake-vllm"}
    ids = [m.id for m in client.models.list()]
    assert "fake-vllm" in ids and "fake-vllm-latest" not in ids  # ids only
    assert client.models.retrieve("fake-vllm-latest").id == "fake-vllm"
