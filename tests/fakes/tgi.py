"""A fake text-generation-inference (TGI) server with text-embeddings-inference's `/embed`.

Wire format from TGI's `docs/openapi.json` and `router/src/server.rs` (huggingface/
text-generation-inference) and TEI's `docs/openapi.json` (huggingface/text-embeddings-inference):
- `POST /generate_stream`: SSE `data:{"index", "token": {"id", "text", "logprob", "special"},
  "generated_text": null, "details": null}` per token; the last event has `generated_text` and
  `details: {"finish_reason": "length" | "eos_token" | "stop_sequence", "generated_tokens", "seed",
  "input_length"}`; no end marker. Errors that TGI raises while validating, queueing or generating
  arrive as an event `data:{"error", "error_type"}` on the 200 stream (generate_stream_internal).
- `POST /v1/chat/completions` (Messages API): OpenAI `chat.completion.chunk` events, `usage` on the
  last one when `stream_options.include_usage`, the same error events, then `data: [DONE]`.
- `POST /embed`: `{"inputs": str | [str], "normalize", "truncate"}` -> `[[float]]`, the token count
  in the `x-compute-tokens` header; errors `{"error", "error_type"}` with 413 / 422 / 424 / 429.
- `GET /health`: 200, or 503 when unhealthy.
The scenario is chosen by the prompt (last user message, `inputs`, first embed input):
`scenario=<name>;nonce=<unique>`.
  ok           REPLY token by token, then the EOS token (special, not shown) and finish eos_token
  length, stop_sequence   the same with that finish reason
  old          a TGI before 2.1: details without input_length
  slow         one token every 0.2 s; `outcome[nonce]` records whether the client stayed
  cut          two tokens, then the body ends without the final event
  midstream    two tokens, then a `generation` error event
  overloaded, validation, generation   that error as the first event of a 200 stream
  http-<code>  answers <code> with {"error", "error_type"} before any stream
"""

from __future__ import annotations

import asyncio
import json
import re
import math
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer

REPLY = "Hello from the fake TGI, one token at a time."
PROMPT_TOKENS = 7
ERROR_TYPES = {413: "validation", 422: "validation", 424: "generation", 429: "overloaded",
               500: "incomplete_generation", 503: "unhealthy"}
MESSAGES = {"overloaded": "Model is overloaded", "validation": "Input validation error: `inputs` too long",
            "generation": "Request failed during generation: CUDA out of memory"}


def params_of(text: str) -> dict[str, str]:
    """`scenario=...;nonce=...` found anywhere in a prompt (a rendered chat prompt included)."""
    return dict(re.findall(r"(scenario|nonce)=([\w-]+)", text))


def vector(text: str, normalize: bool = True, dims: int = 8) -> list[float]:
    """The fake's embedding of `text`: deterministic, so tests can compute the expected value."""
    seed = sum(ord(c) for c in text)
    v = [((seed * (i + 3)) % 101) / 101.0 + 0.01 for i in range(dims)]
    if normalize:
        norm = math.sqrt(sum(x * x for x in v))
        v = [x / norm for x in v]
    return v


class FakeTGI(LoopbackServer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.outcome: dict[str, str] = {}
        self.healthy = True
        self.app = Starlette(routes=[
            Route("/health", self.health),
            Route("/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/embed", self.embed, methods=["POST"]),
        ])

    async def health(self, request: Request) -> Response:
        if self.healthy:
            return Response(status_code=200)
        return JSONResponse({"error": "unhealthy", "error_type": "unhealthy"}, status_code=503)

    def _http_error(self, scenario: str) -> JSONResponse | None:
        if not scenario.startswith("http-"):
            return None
        status = int(scenario[5:])
        return JSONResponse({"error": f"fake error {status}", "error_type": ERROR_TYPES.get(status, "error")},
                            status_code=status)

    async def generate_stream(self, request: Request):
        body = await request.json()
        self.requests.append(("/generate_stream", body))
        p = params_of(body["inputs"])
        return self._http_error(p.get("scenario", "ok")) or StreamingResponse(
            self._watch(request, p.get("nonce", ""), self._tokens(p.get("scenario", "ok"), _generate_event)),
            media_type="text/event-stream")

    async def chat(self, request: Request):
        body = await request.json()
        self.requests.append(("/v1/chat/completions", body))
        p = params_of(body["messages"][-1]["content"])
        usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            async for event in self._tokens(p.get("scenario", "ok"), _chat_event(usage)):
                yield event
            yield "data: [DONE]\n\n"  # TGI chains [DONE] after the stream, errors included

        return self._http_error(p.get("scenario", "ok")) or StreamingResponse(
            self._watch(request, p.get("nonce", ""), events()), media_type="text/event-stream")

    async def _tokens(self, scenario: str, render):
        if scenario in MESSAGES:
            yield _sse({"error": MESSAGES[scenario], "error_type": scenario})
            return
        words = REPLY.split(" ")
        if scenario == "slow":
            words = words * 20
        for i, word in enumerate(words):
            if scenario in ("cut", "midstream") and i == 2:
                if scenario == "midstream":
                    yield _sse({"error": MESSAGES["generation"], "error_type": "generation"})
                return
            if scenario == "slow":
                await asyncio.sleep(0.2)
            yield _sse(render(i + 1, {"id": 100 + i, "text": word if i == 0 else " " + word,
                                      "logprob": -0.5, "special": False}, None))
        finish = scenario if scenario in ("length", "stop_sequence") else "eos_token"
        details = {"finish_reason": finish, "generated_tokens": len(words) + 1, "seed": None}
        if scenario != "old":
            details["input_length"] = PROMPT_TOKENS
        eos = {"id": 2, "text": "</s>", "logprob": -0.1, "special": True}
        yield _sse(render(len(words) + 1, eos, details))

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

    async def embed(self, request: Request):
        body = await request.json()
        self.requests.append(("/embed", body))
        inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        first = inputs[0] if inputs and isinstance(inputs[0], str) else ""
        error = self._http_error(params_of(first).get("scenario", "ok"))
        if error is not None:
            return error
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in inputs]
        tokens = sum(len(t.split()) for t in texts)
        return JSONResponse([vector(t, body.get("normalize", True)) for t in texts],
                            headers={"x-compute-tokens": str(tokens)})


def _sse(data: dict) -> str:
    return f"data:{json.dumps(data)}\n\n"  # axum writes no space after the colon


def _generate_event(index: int, token: dict, details: dict | None) -> dict:
    final = details is not None
    return {"index": index, "token": token, "generated_text": REPLY if final else None, "details": details}


def _chat_event(include_usage: bool):
    def render(index: int, token: dict, details: dict | None) -> dict:
        finish = None
        usage = None
        if details is not None:
            finish = "length" if details["finish_reason"] == "length" else "stop"
            if include_usage:
                n = details["generated_tokens"]
                usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n,
                         "total_tokens": PROMPT_TOKENS + n}
        content = None if token["special"] else token["text"]
        return {"object": "chat.completion.chunk", "id": "", "created": int(time.time()),
                "model": "fake/tgi-model", "system_fingerprint": "3.0.0-native",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage}
    return render
