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
    (GOOD + GOOD.split("models:\n")[1], "$.models[1].id"),
    (GOOD + "    aliases: [m1]\n", "$.models[0].aliases[0]"),
    (GOOD + "    aliases: [ok, 'has space']\n", "$.models[0].aliases[1]"),
    (GOOD.replace("kind: openai,", "kind: tgi, capabilities: [chat, tts],"), "$.models[0].engine.capabilities"),
    (GOOD + "    default_params: {n_predict: -1}\n", "$.models[0]"),  # would lift max_tokens
    (GOOD + "    default_params: {'bad name': 1}\n", "$.models[0].default_params"),
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


@pytest.mark.parametrize("action", ["check", "validate"])
def test_cli_check_names_the_line_and_field(tmp_path, action: str):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace("task_queue: gpu.a", "task_queue: 'has space'"))
    r = subprocess.run([sys.executable, "-m", "switchyard.cli", "catalog", action, str(path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert f"{path}:6:" in r.stderr  # the line of `task_queue`
    assert "$.models[0].task_queue" in r.stderr
    path.write_text(GOOD)
    r = subprocess.run([sys.executable, "-m", "switchyard.cli", "catalog", action, str(path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "ok, 1 model(s)" in r.stdout


@pytest.mark.parametrize("bad, line", [
    (GOOD.replace("kind: openai", "kind: carrier-pigeon"), 5),
    (GOOD + "    surprise: 1\n", 7),
    (GOOD + "    retry:\n      initial_interval_s: 1\n      maximum_attempts: two\n", 9),
    (GOOD + GOOD.split("models:\n")[1], 7),
])
def test_errors_name_the_line(bad: str, line: int):
    with pytest.raises(CatalogError) as info:
        parse_catalog(bad, "catalog.yaml")
    assert str(info.value).startswith(f"catalog.yaml:{line}: ")


def test_aliases_resolve_to_the_entry():
    catalog = parse_catalog(GOOD + "    aliases: [small, 'org/small:latest']\n")
    assert catalog.get("m1").id == "m1"
    assert catalog.get("small").id == "m1" and catalog.get("org/small:latest").id == "m1"
    assert catalog.get("m1").aliases == ("small", "org/small:latest")
    assert catalog.get("nothing") is None


def test_an_alias_may_not_shadow_another_models_id_or_alias():
    two = GOOD + GOOD.split("models:\n")[1].replace("m1", "m2")
    with pytest.raises(CatalogError, match=r"\$\.models\[1\]\.aliases\[0\]"):
        parse_catalog(two + "    aliases: [m1]\n")
    first_alias = two.replace("task_queue: gpu.a\n  - id: m2", "task_queue: gpu.a\n    aliases: [x]\n  - id: m2")
    assert parse_catalog(first_alias).get("x").id == "m1"
    with pytest.raises(CatalogError, match=r"\$\.models\[1\]\.aliases\[0\].*\$\.models\[0\]\.aliases\[0\]"):
        parse_catalog(first_alias + "    aliases: [x]\n")
