"""The model catalog is validated at start, with errors that name the bad field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestration.catalog import CatalogError, load_catalog, parse_catalog
from switchyard.processes import ROOT

GOOD = """
version: 1
models:
  - id: m1
    engine: {kind: openai, url: "http://127.0.0.1:9/v1"}
    task_queue: gpu.a
"""


def test_the_shipped_catalog_is_valid():
    catalog = load_catalog(ROOT / "model_catalog.yaml")
    assert catalog.get("smollm2-135m-instruct") is not None


def test_defaults_fill_in():
    m = parse_catalog(GOOD).models[0]
    assert m.retry.maximum_attempts == 3 and m.timeouts.heartbeat_s == 10.0


@pytest.mark.parametrize("bad, field", [
    (GOOD.replace("kind: openai", "kind: carrier-pigeon"), "$.models[0].engine.kind"),
    (GOOD.replace('url: "http://127.0.0.1:9/v1"', "url: ftp://x"), "$.models[0].engine.url"),
    (GOOD.replace("task_queue: gpu.a", "task_queue: 7"), "$.models[0].task_queue"),
    (GOOD + "    max_concurrency: 0\n", "$.models[0].max_concurrency"),
    (GOOD + "    retry: {maximum_attempts: two}\n", "$.models[0].retry.maximum_attempts"),
    (GOOD + "    surprise: 1\n", "surprise"),
    (GOOD.replace("version: 1", "version: 2"), "$.version"),
    (GOOD + GOOD.split("models:\n")[1], "$.models[*].id"),
])
def test_bad_fields_are_named(bad: str, field: str):
    with pytest.raises(CatalogError) as info:
        parse_catalog(bad, "catalog.yaml")
    assert field in str(info.value)
    assert "catalog.yaml" in str(info.value)


def test_env_substitution(monkeypatch):
    text = GOOD.replace('"http://127.0.0.1:9/v1"', '"${X_ENGINE:-http://127.0.0.1:1/v1}"')
    assert parse_catalog(text).models[0].engine.url == "http://127.0.0.1:1/v1"
    monkeypatch.setenv("X_ENGINE", "http://engine:8000/v1")
    assert parse_catalog(text).models[0].engine.url == "http://engine:8000/v1"
    with pytest.raises(CatalogError, match="NOT_SET_ANYWHERE"):
        parse_catalog(GOOD.replace("gpu.a", "${NOT_SET_ANYWHERE}"))


def test_cli_validate_reports_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace("task_queue: gpu.a", "task_queue: 'has space'"))
    r = subprocess.run([sys.executable, "-m", "switchyard.cli", "catalog", "validate", str(path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "$.models[0].task_queue" in r.stderr
