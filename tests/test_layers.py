"""The packages depend one way: schemas ← adapters ← orchestration ← gatekeeping ← proxy (← switchyard,
the command line). Only the proxy speaks HTTP, and the operators' CLI does not load it."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from switchyard.processes import ROOT

LAYERS = ["schemas", "adapters", "orchestration", "gatekeeping", "proxy", "switchyard"]
HTTP_SERVER = ("starlette", "uvicorn")


def _imports(package: str) -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(str(path.relative_to(ROOT)), node.lineno, n) for n in names]
    return found


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_a_package_imports_only_the_layers_below_it(package: str):
    above = set(LAYERS[LAYERS.index(package) + 1:])
    wrong = [f"{path}:{line} imports {name}" for path, line, name in _imports(package)
             if name.split(".")[0] in above]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["schemas", "adapters", "orchestration", "gatekeeping"])
def test_only_the_proxy_speaks_http(package: str):
    wrong = [f"{path}:{line} imports {name}" for path, line, name in _imports(package)
             if name.split(".")[0] in HTTP_SERVER]
    assert not wrong, "\n".join(wrong)


def test_the_operators_cli_does_not_load_the_http_server():
    code = ("import sys; from switchyard.cli import build_parser; build_parser(); "
            "import switchyard.admin_cli, switchyard.jobs_cli, gatekeeping.keystore, gatekeeping.limits; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'proxy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
