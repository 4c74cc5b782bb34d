"""The chat page in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium;
nothing downloads a browser): it streams an answer, Stop cancels the job, a reload mid-answer resumes
it to exactly the job's result without a new generation, the Jobs view cancels a job, and a page on
another loopback origin uses the API through CORS with the official openai npm package.
Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import httpx
import pytest

from switchyard.processes import ROOT
from tests.conftest import MODEL, Stack
from tests.eventually import eventually
from tests.fakes.vllm import REPLY

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def browser():
    assert os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK), \
        "run `make install` (apt-get install chromium chromium-driver)"
    os.environ["SE_OFFLINE"] = "true"  # selenium manager must not look for a browser to download
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


def _wait(driver, condition: Callable, timeout: float = 30, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: condition(d), what)


def _status(driver) -> str:
    return driver.find_element(By.ID, "status").get_attribute("data-state")


def _answer(driver) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, "#messages .assistant")
    return found[-1].text if found else ""


def _job_in_url(driver) -> str | None:
    from urllib.parse import parse_qs, urlparse

    return parse_qs(urlparse(driver.current_url).query).get("job", [None])[0]


@pytest.fixture
def page(browser, stack: Stack):
    """The chat page with a fresh conversation and the stack's key entered."""
    browser.get(stack.proxy_url + "/chat")
    browser.execute_script("localStorage.clear(); sessionStorage.clear();")
    browser.get(stack.proxy_url + "/chat")
    browser.find_element(By.ID, "key").send_keys(stack.key)
    browser.find_element(By.ID, "save-key").click()
    _wait(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) > 1, what="models listed")
    return browser


def _ask(driver, model: str, text: str) -> None:
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    driver.find_element(By.ID, "prompt").send_keys(text)
    driver.find_element(By.ID, "send").click()


def _job(stack: Stack, job: str) -> dict:
    r = httpx.get(f"{stack.proxy_url}/v1/jobs/{job}", headers={"authorization": f"Bearer {stack.key}"})
    assert r.status_code == 200, r.text
    return r.json()


def _result_text(stack: Stack, job: str) -> str:
    r = httpx.get(f"{stack.proxy_url}/v1/jobs/{job}/result", headers={"authorization": f"Bearer {stack.key}"})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_page_is_served_with_a_strict_csp(stack: Stack):
    for path in ("/", "/chat"):
        r = httpx.get(stack.proxy_url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "<script>" not in r.text and "http" not in r.text.replace("http-equiv", "")  # nothing inline, no CDN
    assert httpx.get(stack.proxy_url + "/static/chat.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(stack.proxy_url + "/static/nope.js").status_code == 404


def test_page_streams_an_answer_with_markdown_and_usage(page, stack: Stack):
    _ask(page, "fake-vllm", f"scenario=slow;delay=0.25;nonce={uuid.uuid4().hex}")
    words = REPLY.split(" ")
    _wait(page, lambda d: _status(d) == "streaming" and 0 < len(_answer(d).split()) < len(words),
          what="a partial answer while streaming")
    page.save_screenshot(str(ARTIFACTS / "stream-partial.png"))
    _wait(page, lambda d: _status(d) == "succeeded", what="the answer's end")
    assert _answer(page) == REPLY
    assert page.find_element(By.ID, "usage").text == "prompt 11 · completion 8 · total 19 tokens"
    assert _job_in_url(page) is None  # the answer is done: nothing left to resume
    page.save_screenshot(str(ARTIFACTS / "stream-done.png"))

    _ask(page, MODEL, "Reply with a short bulleted list of two fruits.")
    _wait(page, lambda d: _status(d) in ("succeeded", "failed"), 120, "the real model's answer")
    assert _status(page) == "succeeded", page.find_element(By.ID, "status").text
    job = page.find_elements(By.CSS_SELECTOR, "#messages .assistant")[-1].get_attribute("data-job")
    assert _answer(page).strip() and _result_text(stack, job).strip()
    assert "total" in page.find_element(By.ID, "usage").text
    page.save_screenshot(str(ARTIFACTS / "stream-real-model.png"))


def test_markdown_from_the_model_is_rendered_not_executed(page):
    html = page.execute_script("""
        const box = document.getElementById('messages');
        const el = document.createElement('div');
        el.className = 'message assistant';
        el.innerHTML = renderMarkdown('**hi** `x` <img src=x onerror="window.pwned=1"> [a](javascript:window.pwned=2)');
        box.append(el);
        return el.innerHTML;""")
    time.sleep(0.2)
    assert page.execute_script("return window.pwned === undefined")
    assert "<strong>hi</strong>" in html and "<code>x</code>" in html and "<img" not in html
    assert page.find_elements(By.CSS_SELECTOR, "#messages a") == []


def test_stop_cancels_the_job(page, stack: Stack):
    _ask(page, "fake-vllm", f"scenario=slow;delay=1;nonce={uuid.uuid4().hex}")
    _wait(page, lambda d: _job_in_url(d) and _answer(d).strip(), what="the first words")
    job = _job_in_url(page)
    page.find_element(By.ID, "stop").click()
    _wait(page, lambda d: _status(d) == "cancelled", 15, "the page shows the job cancelled")
    eventually(lambda: _job(stack, job)["status"] == "cancelled", timeout=15, interval=0.2)
    assert len(_answer(page).split()) < len(REPLY.split())
    page.save_screenshot(str(ARTIFACTS / "stop.png"))


def test_reload_mid_answer_resumes_to_the_jobs_result(page, stack: Stack):
    nonce = uuid.uuid4().hex
    _ask(page, "fake-vllm", f"scenario=slow;delay=0.6;nonce={nonce}")
    _wait(page, lambda d: _job_in_url(d) and len(_answer(d).split()) >= 2, what="two words")
    job = _job_in_url(page)
    before = _answer(page)
    page.refresh()
    assert _job(stack, job)["status"] == "running"  # the reload came mid-answer
    _wait(page, lambda d: _status(d) == "succeeded", 30, "the resumed answer's end")
    after = _answer(page)
    assert after.startswith(before)
    assert after == _result_text(stack, job) == REPLY
    assert stack.fake.calls[nonce] == 1  # resumed from the stream: no second generation
    page.save_screenshot(str(ARTIFACTS / "reload-resumed.png"))
    # The page itself survives a reload after the end: nothing to resume, the conversation kept.
    page.refresh()
    _wait(page, lambda d: _status(d) == "idle")
    assert _answer(page) == REPLY and stack.fake.calls[nonce] == 1


def test_jobs_view_lists_and_cancels(page, stack: Stack):
    r = httpx.post(f"{stack.proxy_url}/v1/jobs", headers={"authorization": f"Bearer {stack.key}"}, json={
        "endpoint": "/v1/chat/completions",
        "body": {"model": "fake-vllm", "messages": [
            {"role": "user", "content": f"scenario=slow;delay=2;nonce={uuid.uuid4().hex}"}]}})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    page.find_element(By.ID, "show-jobs").click()
    row = _wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job="{job}"]'), what="the job's row")[0]
    assert "fake-vllm" in row.text
    page.save_screenshot(str(ARTIFACTS / "jobs.png"))
    row.find_element(By.CSS_SELECTOR, "button.cancel").click()
    _wait(page, lambda d: "cancelled" in d.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{job}"]').text,
          15, "the row shows cancelled")
    assert _job(stack, job)["status"] == "cancelled"


CROSS_ORIGIN_PAGE = """<!doctype html><meta charset="utf-8"><title>another origin</title>
<pre id="out">running</pre>
<script type="module">
import { OpenAI } from "./openai/client.mjs";
const p = new URLSearchParams(location.hash.slice(1));
const out = {};
try {
  const client = new OpenAI({ baseURL: p.get("base"), apiKey: p.get("key"), maxRetries: 0, dangerouslyAllowBrowser: true });
  out.models = (await client.models.list()).data.map((m) => m.id);
  const { data: stream, response } = await client.chat.completions.create({
    model: p.get("model"), max_tokens: 12, stream: true, stream_options: { include_usage: true },
    messages: [{ role: "user", content: "Say hi." }] }).withResponse();
  out.job = response.headers.get("x-job-id");
  out.request_id = response.headers.get("x-request-id");
  out.text = "";
  for await (const chunk of stream) {
    if (chunk.usage) out.usage = chunk.usage; else out.text += chunk.choices[0].delta.content || "";
  }
  const events = await fetch(`${p.get("base")}/jobs/${out.job}/events`, {
    headers: { authorization: "Bearer " + p.get("key"), "last-event-id": "0" } });
  out.events = (await events.text()).includes("event: job.succeeded");
  try { await new OpenAI({ baseURL: p.get("base"), apiKey: "sk-wrong", maxRetries: 0,
                           dangerouslyAllowBrowser: true }).models.list(); }
  catch (e) { out.error = { status: e.status, code: e.code, name: e.constructor.name }; }
} catch (e) { out.fatal = String(e); }
document.getElementById("out").textContent = JSON.stringify(out);
</script>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript"}

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def other_origin(tmp_path: Path):
    """A static page on another loopback origin (its own port), with the openai npm package."""
    sdk = ROOT / "tests" / "js" / "node_modules" / "openai"
    assert sdk.exists(), "run `make install` (npm ci in tests/js)"
    (tmp_path / "index.html").write_text(CROSS_ORIGIN_PAGE)
    shutil.copytree(sdk, tmp_path / "openai", ignore=shutil.ignore_patterns("*.map", "*.ts", "*.mts", "src"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_origin_calls_the_api_through_cors(browser, stack: Stack, other_origin: str):
    browser.get(f"{other_origin}/index.html#base={stack.proxy_url}/v1&key={stack.key}&model={MODEL}")
    _wait(browser, lambda d: d.find_element(By.ID, "out").text != "running", 120, "the page's calls")
    browser.save_screenshot(str(ARTIFACTS / "cross-origin.png"))
    import json

    out = json.loads(browser.find_element(By.ID, "out").text)
    assert "fatal" not in out, out
    assert MODEL in out["models"]
    assert out["job"].startswith("chatcmpl-") and out["request_id"]  # exposed headers, readable
    assert out["text"].strip() and out["usage"]["total_tokens"] > 0
    assert out["events"] is True
    assert out["error"] == {"status": 401, "code": "invalid_api_key", "name": "AuthenticationError"}
    assert _result_text(stack, out["job"]) == out["text"]
