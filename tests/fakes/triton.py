"""A fake NVIDIA Triton Inference Server speaking KServe v2 HTTP and the generate extension.

Wire format from triton-inference-server/server `docs/protocol/extension_generate.md` and the KServe
Open Inference Protocol (v2) REST specification (kserve.github.io, "Open Inference Protocol"):
- `GET /v2/models/{m}/ready`: 200 when ready, 400 otherwise.
- `POST /v2/models/{m}/generate_stream`: `{"text_input", "parameters": {...}}` (other top-level
  fields are the model's input tensors) -> SSE `data: {"model_name", "model_version",
  "text_output"}` per response, no end marker; an error before inference is an HTTP status with
  `{"error": "..."}`; one during inference is an event `data: {"error": "..."}` on the 200 stream.
- `POST /v2/models/{m}/infer`: `{"inputs": [{"name", "shape", "datatype", "data"}], "outputs":
  [{"name"}]}` -> `{"model_name", "model_version", "outputs": [{"name", "shape", "datatype",
  "data"}]}` with `data` flattened row-major; errors `{"error": "..."}` (400, 404, 500, 503).
Models: `gen` (text_input / text_output), `gen-custom` (prompt / completion), `gen-cumulative`
(each event repeats the whole text so far), `embedder` (BYTES `text_input` [n, 1] -> FP32
`embedding` [n, 4]), `loading` (never ready). The scenario is chosen by the text:
`scenario=<name>;nonce=<unique>`.
  ok           REPLY word by word
  length       the same, with a `finish_reason` output of "length"
  slow         one word every 0.2 s; `outcome[nonce]` records whether the client stayed
  midstream    two words, then an error event
  http-<code>  answers <code> with {"error"} before inference
"""

from __future__ import annotations

import asyncio
import json
import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer

REPLY = "Triton says hello in four words and more."
GENERATE = {"gen": ("text_input", "text_output", False), "gen-custom": ("prompt", "completion", False),
            "gen-cumulative": ("text_input", "text_output", True)}
DIMS = 4


def params_of(text: str) -> dict[str, str]:
    """`scenario=...;nonce=...` found anywhere in a prompt (a rendered chat prompt included)."""
    return dict(re.findall(r"(scenario|nonce)=([\w-]+)", text))


def vector(text: str) -> list[float]:
    """The embedder's output for `text`: deterministic, exactly representable in float32."""
    seed = sum(ord(c) for c in text)
    return [float((seed * (i + 1)) % 17) / 4 for i in range(DIMS)]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class FakeTriton(LoopbackServer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.outcome: dict[str, str] = {}
        self.app = Starlette(routes=[
            Route("/v2/models/{model}/ready", self.ready),
            Route("/v2/models/{model}/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/v2/models/{model}/infer", self.infer, methods=["POST"]),
        ])

    async def ready(self, request: Request) -> Response:
        model = request.path_params["model"]
        return Response(status_code=200 if model in GENERATE or model == "embedder" else 400)

    async def generate_stream(self, request: Request):
        model = request.path_params["model"]
        if model not in GENERATE:
            return _error(404, f"Request for unknown model: '{model}' is not found")
        body = await request.json()
        self.requests.append((model, body))
        input_name, output_name, cumulative = GENERATE[model]
        if not isinstance(body.get(input_name), str):
            return _error(400, f"expected input '{input_name}' for model '{model}'")
        p = params_of(body[input_name])
        scenario = p.get("scenario", "ok")
        if scenario.startswith("http-"):
            return _error(int(scenario[5:]), f"fake error {scenario[5:]}")

        async def events():
            words = REPLY.split(" ") * (20 if scenario == "slow" else 1)
            text = ""
            for i, word in enumerate(words):
                if scenario == "midstream" and i == 2:
                    yield _sse({"error": "Python model 'gen' raised: generation failed"})
                    return
                if scenario == "slow":
                    await asyncio.sleep(0.2)
                piece = word if i == 0 else " " + word
                text += piece
                event = {"model_name": model, "model_version": "1", output_name: text if cumulative else piece}
                if scenario == "length" and i == len(words) - 1:
                    event["finish_reason"] = "length"
                yield _sse(event)

        return StreamingResponse(self._watch(request, p.get("nonce", ""), events()),
                                 media_type="text/event-stream; charset=utf-8")

    async def _watch(self, request: Request, nonce: str, events):
        """Streams `events`, recording whether the client stayed to the end or went away."""
        self.outcome[nonce] = "streaming"
        try:
            async for event in events:
                if await request.is_disconnected():
                    self.outcome[nonce] = "disconnected"
                    return
                yield event
            self.outcome[nonce] = "completed"
        except BaseException:
            self.outcome[nonce] = "disconnected"
            raise

    async def infer(self, request: Request):
        model = request.path_params["model"]
        if model != "embedder":
            return _error(404, f"Request for unknown model: '{model}' is not found")
        body = await request.json()
        self.requests.append((model, body))
        inputs = body.get("inputs") or []
        if len(inputs) != 1 or inputs[0].get("name") != "text_input" or inputs[0].get("datatype") != "BYTES":
            return _error(400, "unexpected inference input for model 'embedder'")
        texts = inputs[0]["data"]
        if inputs[0]["shape"] != [len(texts), 1]:
            return _error(400, f"unexpected shape {inputs[0]['shape']} for input 'text_input'")
        scenario = params_of(texts[0]).get("scenario", "ok") if texts else "ok"
        if scenario.startswith("http-"):
            return _error(int(scenario[5:]), f"fake error {scenario[5:]}")
        data = [x for t in texts for x in vector(t)]
        return JSONResponse({"model_name": model, "model_version": "1", "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [len(texts), DIMS], "data": data}]})


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"
