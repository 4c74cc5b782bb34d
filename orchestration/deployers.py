"""How a candidate version comes up and goes away: one Deployer strategy per kind of engine.

A deployer brings the engine up and returns the catalog entry that reaches it; registering that
entry in the catalog bucket is the rollout activity's business, the same for every kind. `undeploy`
is the compensation of `deploy` and, like it, safe to repeat.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Protocol

import httpx
import msgspec

from schemas.catalog import ModelEntry
from schemas.rollout import DeploySpec

LLAMA_SERVER = Path(__file__).resolve().parents[1] / ".cache" / "engine" / "bin" / "llama-server"


class DeployError(Exception):
    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Deployer(Protocol):
    async def deploy(self, spec: DeploySpec) -> ModelEntry: ...

    async def undeploy(self, spec: DeploySpec, model_id: str) -> None: ...


def _entry(spec: DeploySpec) -> ModelEntry:
    if spec.entry is None or spec.entry.engine is None:
        raise DeployError(f"a {spec.kind} deployment needs `entry` with an engine")
    return spec.entry


def _with_url(entry: ModelEntry, url: str) -> ModelEntry:
    assert entry.engine is not None
    return msgspec.structs.replace(entry, engine=msgspec.structs.replace(entry.engine, url=url))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RegisteredEntry:
    """The engine already runs (or the entry is already in the catalog): nothing to start."""

    async def deploy(self, spec: DeploySpec) -> ModelEntry:
        return _entry(spec)

    async def undeploy(self, spec: DeploySpec, model_id: str) -> None:
        return None


class LocalProcessDeployer:
    """Starts a llama-server for a GGUF on a free loopback port of this worker's machine. The process
    outlives the activity, and the worker too (a restarted worker keeps serving through it); `undeploy`
    stops it, and its pid file (`<log_dir>/<model>.pid`) lets whoever owns the machine stop it."""

    def __init__(self, binary: str | os.PathLike[str] = "", log_dir: str | os.PathLike[str] = "",
                 ready_timeout_s: float = 120.0):
        self.binary = str(binary or os.environ.get("SWITCHYARD_LLAMA_SERVER", LLAMA_SERVER))
        self.log_dir = Path(log_dir or os.environ.get("SWITCHYARD_DEPLOY_LOG_DIR", "/tmp/switchyard-deploys"))
        self.ready_timeout_s = ready_timeout_s
        self.running: dict[str, tuple[asyncio.subprocess.Process, str]] = {}

    async def deploy(self, spec: DeploySpec) -> ModelEntry:
        entry = _entry(spec)
        assert entry.engine is not None
        if not spec.model_path or not Path(spec.model_path).is_file():
            raise DeployError(f"no model file at {spec.model_path!r}")
        held = self.running.get(entry.id)
        if held is not None and held[0].returncode is None:
            return _with_url(entry, held[1])
        port = _free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        served = entry.engine.served_name or entry.id
        argv = [self.binary, "-m", spec.model_path, "--host", "127.0.0.1", "--port", str(port),
                "--alias", served, "--no-webui", "-t", "2", *spec.engine_args]
        with open(self.log_dir / f"{_file_name(entry.id)}.log", "ab") as log:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log,
                                                        stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        (self.log_dir / f"{_file_name(entry.id)}.pid").write_text(f"{proc.pid}\n")
        url = f"http://127.0.0.1:{port}/v1"
        self.running[entry.id] = (proc, url)
        try:
            await _wait_ready(f"http://127.0.0.1:{port}/health", self.ready_timeout_s, proc)
        except BaseException:
            await self.undeploy(spec, entry.id)
            raise
        return _with_url(entry, url)

    async def undeploy(self, spec: DeploySpec, model_id: str) -> None:
        held = self.running.pop(model_id, None)
        (self.log_dir / f"{_file_name(model_id)}.pid").unlink(missing_ok=True)
        if held is None or held[0].returncode is not None:
            return
        proc = held[0]
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    async def aclose(self) -> None:
        for model_id in list(self.running):
            await self.undeploy(DeploySpec(kind="local_process"), model_id)


def _file_name(model_id: str) -> str:
    return model_id.replace("/", "_")


async def _wait_ready(url: str, timeout_s: float, proc: asyncio.subprocess.Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if proc is not None and proc.returncode is not None:
                raise DeployError(f"the engine exited with {proc.returncode} before it was ready")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DeployError(f"the engine was not ready within {timeout_s:g} s", retryable=True)
            await asyncio.sleep(0.2)


def _engine_error(what: str, resp: httpx.Response) -> DeployError:
    try:
        body = resp.json()
        error = body.get("error", body)
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = resp.text[:200]
    return DeployError(f"{what}: {resp.status_code} {message}", retryable=resp.status_code >= 500)


class TritonDeployer:
    """Triton's model repository extension: POST v2/repository/models/<m>/load, then wait for
    v2/models/<m>/ready; `undeploy` unloads. The entry's served_name is the model's name on Triton.
    A server that restricts the API (PyTriton does by default) gets the `triton-access-token` header
    from $SWITCHYARD_TRITON_ACCESS_TOKEN."""

    def __init__(self, ready_timeout_s: float = 120.0):
        self.ready_timeout_s = ready_timeout_s

    @staticmethod
    def _headers() -> dict[str, str]:
        token = os.environ.get("SWITCHYARD_TRITON_ACCESS_TOKEN", "")
        return {"triton-access-token": token} if token else {}

    def _target(self, spec: DeploySpec) -> tuple[ModelEntry, str, str]:
        entry = _entry(spec)
        assert entry.engine is not None
        url = (spec.engine_url or entry.engine.url).rstrip("/")
        return entry, url, entry.engine.served_name

    async def deploy(self, spec: DeploySpec) -> ModelEntry:
        """Loads the model unless it is ready already (a load of a loaded model is a reload, which
        PyTriton's models refuse)."""
        entry, url, name = self._target(spec)
        async with httpx.AsyncClient(timeout=self.ready_timeout_s, headers=self._headers()) as client:
            if (await client.get(f"{url}/v2/models/{name}/ready")).status_code == 200:
                return _with_url(entry, url)
            resp = await client.post(f"{url}/v2/repository/models/{name}/load")
            if resp.status_code != 200:
                raise _engine_error(f"Triton refused to load {name!r}", resp)
        await _wait_ready(f"{url}/v2/models/{name}/ready", self.ready_timeout_s)
        return _with_url(entry, url)

    async def undeploy(self, spec: DeploySpec, model_id: str) -> None:
        _, url, name = self._target(spec)
        async with httpx.AsyncClient(timeout=60, headers=self._headers()) as client:
            resp = await client.post(f"{url}/v2/repository/models/{name}/unload")
            if resp.status_code not in (200, 400, 404):  # 400: not loaded (any more)
                raise _engine_error(f"Triton refused to unload {name!r}", resp)


class VllmLoraDeployer:
    """vLLM's runtime LoRA API (VLLM_ALLOW_RUNTIME_LORA_UPDATING): POST /v1/load_lora_adapter
    {lora_name, lora_path}; /v1/unload_lora_adapter {lora_name}. The adapter's name is the entry's
    served_name, the model requests name on vLLM."""

    def _target(self, spec: DeploySpec) -> tuple[ModelEntry, str, str]:
        entry = _entry(spec)
        assert entry.engine is not None
        base = (spec.engine_url or entry.engine.url).rstrip("/")
        return entry, base, entry.engine.served_name or entry.id

    async def deploy(self, spec: DeploySpec) -> ModelEntry:
        entry, base, name = self._target(spec)
        async with httpx.AsyncClient(timeout=120) as client:
            resp = await client.post(f"{base}/load_lora_adapter", json={"lora_name": name, "lora_path": spec.model_path})
        if resp.status_code != 200 and "already been loaded" not in resp.text:  # a retried deploy
            raise _engine_error(f"vLLM refused to load the LoRA adapter {name!r}", resp)
        return _with_url(entry, base)

    async def undeploy(self, spec: DeploySpec, model_id: str) -> None:
        _, base, name = self._target(spec)
        async with httpx.AsyncClient(timeout=60) as client:
            resp = await client.post(f"{base}/unload_lora_adapter", json={"lora_name": name})
        if resp.status_code not in (200, 404):  # 404: not loaded (any more)
            raise _engine_error(f"vLLM refused to unload the LoRA adapter {name!r}", resp)


def deployers(local: LocalProcessDeployer | None = None) -> dict[str, Deployer]:
    """One deployer per DeploySpec.kind."""
    registered = RegisteredEntry()
    return {"registered": registered, "entry": registered, "local_process": local or LocalProcessDeployer(),
            "triton": TritonDeployer(), "vllm_lora": VllmLoraDeployer()}
