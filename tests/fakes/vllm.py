"""A fake vLLM OpenAI server for failure scenarios the real engine cannot be made to produce.

It speaks vLLM's wire format: `chat.completion.chunk` SSE events ending in `data: [DONE]`, a
usage chunk with `choices: []` when `stream_options.include_usage` is set, and errors as
`{"error": {"message", "type", "param", "code"}}` with the HTTP status (vLLM's ErrorResponse).

The scenario is chosen by the last user message: `scenario=<name>;nonce=<unique>`.
  ok           streams REPLY
  503x2        answers 503 to the first two calls for this nonce, then streams REPLY
  slow         streams REPLY one word every 0.3 s
  tools        streams a tool call in pieces
  bad-request  answers 400 (a non-retryable engine error)
  size         streams "received <N> bytes", N the size of the request body it got
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer

REPLY = "Hello from the fake engine, streamed in pieces."


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": status}},
                        status_code=status)


class FakeVLLM(LoopbackServer):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seen: list[str] = []  # every prompt text the engine received, to check what reached it
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/health", self.health)])

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({})

    async def chat(self, request: Request):
        raw = await request.body()
        body = json.loads(raw)
        text = body["messages"][-1]["content"]
        self.seen.extend(str(m.get("content")) for m in body["messages"])
        params = dict(p.split("=", 1) for p in text.split(";") if "=" in p)
        scenario, nonce = params.get("scenario", "ok"), params.get("nonce", "")
        self.calls[nonce] += 1
        if scenario == "503x2" and self.calls[nonce] <= 2:
            return _error(503, "The server is overloaded; try again later.", "ServiceUnavailableError")
        if scenario == "bad-request":
            return _error(400, "This model's maximum context length is 2048 tokens.", "BadRequestError")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        reply = f"received {len(raw)} bytes" if scenario == "size" else REPLY
        return StreamingResponse(self._stream(body["model"], scenario, include_usage, reply),
                                 media_type="text/event-stream")

    async def _stream(self, model: str, scenario: str, include_usage: bool, reply: str = REPLY):
        created = int(time.time())
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model}

        def chunk(delta: dict, finish: str | None = None) -> str:
            c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(c)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        pieces: list[str] = reply.split(" ")
        if scenario == "tools":
            yield chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]})
            for part in ('{"city": ', '"Seoul"}'):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            yield chunk({}, "tool_calls")
            n = 3
        else:
            for i, word in enumerate(pieces):
                if scenario == "slow":
                    await asyncio.sleep(0.3)
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
            n = len(pieces)
        if include_usage:
            usage = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
