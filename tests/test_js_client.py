"""JavaScript against the proxy: the official `openai` npm package (tests/js, pinned in its
package-lock.json, installed by `make install` with `npm ci`) on Node, and the chat page's Markdown
renderer under node:test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from switchyard.processes import ROOT
from tests.conftest import MODEL, Stack

JS = ROOT / "tests" / "js"


def _node_test(file: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    node = shutil.which("node")
    assert node, "Node.js is required (it is on the machine: /usr/bin/node)"
    r = subprocess.run([node, "--test", "--test-reporter=tap", file], cwd=JS, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    return r.stdout


def _counts(tap: str) -> tuple[int, int]:
    return (int(re.search(r"^# pass (\d+)", tap, re.M).group(1)),
            int(re.search(r"^# fail (\d+)", tap, re.M).group(1)))


def test_markdown_renderer_formats_and_is_xss_safe():
    assert _counts(_node_test("markdown.test.js", timeout=60)) == (2, 0)


def test_openai_npm_client_streams_embeds_and_raises_api_errors(stack: Stack):
    assert (JS / "node_modules" / "openai" / "package.json").exists(), "run `make install` (npm ci in tests/js)"
    tap = _node_test("client.test.js", {
        "SWITCHYARD_BASE_URL": stack.proxy_url + "/v1", "SWITCHYARD_KEY": stack.key,
        "SWITCHYARD_CHAT_MODEL": MODEL, "SWITCHYARD_EMBED_MODEL": "smollm2-135m-embed",
        "SWITCHYARD_EMBED_DIMENSIONS": "576"})
    assert _counts(tap) == (5, 0), tap
