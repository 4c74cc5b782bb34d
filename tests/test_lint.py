"""ruff and mypy, as pyproject.toml configures them, pass on the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switchyard.processes import ROOT

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_the_checker_passes(command: list[str]):
    out = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(command)} exited {out.returncode}:\n{out.stdout}{out.stderr}"
